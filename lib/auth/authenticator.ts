// Who is asking: a bearer token the mirror issued (tokens.ts), Basic
// credentials checked against the htpasswd users, a login for the
// passthrough upstream, or anonymous. A bcrypt check costs milliseconds to a
// tenth of a second, and clients may send their credentials with every
// request of a pull, so a verified pair is remembered for a short time under
// an HMAC of it (keyed by a secret made at start), never the password itself;
// a refused pair is remembered briefly the same way, so that repeating it
// costs nothing. The two namespaces never mix: a name in the passthrough
// upstream's login form (`ghcr.io/alice`) goes to that upstream, any other
// name is a user of the mirror, checked only here, so a mirror password,
// mistyped name or not, never leaves the mirror. Failed logins are bounded
// per address and per IPv6 /64 (failure-counter.ts), bcrypt checks queue with
// the listed names first (login-checks.ts); every failure is logged and
// counted.

import { createHmac, randomBytes } from 'node:crypto'
import { type BlockList, isIPv4 } from 'node:net'
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { TooManyRequestsError, UnauthorizedError } from '../errors.js'
import { Inflight } from '../cache/inflight.js'
import { networkList } from '../ip-address.js'
import type { AuthFailureReason, MirrorEvents } from '../events.js'
import type { ClientLogin } from '../upstream/client-login.js'
import { FailureCounter } from './failure-counter.js'
import type { HtpasswdFile } from './htpasswd.js'
import { LoginChecks } from './login-checks.js'
import type { TokenIssuer } from './tokens.js'

/** Checks a login against the upstream in passthrough mode (auth/passthrough.ts). */
export interface UpstreamLogins {
  /**
   * What a user name begins with when it is a login for the passthrough
   * upstream (`ghcr.io/`); the rest is the upstream's user name. Without
   * htpasswd users every name is one, with this beginning or without.
   */
  readonly loginPrefix: string
  /** Whether the upstream takes the login; a 429 when its login checks are at their bound. */
  checkLogin: (login: ClientLogin) => Promise<boolean>
}

/**
 * Who is asking: a user of the mirror (the htpasswd file), or a client with
 * a login for the passthrough upstream, or neither (anonymous).
 */
export interface Identity {
  readonly user: string | undefined
  readonly login: ClientLogin | undefined
}

const ANONYMOUS: Identity = { user: undefined, login: undefined }

/** A login a token may carry, at most (user name and password together). */
export const MAX_LOGIN_BYTES = 4096

export interface AuthenticatorOptions {
  /** The mirror's own users; undefined when it has none (passthrough logins only). */
  readonly users: HtpasswdFile | undefined
  /**
   * The passthrough upstream's logins: a user name in its login form is one of
   * those, checked there; undefined when no upstream is in passthrough mode.
   */
  readonly upstreamLogins?: UpstreamLogins | undefined
  readonly realm: string
  /** Milliseconds a verified user:password pair is trusted without a bcrypt check. */
  readonly remember: number
  /** CIDR networks anonymous callers must come from; undefined = anywhere. */
  readonly anonymousNetworks: readonly string[] | undefined
  /** Failed logins per address (four times as many per IPv6 /64) within failureWindow before it is refused for the rest of it. */
  readonly maxFailures: number
  readonly failureWindow: number
  readonly events: Pick<MirrorEvents, 'authFailed'>
  /** The mirror's bearer tokens (tokens.ts). */
  readonly tokens: TokenIssuer
  readonly log: Logger
  readonly now?: (() => number) | undefined
}

/** Remembered verifications and refusals are bounded: a flood of made-up names cannot grow them. */
const REMEMBERED = 10_000
/**
 * How long a refused pair is answered from memory: repeating a wrong password
 * costs no bcrypt check and never reaches the upstream again meanwhile.
 */
export const REFUSAL_MEMORY = 30_000
/**
 * bcrypt checks under way at once, and waiting per lane and per listed name: each
 * takes up to a tenth of a second of a core on the bcrypt worker, so a flood of
 * logins gets 429s past these rather than the threads and CPU pulls need.
 */
const CHECKS_AT_ONCE = 2
const CHECKS_WAITING = 64
const CHECKS_WAITING_PER_NAME = 8
/** Upstream login checks under way or waiting (the upstream's own bounds are in passthrough.ts). */
const UPSTREAM_CHECKS = 64

