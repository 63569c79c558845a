// The mirror's own bearer tokens, for the registry token flow that every
// client follows: /v2/ answers 401 with a Bearer challenge naming the
// mirror's token endpoint, the client asks that endpoint for a token (with
// its Basic credentials once it has logged in, without when it has not), and
// sends the token with each request of the pull. So a password is checked
// (bcrypt) when a token is issued, never per request, and anonymous clients
// (dockerd's registry-mirrors, which never sends credentials to a mirror)
// get an anonymous token the same way. A token names its subject and expiry
// and is signed with HMAC-SHA256 by a key made at start: what a caller may
// pull is decided per request, by the access rules, from the subject.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import type { Caller } from './access-rules.js'

export interface IssuedToken {
  readonly token: string
  /** Seconds. */
  readonly expiresIn: number
  readonly issuedAt: string
}

interface Payload { readonly sub: string, readonly exp: number }

/** Tokens longer than this are not ours: nothing to decode. */
const MAX_TOKEN_LENGTH = 1024

export class TokenIssuer {
  readonly #key: Buffer
  readonly #ttl: number
  readonly #now: () => number

  /** `ttl` in milliseconds. */
  constructor (ttl: number, now: () => number = Date.now, key: Buffer = randomBytes(32)) {
    this.#key = key
    this.#ttl = ttl
    this.#now = now
  }

  issue (caller: Caller): IssuedToken {
    const now = this.#now()
    const payload = Buffer.from(JSON.stringify({ sub: caller ?? '', exp: now + this.#ttl } satisfies Payload)).toString('base64url')
    return { token: `${payload}.${this.#sign(payload)}`, expiresIn: Math.floor(this.#ttl / 1000), issuedAt: new Date(now).toISOString() }
  }

  /** The caller a token was issued to; undefined when it is not one of ours or has expired. */
  verify (token: string): { readonly caller: Caller } | undefined {
    if (token.length > MAX_TOKEN_LENGTH) return undefined
    const [payload, signature, extra] = token.split('.')
    if (payload === undefined || signature === undefined || extra !== undefined) return undefined
    const expected = Buffer.from(this.#sign(payload))
    const given = Buffer.from(signature)
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined
    let parsed: unknown
    try {
      parsed = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
    } catch {
      return undefined
    }
    if (typeof parsed !== 'object' || parsed === null) return undefined
    const { sub, exp } = parsed as Partial<Payload>
    if (typeof sub !== 'string' || typeof exp !== 'number' || exp <= this.#now()) return undefined
    return { caller: sub === '' ? undefined : sub }
  }

  #sign (payload: string): string {
    return createHmac('sha256', this.#key).update(payload).digest('base64url')
  }
}
