// Who is asking: a bearer token the mirror issued (tokens.ts), Basic
// credentials checked against the htpasswd users, or anonymous. A bcrypt check costs tens of milliseconds,
// and clients send their credentials with every request of a pull, so a
// verified pair is remembered for a short time under an HMAC of it (keyed by
// a secret made at start), never the password itself. Failed logins are
// bounded per client address; every failure is logged and counted.

import { createHmac, randomBytes } from 'node:crypto'
import { BlockList, isIPv4 } from 'node:net'
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { TooManyRequestsError, UnauthorizedError } from '../errors.js'
import { Limiter } from '../limiter.js'
import type { AuthFailureReason, MirrorEvents } from '../events.js'
import type { HtpasswdFile } from './htpasswd.js'
import type { Caller } from './access-rules.js'
import type { TokenIssuer } from './tokens.js'

export interface AuthenticatorOptions {
  readonly users: HtpasswdFile
  readonly realm: string
  /** Milliseconds a verified user:password pair is trusted without a bcrypt check. */
  readonly remember: number
  /** CIDR networks anonymous callers must come from; undefined = anywhere. */
  readonly anonymousNetworks: readonly string[] | undefined
  /** Failed logins per address within failureWindow before that address is refused for the rest of it. */
  readonly maxFailures: number
  readonly failureWindow: number
  readonly events: Pick<MirrorEvents, 'authFailed'>
  /** The mirror's bearer tokens (tokens.ts). */
  readonly tokens: TokenIssuer
  readonly log: Logger
  readonly now?: (() => number) | undefined
}

/** Remembered verifications and failure counts are bounded: a flood of made-up names cannot grow them. */
const REMEMBERED = 10_000
const COUNTED_ADDRESSES = 10_000
/**
 * bcrypt checks under way at once, and waiting: each takes tens of milliseconds of a
 * core on the bcrypt worker, so a flood of made-up logins
 * from many addresses gets 429s past these rather than the threads and CPU pulls need.
 */
const CHECKS_AT_ONCE = 2
const CHECKS_WAITING = 64

/** An IPv4 client on a dual-stack socket appears as ::ffff:a.b.c.d; rules name it as a.b.c.d. */
function plainAddress (address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  return mapped?.[1] ?? address
}

export function blockListOf (networks: readonly string[]): BlockList {
  const list = new BlockList()
  for (const network of networks) {
    const [address = '', bits] = network.split('/')
    const family = isIPv4(address) ? 'ipv4' : 'ipv6'
    list.addSubnet(address, Number(bits ?? (family === 'ipv4' ? 32 : 128)), family)
  }
  return list
}

export class Authenticator {
  readonly #o: AuthenticatorOptions
  readonly #secret = randomBytes(32)
  readonly #verified: LRUCache<string, { generation: number }>
  readonly #failures: LRUCache<string, { count: number, since: number }>
  readonly #anonymous: BlockList | undefined
  readonly #now: () => number
  readonly #checks = new Limiter(CHECKS_AT_ONCE)

  constructor (options: AuthenticatorOptions) {
    this.#o = options
    this.#now = options.now ?? Date.now
    this.#verified = new LRUCache({ max: REMEMBERED, ttl: options.remember })
    this.#failures = new LRUCache({ max: COUNTED_ADDRESSES, ttl: options.failureWindow })
    this.#anonymous = options.anonymousNetworks === undefined ? undefined : blockListOf(options.anonymousNetworks)
  }

  /** The challenge of a 401 from the token endpoint: it takes Basic credentials. */
  get basicChallenge (): string { return `Basic realm="${this.#o.realm}"` }

  /**
   * The caller of a request: the user its credentials name once they check out,
   * undefined (anonymous) when it sent none, an empty Basic pair (containers/image
   * sends one when it has no login), or an anonymous token. Credentials: Basic
   * user:password (the token endpoint, or clients that send them directly), or a
   * Bearer token the mirror issued. Bad or unreadable credentials are a 401 (never
   * anonymous instead), challenged with what `challenge` makes (only then); an address past its failures a 429.
   */
  async identify (authorization: string | undefined, address: string, challenge: () => string): Promise<Caller> {
    if (authorization === undefined || authorization === '') return undefined
    const client = plainAddress(address)
    const space = authorization.indexOf(' ')
    const scheme = (space < 0 ? authorization : authorization.slice(0, space)).toLowerCase()
    const value = space < 0 ? '' : authorization.slice(space + 1).trim()
    if (scheme === 'bearer') {
      const verified = this.#o.tokens.verify(value)
      if (verified !== undefined) return verified.caller
      this.#o.events.authFailed('invalid-token')
      // Expired tokens are routine (a client refetches on this 401): not logged as a failed login.
      throw new UnauthorizedError('the token is invalid or has expired; ask for a new one', undefined, { 'www-authenticate': `${challenge()},error="invalid_token"` })
    }
    this.#checkFailures(client)
    if (scheme !== 'basic') return this.#fail(client, 'unsupported-scheme', undefined, `the ${scheme.slice(0, 20)} scheme is not taken here: log in with a user name and password`, challenge)
    const decoded = Buffer.from(value, 'base64').toString('utf8')
    if (decoded === ':') return undefined
    const colon = decoded.indexOf(':')
    if (colon <= 0) return this.#fail(client, 'malformed', undefined, 'the Basic credentials are not user:password', challenge)
    const user = decoded.slice(0, colon)
    const password = decoded.slice(colon + 1)
    const key = createHmac('sha256', this.#secret).update(user).update('\0').update(password).digest('base64')
    const generation = this.#o.users.generation
    if (this.#verified.get(key)?.generation === generation) return user
    if (this.#checks.waiting >= CHECKS_WAITING) {
      this.#o.events.authFailed('rate-limited')
      throw new TooManyRequestsError('too many logins are being checked; try again in a moment', undefined, { 'retry-after': '1' })
    }
    if (await this.#checks.run(async () => await this.#o.users.verify(user, password))) {
      this.#verified.set(key, { generation })
      return user
    }
    return this.#fail(client, 'bad-credentials', user, 'the user name or password is wrong', challenge)
  }

  /** Whether an anonymous caller at this address is let in at all (before the rules). */
  anonymousAllowed (address: string): boolean {
    if (this.#anonymous === undefined) return true
    const client = plainAddress(address)
    return this.#anonymous.check(client, isIPv4(client) ? 'ipv4' : 'ipv6')
  }

  #checkFailures (client: string): void {
    const seen = this.#failures.get(client)
    if (seen !== undefined && seen.count >= this.#o.maxFailures) {
      this.#o.events.authFailed('rate-limited')
      const wait = Math.max(1, Math.ceil((seen.since + this.#o.failureWindow - this.#now()) / 1000))
      throw new TooManyRequestsError(`too many failed logins from this address; try again in ${wait} s`, undefined, { 'retry-after': String(wait) })
    }
  }

  #fail (client: string, reason: AuthFailureReason, user: string | undefined, message: string, challenge: () => string): never {
    const seen = this.#failures.get(client)
    if (seen === undefined) this.#failures.set(client, { count: 1, since: this.#now() })
    else seen.count++
    this.#o.events.authFailed(reason)
    this.#o.log.warn({ user, address: client, reason }, 'login failed')
    throw new UnauthorizedError(message, undefined, { 'www-authenticate': challenge() })
  }
}
