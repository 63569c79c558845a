// The client for one upstream registry: Docker's bearer-token flow, redirects
// (blobs go to a CDN; credentials never follow to another host), timeouts,
// and the translation of upstream failures into OCI errors. Policy only: the
// HTTP is http1-agent.ts's.

import type { Readable } from 'node:stream'
import type { Logger } from 'pino'
import type { UpstreamConfig } from '../config/types.js'
import type { MirrorEvents } from '../events.js'
import { basicAuthorization, contentLength, header, passedThroughHeaders, rateLimit, type HeaderMap } from '../oci/headers.js'
import { DeniedError, errnoCode, RegistryError, TooManyRequestsError, UnavailableError } from '../errors.js'
import { MAX_TOKEN_BYTES } from '../oci/limits.js'
import { readLimited } from '../read-limited.js'
import { Limiter } from '../limiter.js'
import { guardedLookup, isLinkLocal } from './address-guard.js'
import { Http1Agent, type Http1Response, type ReadBuffers } from './http1-agent.js'
import { CircuitBreaker } from './circuit-breaker.js'
import { parseChallenges, type Challenge } from './challenge.js'
import { DEFAULT_TOKEN_LIFETIME_S, TokenCache } from './token-cache.js'
import { callerKey, type ClientLogin, type PassthroughCaller } from './client-login.js'

const MAX_REDIRECTS = 5
/** Connections for manifests, tags, referrers and tokens, apart from the blob downloads'. */
const METADATA_CONNECTIONS = 16
export const DEFAULT_CONCURRENT_DOWNLOADS = 16
/** Blob connections beyond the downloads: HEADs, and the uncached answers to a full disk's clients. */
const BLOB_HEADROOM = 8
const KEEP_ALIVE_MS = 30_000

type Headers = HeaderMap

/** An answer's body: its chunks are views of the read pool's buffers, which a reader done with one may give back. */
export type UpstreamBody = Readable & { dump: () => Promise<void> }

export interface UpstreamResponse {
  readonly status: number
  readonly headers: Headers
  readonly body: UpstreamBody
}



type UpstreamEventSink = Pick<MirrorEvents, 'upstreamResponse' | 'tokenFetched' | 'upstreamRetried' | 'upstreamRefused' | 'upstreamState'>

export interface UpstreamClientOptions {
  readonly config: UpstreamConfig
  readonly log: Logger
  readonly events: UpstreamEventSink
  readonly now?: () => number
  /** The pool blob bodies are read into (store/buffer-pool.ts); whoever takes a chunk may give it back. */
  readonly buffers: ReadBuffers
}

export class UpstreamClient {
  readonly name: string
  readonly #config: UpstreamConfig
  /** Manifests, tags, referrers and tokens: never queued behind blob downloads. */
  readonly #agent: Http1Agent
  /** Blobs: the downloads, their HEADs, and the uncached answers to a full disk's clients. */
  readonly #blobAgent: Http1Agent
  readonly #downloads: Limiter
  readonly #circuit: CircuitBreaker
  readonly #log: Logger
  readonly #now: () => number
  readonly #tokens: TokenCache
  readonly #tokenFetches = new Map<string, Promise<string>>()
  readonly #events: UpstreamEventSink
  /** The url's host and the configured authHosts: where tokens and non-blob redirects may come from. */
  readonly #ownHosts: ReadonlySet<string>
  readonly #plainHttp: boolean
  #basic: string | undefined
  /** The upstream answered a Basic challenge: clients' own logins go up front from then on too. */
  #wantsBasic = false