export class Authenticator {
  readonly #o: AuthenticatorOptions
  readonly #secret = randomBytes(32)
  readonly #verified: LRUCache<string, { generation: number }>
  /** Pairs bcrypt refused lately, by HMAC, with the file's generation then. */
  readonly #refused: LRUCache<string, { generation: number }>
  /** Upstream logins the passthrough upstream took lately, by HMAC. */
  readonly #upstreamVerified: LRUCache<string, true>
  /** Upstream logins it refused lately, by HMAC: not asked again meanwhile. */
  readonly #upstreamRefused: LRUCache<string, true>
  /** Upstream login checks under way, shared by the requests that bring the same login. */
  readonly #upstreamChecks = new Inflight<boolean>()
  readonly #failures: FailureCounter
  readonly #anonymous: BlockList | undefined
  readonly #checks = new LoginChecks({ atOnce: CHECKS_AT_ONCE, waiting: CHECKS_WAITING, waitingPerName: CHECKS_WAITING_PER_NAME })

  constructor (options: AuthenticatorOptions) {
    this.#o = options
    this.#verified = new LRUCache({ max: REMEMBERED, ttl: options.remember })
    this.#refused = new LRUCache({ max: REMEMBERED, ttl: Math.min(REFUSAL_MEMORY, options.remember) })
    this.#upstreamVerified = new LRUCache({ max: REMEMBERED, ttl: options.remember })
    this.#upstreamRefused = new LRUCache({ max: REMEMBERED, ttl: REFUSAL_MEMORY })
    this.#failures = new FailureCounter({ maxFailures: options.maxFailures, window: options.failureWindow, now: options.now })
    this.#anonymous = options.anonymousNetworks === undefined ? undefined : networkList(options.anonymousNetworks)
  }

  /** The challenge of a 401 from the token endpoint: it takes Basic credentials. */
  get basicChallenge (): string { return `Basic realm="${this.#o.realm}"` }

  /**
   * The entry a token for this user is bound to (undefined: the user is not listed),
   * for `TokenIssuer.issue` and `verify`.
   */
  binding (user: string): string | undefined {
    return this.#o.users?.entry(user)
  }

  /**
   * The caller of a request: the user its credentials name once they check out,
   * undefined (anonymous) when it sent none, an empty Basic pair (containers/image
   * sends one when it has no login), or an anonymous token. Credentials: Basic
   * user:password (the token endpoint, or clients that send them directly), or a
   * Bearer token the mirror issued (for a user, only while the htpasswd file lists
   * that user with the entry the token was issued under). Bad or unreadable
   * credentials are a 401 (never anonymous instead), challenged with what
   * `challenge` makes (only then); an address past its failures a 429.
   * A name in the passthrough upstream's login form is a login for that upstream,
   * checked there; any other name is a user of the mirror and never goes upstream.
   */
  async identify (authorization: string | undefined, client: string, challenge: () => string): Promise<Identity> {
    try {
      return await this.#identify(authorization, client, challenge)
    } catch (err) {
      // Every 429 of a login (its address past its failures, the checks at their bounds) is counted as one.
      if (err instanceof TooManyRequestsError) this.#o.events.authFailed('rate-limited')
      throw err
    }
  }

