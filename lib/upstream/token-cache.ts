// Bearer tokens per upstream and scope (and, in passthrough mode, per client
// login), kept until shortly before they expire. Bounded: clients that bring
// logins of their own cannot make it grow without end.

import { LRUCache } from 'lru-cache'

export interface CachedToken {
  readonly token: string
  /** The last moment the token is handed out: its expiry less the margin, or sooner when its use is capped. */
  readonly usableUntil: number
}

/** Tokens are dropped this long before their stated expiry, to absorb clock skew and request latency. */
const EXPIRY_MARGIN_MS = 10_000
/** Docker's token spec: when expires_in is absent, a token lasts 60 seconds. */
export const DEFAULT_TOKEN_LIFETIME_S = 60
/** Tokens kept at most, the least recently used dropped first (a dropped one is fetched again). */
const MAX_TOKENS = 10_000

/**
 * How long a token may be used whatever its own lifetime, counted from when
 * the token server was asked for it: a client's token in passthrough mode is
 * that client's right to a repository, which the upstream may revoke, so it
 * lives no longer than the gate trusts the upstream's yes.
 */
export interface TokenUseLimit {
  readonly maxAge: number
  readonly askedAt: number
}

export class TokenCache {
  readonly #tokens = new LRUCache<string, CachedToken>({ max: MAX_TOKENS })
  readonly #now: () => number

  constructor (now: () => number = Date.now) {
    this.#now = now
  }

  get (key: string): string | undefined {
    const t = this.#tokens.get(key)
    if (t === undefined) return undefined
    if (t.usableUntil <= this.#now()) {
      this.#tokens.delete(key)
      return undefined
    }
    return t.token
  }

  set (key: string, token: string, lifetimeSeconds: number, limit?: TokenUseLimit): void {
    const beforeExpiry = this.#now() + lifetimeSeconds * 1000 - EXPIRY_MARGIN_MS
    // The cap is the mirror's own policy, not the upstream's clock: the margin is not taken from it,
    // so a cap shorter than the margin still lets the token serve the requests within it.
    const usableUntil = limit === undefined ? beforeExpiry : Math.min(beforeExpiry, limit.askedAt + limit.maxAge)
    this.#tokens.set(key, { token, usableUntil })
  }

  delete (key: string): void {
    this.#tokens.delete(key)
  }
}
