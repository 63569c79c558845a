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
// A token for one of the mirror's users is bound to the user's entry in the
// htpasswd file: the signature covers the entry too (never the token itself,
// which carries no secret), so the token stops working once the user leaves
// the file or changes password, and a mirror sharing the key accepts it only
// if its own file holds the same entry.
// A token issued for an upstream login (passthrough mode) carries that login
// encrypted (AES-256-GCM, a key derived from the same start-up key): the
// token is the client's to hold, and the mirror keeps no copy of the secret.

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto'
import type { Caller } from './access-rules.js'

/** A user name and password a token carries for its holder (passthrough mode). */
export interface CarriedLogin { readonly username: string, readonly password: string }

export interface IssuedToken {
  readonly token: string
  /** Seconds. */
  readonly expiresIn: number
  readonly issuedAt: string
}

interface Payload { readonly sub: string, readonly exp: number, readonly login?: string }

/** Tokens longer than this are not ours: nothing to decode (a carried login is at most MAX_LOGIN_BYTES). */
const MAX_TOKEN_LENGTH = 8192
const IV_BYTES = 12
const TAG_BYTES = 16

export class TokenIssuer {
  readonly #key: Buffer
  readonly #cipherKey: Buffer
  readonly #ttl: number
  readonly #now: () => number

  /** A key for the tokens from a shared secret (`auth.tokenKeyEnv`), the same on every mirror that has it. */
  static keyFrom (secret: string): Buffer {
    return Buffer.from(hkdfSync('sha256', Buffer.from(secret, 'utf8'), Buffer.alloc(0), 'registry-mirror token key', 32))
  }

  /** `ttl` in milliseconds; `key` made at start unless shared. */
  constructor (ttl: number, now: () => number = Date.now, key: Buffer = randomBytes(32)) {
    this.#key = key
    this.#cipherKey = Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), 'registry-mirror carried login', 32))
    this.#ttl = ttl
    this.#now = now
  }

  /**
   * A token for the caller (undefined: anonymous), carrying a passthrough login
   * sealed, or bound to `binding` (a user's htpasswd entry), which `verify`
   * must be given again.
   */
  issue (caller: Caller, options: { readonly login?: CarriedLogin | undefined, readonly binding?: string | undefined } = {}): IssuedToken {
    const now = this.#now()
    const login = options.login
    const body: Payload = { sub: caller ?? '', exp: now + this.#ttl, ...(login === undefined ? {} : { login: this.#seal(login) }) }
    const payload = Buffer.from(JSON.stringify(body)).toString('base64url')
    return { token: `${payload}.${this.#sign(payload, options.binding ?? '')}`, expiresIn: Math.floor(this.#ttl / 1000), issuedAt: new Date(now).toISOString() }
  }

  /**
   * The caller a token was issued to, and the login it carries; undefined when it is not one
   * of ours, has expired, or names a user whose binding (`bindingOf`: the user's entry as it
   * stands now) is gone or is not the one it was issued under.
   */
  verify (token: string, bindingOf: (caller: string) => string | undefined = () => ''): { readonly caller: Caller, readonly login?: CarriedLogin | undefined } | undefined {
    if (token.length > MAX_TOKEN_LENGTH) return undefined
    const [payload, signature, extra] = token.split('.')
    if (payload === undefined || signature === undefined || extra !== undefined) return undefined
    // The payload is read before its signature is checked only to learn whose binding the
    // signature covers; nothing in it is trusted until the signature holds.
    let parsed: unknown
    try {
      parsed = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
    } catch {
      return undefined
    }
    if (typeof parsed !== 'object' || parsed === null) return undefined
    const { sub, exp, login } = parsed as Partial<Payload>
    if (typeof sub !== 'string' || typeof exp !== 'number') return undefined
    const binding = sub === '' || login !== undefined ? '' : bindingOf(sub)
    if (binding === undefined) return undefined
    const expected = Buffer.from(this.#sign(payload, binding))
    const given = Buffer.from(signature)
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined
    if (exp <= this.#now()) return undefined
    if (login === undefined) return { caller: sub === '' ? undefined : sub }
    const carried = typeof login === 'string' ? this.#open(login) : undefined
    if (carried === undefined) return undefined
    return { caller: undefined, login: carried }
  }

  #seal (login: CarriedLogin): string {
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.#cipherKey, iv)
    const sealed = Buffer.concat([cipher.update(JSON.stringify([login.username, login.password]), 'utf8'), cipher.final()])
    return Buffer.concat([iv, sealed, cipher.getAuthTag()]).toString('base64url')
  }

  #open (sealed: string): CarriedLogin | undefined {
    const bytes = Buffer.from(sealed, 'base64url')
    if (bytes.length < IV_BYTES + TAG_BYTES) return undefined
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#cipherKey, bytes.subarray(0, IV_BYTES))
      decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES))
      const plain = Buffer.concat([decipher.update(bytes.subarray(IV_BYTES, bytes.length - TAG_BYTES)), decipher.final()]).toString('utf8')
      const pair: unknown = JSON.parse(plain)
      if (!Array.isArray(pair) || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') return undefined
      return { username: pair[0], password: pair[1] }
    } catch {
      return undefined
    }
  }

  #sign (payload: string, binding: string): string {
    return createHmac('sha256', this.#key).update(payload).update('\0').update(binding).digest('base64url')
  }
}