  constructor (options: UpstreamClientOptions) {
    this.#config = options.config
    this.name = options.config.name
    this.#log = options.log.child({ upstream: this.name })
    this.#now = options.now ?? Date.now
    this.#tokens = new TokenCache(options.now)
    this.#events = options.events
    const base = new URL(options.config.url)
    this.#ownHosts = new Set([base.host, ...(options.config.authHosts ?? [])].map(h => h.toLowerCase()))
    this.#plainHttp = base.protocol === 'http:'
    const pool = (connections: number): Http1Agent => new Http1Agent({
      connectTimeout: options.config.connectTimeout,
      headersTimeout: options.config.headersTimeout,
      bodyTimeout: options.config.bodyTimeout,
      keepAliveTimeout: KEEP_ALIVE_MS,
      maxConnectionsPerOrigin: connections,
      maxIdlePerOrigin: connections,
      lookup: guardedLookup,
      buffers: options.buffers
    })
    const downloads = options.config.maxConcurrentDownloads ?? DEFAULT_CONCURRENT_DOWNLOADS
    this.#agent = pool(METADATA_CONNECTIONS)
    this.#blobAgent = pool(downloads + BLOB_HEADROOM)
    this.#downloads = new Limiter(downloads)
    this.#circuit = new CircuitBreaker({
      now: options.now,
      onChange: down => {
        if (down === undefined) this.#log.warn('upstream answers again; its circuit is closed')
        else this.#log.error({ since: new Date(down.since).toISOString(), nextTry: new Date(down.until).toISOString() }, 'upstream marked down after repeated connect failures or timeouts; answering from the cache without asking it')
        this.#events.upstreamState(this.name, down)
      }
    })
  }

  /** Since when this upstream is down, and when it is tried again; undefined while it answers. */
  get down (): { since: number, until: number } | undefined { return this.#circuit.down }

  /**
   * Sends a GET or HEAD for a /v2/ path of this upstream and returns the final
   * answer after authentication and redirects, whatever its status. Network
   * failures become UnavailableError; a 429 becomes TooManyRequestsError.
   * With a `caller` (passthrough mode) the request goes with that client's own
   * login, or none, and never with the mirror's configured credentials.
   * `fresh` (a passthrough check, whose answer is trusted for clientAccessTtl
   * from now) sends no token cached for the caller: a Bearer upstream's token
   * server is asked again, with the caller's login.
   */
  async send (method: 'GET' | 'HEAD', path: string, options: { repository?: string, headers?: Record<string, string>, kind: string, caller?: PassthroughCaller | undefined, fresh?: boolean }): Promise<UpstreamResponse> {
    const scopeKey = options.repository !== undefined ? `repository:${options.repository}:pull` : ''
    const caller = options.caller
    const tokenKey = caller === undefined ? scopeKey : `${callerKey(caller)}\0${scopeKey}`
    const fresh = options.fresh === true && caller !== undefined
    let url = new URL(this.#config.url + path)
    const baseHeaders: Record<string, string> = { 'user-agent': 'registry-mirror', ...options.headers }
    // A check drops the caller's old token, so that if the token server now refuses, nothing granted
    // before is used again.
    if (fresh) this.#tokens.delete(tokenKey)
    let authorization = this.#cachedAuthorization(tokenKey, caller)
    let authTried = false
    let retried = false
    if (!this.#circuit.admit()) {
      const down = this.#circuit.down
      throw new UnavailableError(`upstream ${this.name} is down (no answer to repeated requests); it is tried again after ${new Date(down?.until ?? 0).toISOString()}`, { upstream: this.name, reason: 'circuit-open' })
    }
    for (let hop = 0; ; hop++) {
      const headers = { ...baseHeaders }
      const sameOrigin = url.origin === new URL(this.#config.url).origin
      if (authorization !== undefined && sameOrigin) headers.authorization = authorization
      let res: Http1Response
      try {
        res = await (options.kind === 'blob' ? this.#blobAgent : this.#agent).request(method, url, headers)
      } catch (err) {
        if (!retried && isRetryable(err)) {
          retried = true
          this.#events.upstreamRetried(this.name)
          hop--
          continue
        }
        if (url.origin === new URL(this.#config.url).origin) this.#circuit.failed()
        throw this.#unavailable(err, url)
      }
      if (url.origin === new URL(this.#config.url).origin) this.#circuit.succeeded()
      this.#events.upstreamResponse({ upstream: this.name, kind: options.kind, method, status: res.statusCode, rateLimit: rateLimit(res.headers) })
      const status = res.statusCode
      if (status === 401 && sameOrigin && !authTried) {
        authTried = true
        const challenge = header(res.headers, 'www-authenticate')
        await res.body.dump()
        authorization = await this.#authorize(challenge, scopeKey, tokenKey, caller, fresh)
        hop--
        continue
      }
      if (status >= 300 && status < 400 && status !== 304) {
        const location = header(res.headers, 'location')
        await res.body.dump()
        if (location === undefined || hop >= MAX_REDIRECTS) {
          throw new UnavailableError(`upstream ${this.name} sent a redirect the mirror cannot follow`, { status })
        }
        url = new URL(location, url)
        if (url.protocol !== 'https:' && url.protocol !== 'http:') {
          throw new UnavailableError(`upstream ${this.name} redirected to an unsupported URL`, { status })
        }
        if (isLinkLocal(url.hostname)) throw this.#refuse('link-local', `upstream ${this.name} redirected a ${options.kind} request to a link-local address`, url)
        // Blobs go to CDNs (without credentials); whatever else is asked stays with the upstream.
        if (options.kind !== 'blob' && !this.#ownHosts.has(url.host.toLowerCase())) {
          throw this.#refuse('redirect-host', `upstream ${this.name} redirected a ${options.kind} request to ${url.host}, which is not one of its hosts (upstreams.${this.name}.authHosts)`, url)
        }
        continue
      }
      if (status === 429) {
        const retryAfter = header(res.headers, 'retry-after') ?? '60'
        await res.body.dump()
        throw new TooManyRequestsError(`upstream ${this.name} is rate limiting this mirror`, { upstream: this.name },
          { 'retry-after': retryAfter, ...passedThroughHeaders(res.headers) })
      }
      if (status === 401 || status === 403) {
        await res.body.dump()
        if (status === 401 && scopeKey !== '') this.#tokens.delete(tokenKey)
        const what = options.repository !== undefined ? ` to ${options.repository}` : ''
        throw new DeniedError(caller === undefined
          ? `upstream ${this.name} denied access${what}: the repository may not exist or may need credentials`
          : `upstream ${this.name} denied ${caller.login === undefined ? 'anonymous' : `${caller.login.username}'s`} access${what}`, { upstream: this.name, status })
      }
      if (status >= 500) {
        await res.body.dump()
        throw new UnavailableError(`upstream ${this.name} failed (HTTP ${status})`, { upstream: this.name, status })
      }
      return { status, headers: res.headers, body: res.body }
    }
  }

  /** The body of a successful GET as a stream, with its announced length. */
  /**
   * The body of a blob GET as a stream, with its announced length. It holds one of the
   * upstream's maxConcurrentDownloads slots until the body has ended or been destroyed.
   */
  async openBlob (repository: string, digest: string, caller?: PassthroughCaller): Promise<{ status: number, body: UpstreamResponse['body'], size: number | undefined, headers: Headers }> {
    const release = await this.#downloads.acquire()
    let res: UpstreamResponse
    try {
      res = await this.send('GET', `/v2/${repository}/blobs/${digest}`, { repository, kind: 'blob', caller })
    } catch (err) {
      release()
      throw err
    }
    res.body.once('close', release)
    res.body.once('end', release)
    res.body.once('error', release)
    return { status: res.status, body: res.body, size: contentLength(res.headers), headers: res.headers }
  }

  #cachedAuthorization (tokenKey: string, caller: PassthroughCaller | undefined): string | undefined {
    const token = this.#tokens.get(tokenKey)
    if (token !== undefined) return `Bearer ${token}`
    if (caller === undefined) return this.#basic
    const login = caller.login
    return this.#wantsBasic && login !== undefined ? basicAuthorization(login.username, login.password) : undefined
  }

  async #authorize (challengeHeader: string | undefined, scopeKey: string, tokenKey: string, caller: PassthroughCaller | undefined, fresh: boolean): Promise<string> {
    const challenges = challengeHeader === undefined ? [] : parseChallenges(challengeHeader)
    const bearer = challenges.find(c => c.scheme === 'bearer')
    if (bearer !== undefined) {
      // A check joins no fetch begun before it: that one's answer may predate a revocation.
      let pending = fresh ? undefined : this.#tokenFetches.get(tokenKey)
      if (pending === undefined) {
        const started: Promise<string> = this.#fetchToken(bearer, scopeKey, tokenKey, caller).finally(() => {
          if (this.#tokenFetches.get(tokenKey) === started) this.#tokenFetches.delete(tokenKey)
        })
        this.#tokenFetches.set(tokenKey, started)
        pending = started
      }
      return `Bearer ${await pending}`
    }
    if (challenges.some(c => c.scheme === 'basic')) {
      if (caller !== undefined) {
        this.#wantsBasic = true
        const login = caller.login
        if (login === undefined) throw new DeniedError(`upstream ${this.name} needs a login for this`, { upstream: this.name })
        // Basic goes to the upstream's own url only (sameOrigin in send): https, or http as configured.
        return basicAuthorization(login.username, login.password)
      }
      if (this.#config.username !== undefined) {
        // A Basic upstream wants the same credentials every time: send them up front from now on.
        this.#basic = basicAuthorization(this.#config.username, this.#config.password ?? '')
        return this.#basic
      }
    }
    throw new DeniedError(`upstream ${this.name} requires authentication the mirror cannot provide`, { upstream: this.name })
  }

  /** Credentials travel over https only, unless the upstream itself was configured with http (token realms may differ). */
  #mayCarryLogin (url: URL): boolean {
    return url.protocol === 'https:' || this.#plainHttp
  }

  /**
   * Whether the upstream takes a client's login (passthrough mode), checked
   * the way a registry client logs in: its token endpoint, asked with the
   * login and no scope, or /v2/ itself for a Basic upstream. An upstream
   * that asks for no login takes any. Unreachable: UnavailableError.
   */
  async checkLogin (login: ClientLogin): Promise<boolean> {
    const caller: PassthroughCaller = { login }
    try {
      // Fresh: a token from an earlier check would say only that the login was good then.
      const res = await this.send('GET', '/v2/', { kind: 'login', caller, fresh: true })
      await res.body.dump()
      return res.status === 200
    } catch (err) {
      if (err instanceof DeniedError) return false
      throw err
    }
  }

  async #fetchToken (challenge: Challenge, key: string, tokenKey: string, caller: PassthroughCaller | undefined): Promise<string> {
    const realm = challenge.params.realm
    if (realm === undefined) throw new UnavailableError(`upstream ${this.name} sent a bearer challenge without a realm`)
    let url: URL
    try {
      url = new URL(realm)
    } catch {
      throw new UnavailableError(`upstream ${this.name} sent an invalid token realm`)
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new UnavailableError(`upstream ${this.name} sent an invalid token realm`)
    if (isLinkLocal(url.hostname)) throw this.#refuse('link-local', `upstream ${this.name} named a token realm on a link-local address`, url)
    if (!this.#ownHosts.has(url.host.toLowerCase())) {
      throw this.#refuse('realm-host', `upstream ${this.name} named a token realm on ${url.host}, which is not one of its hosts (upstreams.${this.name}.authHosts)`, url)
    }
    if (challenge.params.service !== undefined) url.searchParams.set('service', challenge.params.service)
    const scope = challenge.params.scope ?? (key === '' ? undefined : key)
    if (scope !== undefined) for (const s of scope.split(' ')) url.searchParams.append('scope', s)
    const headers: Record<string, string> = { 'user-agent': 'registry-mirror', accept: 'application/json' }
    // A client's own login in passthrough mode; else the mirror's configured credentials.
    const login = caller === undefined
      ? (this.#config.username === undefined ? undefined : { username: this.#config.username, password: this.#config.password ?? '' })
      : caller.login
    if (login !== undefined) {
      if (this.#mayCarryLogin(url)) headers.authorization = basicAuthorization(login.username, login.password)
      else this.#log.warn({ realm: url.host }, 'token realm is plain http: asking for a token without the credentials')
    }
    this.#events.tokenFetched(this.name)
    const askedAt = this.#now()
    let res: Http1Response
    try {
      res = await this.#agent.request('GET', url, headers)
    } catch (err) {
      throw this.#unavailable(err, url)
    }
    this.#events.upstreamResponse({ upstream: this.name, kind: 'token', method: 'GET', status: res.statusCode })
    if (res.statusCode === 401 || res.statusCode === 403) {
      await res.body.dump()
      throw new DeniedError(caller === undefined
        ? `upstream ${this.name} refused the mirror's credentials`
        : `upstream ${this.name} refused ${caller.login === undefined ? 'an anonymous token' : `the login of ${caller.login.username}`}`, { upstream: this.name, status: res.statusCode })
    }
    if (res.statusCode !== 200) {
      await res.body.dump()
      throw new UnavailableError(`upstream ${this.name} token service failed (HTTP ${res.statusCode})`, { upstream: this.name })
    }
    const bytes = await readLimited(res.body, MAX_TOKEN_BYTES)
    if (bytes === undefined) throw new UnavailableError(`upstream ${this.name} token service sent more than ${MAX_TOKEN_BYTES} bytes`)
    const token = tokenFrom(parseJson(bytes))
    if (token === undefined) throw new UnavailableError(`upstream ${this.name} token service sent no token`)
    // A client's token is its right to the repository as the upstream saw it when asked: used no longer
    // than the passthrough gate trusts that yes (clientAccessTtl), so the check after it reaches the token server.
    const ttl = this.#config.passthrough?.ttl
    this.#tokens.set(tokenKey, token.token, token.expiresIn, caller === undefined || ttl === undefined ? undefined : { maxAge: ttl, askedAt })
    this.#log.debug({ scope: key, expiresIn: token.expiresIn, passthrough: caller !== undefined }, 'fetched upstream token')
    return token.token
  }

  /** A request the mirror will not make: logged, counted, and a 503 naming the problem. */
  #refuse (reason: 'realm-host' | 'redirect-host' | 'link-local', message: string, url: URL): RegistryError {
    this.#log.warn({ reason, host: url.host }, message)
    this.#events.upstreamRefused(this.name, reason)
    return new UnavailableError(message, { upstream: this.name, reason })
  }

  #unavailable (err: unknown, url: URL): RegistryError {
    const code = errnoCode(err) ?? 'UNKNOWN'
    this.#log.warn({ code, host: url.host, err: err instanceof Error ? err.message : String(err) }, 'upstream unreachable')
    return new UnavailableError(`upstream ${this.name} is unreachable`, { upstream: this.name, reason: code })
  }

  /** Lets requests under way finish for up to `graceMs`, then cuts them. */
  async close (graceMs = 5_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    const cut = new Promise<void>(resolve => {
      timer = setTimeout(() => { Promise.all([this.#agent.destroy(), this.#blobAgent.destroy()]).then(() => resolve(), resolve) }, graceMs)
      timer.unref()
    })
    await Promise.race([Promise.all([this.#agent.close(), this.#blobAgent.close()]), cut])
    clearTimeout(timer)
  }
}


function parseJson (bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'))
  } catch {
    return undefined
  }
}

function tokenFrom (body: unknown): { token: string, expiresIn: number } | undefined {
  if (typeof body !== 'object' || body === null) return undefined
  const record = body as Record<string, unknown>
  const token = typeof record.token === 'string' && record.token !== '' ? record.token : record.access_token
  if (typeof token !== 'string' || token === '') return undefined
  const expiresIn = typeof record.expires_in === 'number' && record.expires_in > 0 ? record.expires_in : DEFAULT_TOKEN_LIFETIME_S
  return { token, expiresIn }
}

function isRetryable (err: unknown): boolean {
  const code = errnoCode(err)
  // UPSTREAM_CLOSED: a kept-alive connection the upstream closed as the request went out.
  return code === 'ECONNRESET' || code === 'EPIPE' || code === 'UPSTREAM_CLOSED'
}
