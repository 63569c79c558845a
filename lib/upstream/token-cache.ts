// Bearer tokens per upstream and scope (and, in passthrough mode, per client
// login), kept until shortly before they expire. Bounded: clients that bring
// logins of their own cannot make it grow without end.

import { LRUCache } from 'lru-cache'

export interface CachedToken { readonly token: string, readonly expiresAt: number }

/** Tokens are dropped this long before their stated expiry, to absorb clock skew and request latency. */
const EXPIRY_MARGIN_MS = 10_000
/** Docker's token spec: when expires_in is absent, a token lasts 60 seconds. */
export const DEFAULT_TOKEN_LIFETIME_S = 60
/** Tokens kept at most, the least recently used dropped first (a dropped one is fetched again). */
const MAX_TOKENS = 10_000

export class TokenCache {
  readonly #tokens = new LRUCache<string, CachedToken>({ max: MAX_TOKENS })
  readonly #now: () => number

  constructor (now: () => number = Date.now) {
    this.#now = now
  }

  get (key: string): string | undefined {
    const t = this.#tokens.get(key)
    if (t === undefined) return undefined
    if (t.expiresAt - EXPIRY_MARGIN_MS <= this.#now()) {
      this.#tokens.delete(key)
      return undefined
    }
    return t.token
  }

  set (key: string, token: string, lifetimeSeconds: number): void {
    this.#tokens.set(key, { token, expiresAt: this.#now() + lifetimeSeconds * 1000 })
  }

  delete (key: string): void {
    this.#tokens.delete(key)
  }
}