  /** `client`: the client's address in its plain form, as http/ settled it (ip-address.ts). */
  async #identify (authorization: string | undefined, client: string, challenge: () => string): Promise<Identity> {
    if (authorization === undefined || authorization === '') return ANONYMOUS
    const space = authorization.indexOf(' ')
    const scheme = (space < 0 ? authorization : authorization.slice(0, space)).toLowerCase()
    const value = space < 0 ? '' : authorization.slice(space + 1).trim()
    if (scheme === 'bearer') {
      const verified = this.#o.tokens.verify(value, user => this.binding(user))
      if (verified !== undefined) {
        const carried = verified.login
        return carried === undefined ? { user: verified.caller, login: undefined } : { user: undefined, login: this.#login(carried.username, carried.password) }
      }
      this.#o.events.authFailed('invalid-token')
      // Expired tokens are routine (a client refetches on this 401): not logged as a failed login.
      throw new UnauthorizedError('the token is invalid or has expired; ask for a new one', undefined, { 'www-authenticate': `${challenge()},error="invalid_token"` })
    }
    this.#failures.check(client)
    if (scheme !== 'basic') return this.#fail(client, 'unsupported-scheme', undefined, `the ${scheme.slice(0, 20)} scheme is not taken here: log in with a user name and password`, challenge)
    const decoded = Buffer.from(value, 'base64').toString('utf8')
    if (decoded === ':') return ANONYMOUS
    const colon = decoded.indexOf(':')
    if (colon <= 0 || Buffer.byteLength(decoded) > MAX_LOGIN_BYTES) return this.#fail(client, 'malformed', undefined, `the Basic credentials are not user:password (of at most ${MAX_LOGIN_BYTES} bytes)`, challenge)
    const user = decoded.slice(0, colon)
    const password = decoded.slice(colon + 1)
    const users = this.#o.users
    const upstream = this.#o.upstreamLogins
    if (upstream !== undefined) {
      // A name the file lists is a mirror user even in the login form: its password stays here.
      const prefixed = user.startsWith(upstream.loginPrefix) && users?.has(user) !== true
      if (prefixed || users === undefined) {
        const upstreamUser = prefixed ? user.slice(upstream.loginPrefix.length) : user
        if (upstreamUser === '') return this.#fail(client, 'malformed', user, `${upstream.loginPrefix} needs the upstream's user name after it`, challenge)
        return await this.#upstreamLogin(upstream, client, user, upstreamUser, password, challenge)
      }
    }
    if (users === undefined) return this.#fail(client, 'bad-credentials', user, 'the user name or password is wrong', challenge)
    return await this.#userLogin(users, client, user, password, challenge)
  }

  /**
   * A user of the mirror: the pair remembered, or checked with bcrypt in its turn.
   * Listed or not, a wrong password costs the same and gets the same answer.
   */
  async #userLogin (users: HtpasswdFile, client: string, user: string, password: string, challenge: () => string): Promise<Identity> {
    const key = this.#key(user, password)
    const generation = users.generation
    if (this.#verified.get(key)?.generation === generation) return { user, login: undefined }
    if (this.#refused.get(key)?.generation !== generation) {
      const lane = users.has(user) ? 'listed' : 'unlisted'
      const matched = await this.#checks.run(lane, user, async () => await users.verify(user, password))
      if (matched) {
        this.#verified.set(key, { generation })
        return { user, login: undefined }
      }
      this.#refused.set(key, { generation })
    }
    return this.#fail(client, 'bad-credentials', user, 'the user name or password is wrong', challenge)
  }

  /** A login for the passthrough upstream: taken once upstream took it (remembered for `remember`; a refusal briefly). */
  async #upstreamLogin (upstream: UpstreamLogins, client: string, typed: string, user: string, password: string, challenge: () => string): Promise<Identity> {
    const login = this.#login(user, password)
    if (this.#upstreamVerified.get(login.key) === true) return { user: undefined, login }
    if (this.#upstreamRefused.get(login.key) !== true) {
      if (this.#upstreamChecks.get(login.key) === undefined && this.#upstreamChecks.size >= UPSTREAM_CHECKS) {
        throw new TooManyRequestsError('too many logins are being checked; try again in a moment', undefined, { 'retry-after': '1' })
      }
      const taken = await this.#upstreamChecks.run(login.key, async () => await upstream.checkLogin(login)).promise
      if (taken) {
        this.#upstreamVerified.set(login.key, true)
        return { user: undefined, login }
      }
      this.#upstreamRefused.set(login.key, true)
    }
    return this.#fail(client, 'bad-credentials', typed, 'the upstream does not take this user name and password', challenge)
  }

  /** A login with the key caches name it by. */
  #login (username: string, password: string): ClientLogin {
    return { username, password, key: this.#key(username, password) }
  }

  #key (user: string, password: string): string {
    return createHmac('sha256', this.#secret).update(user).update('\0').update(password).digest('base64url')
  }

  /** Whether an anonymous caller at this address is let in at all (before the rules). */
  anonymousAllowed (client: string): boolean {
    if (this.#anonymous === undefined) return true
    return this.#anonymous.check(client, isIPv4(client) ? 'ipv4' : 'ipv6')
  }

  #fail (client: string, reason: AuthFailureReason, user: string | undefined, message: string, challenge: () => string): never {
    this.#failures.record(client)
    this.#o.events.authFailed(reason)
    this.#o.log.warn({ user, address: client, reason }, 'login failed')
    throw new UnauthorizedError(message, undefined, { 'www-authenticate': challenge() })
  }
}
