// The Koa application: the pull side of the OCI distribution API over the
// mirror's services. It parses and validates, picks the upstream, and turns
// answers and errors into HTTP; the caching policy lives in lib/mirror/.

import Koa, { type Context, type Next } from 'koa'
import Router from '@koa/router'
import type { Logger } from 'pino'
import { DeniedError, NameInvalidError, NotFoundError, RegistryError, TokenRequestInvalidError, UnauthorizedError, UnsupportedError } from '../errors.js'
import type { AccessRules } from '../auth/access-rules.js'
import type { Authenticator } from '../auth/authenticator.js'
import type { PassthroughGate, Probe } from '../auth/passthrough.js'
import type { IssuedToken, TokenIssuer } from '../auth/tokens.js'
import type { ClientLogin, PassthroughCaller } from '../upstream/client-login.js'
import type { BlobService } from '../mirror/blobs.js'
import type { ListingService } from '../mirror/listings.js'
import { parsePage } from '../mirror/listings.js'
import type { ManifestService } from '../mirror/manifests.js'
import type { CacheOutcome, MirrorEvents, RequestKind } from '../events.js'
import { parseDigest, parseManifestReference } from '../oci/reference.js'
import { INDEX_TYPES, MediaTypes } from '../oci/media-types.js'
import { route, type Route, type RoutingTable } from '../upstream/routing.js'
import { sendError } from './envelope.js'
import { sendBody } from './response-sink.js'
import { opsRouter, type OpsOptions } from './ops.js'
import { TrustedProxies } from './client-address.js'
import { plainAddress } from '../ip-address.js'
import { basicAuthorization } from '../oci/headers.js'
import type { ClientRequestLimit, Turn } from './client-limit.js'

export interface AppState {
  /**
   * The client's address (plain form): the TCP peer, or, from a trusted proxy,
   * the address X-Forwarded-For names. Set first thing for every request.
   */
  client?: string
  /** The scheme the client used, as a trusted proxy says (X-Forwarded-Proto) when it ends TLS. */
  protocol?: 'http' | 'https'
  cache?: CacheOutcome
  kind?: RequestKind
  upstream?: string
  /** The repository's cache key, once the caller was let read it. */
  repository?: string
  /** A manifest asked for by tag. */
  byTag?: boolean
  /** An image manifest (not an index) answered to a GET: one image pulled. */
  pull?: boolean
  /** The authenticated user; undefined for anonymous callers (and when there is no auth). */
  user?: string
  /** The request carried credentials that checked out: a login, or a token (anonymous or not). */
  credentialed?: boolean
  /** A login for the passthrough upstream the caller brought (never logged but for its user name). */
  login?: ClientLogin
}

/** Client authentication and the access rules, when auth is configured. */
export interface AppAuth {
  readonly authenticator: Authenticator
  readonly rules: AccessRules
  readonly tokens: TokenIssuer
  /** The upstreams in passthrough mode, which say themselves who may read what. */
  readonly passthrough?: PassthroughGate | undefined
}

export interface AppOptions {
  readonly blobs: BlobService
  readonly manifests: ManifestService
  readonly listings: ListingService
  readonly routing: RoutingTable
  readonly log: Logger
  /** Told of each finished request (metrics, the counters of `stats`). */
  readonly events: Pick<MirrorEvents, 'requestFinished'>
  /** /metrics, /healthz, /readyz on this listener; undefined when they have their own. */
  readonly ops?: OpsOptions | undefined
  /** Which peers' X-Forwarded-For is believed; undefined: none, the TCP peer is the client. */
  readonly trustedProxies?: TrustedProxies | undefined
  /** Requests under way per client address, and those waiting their turn; undefined: unbounded. */
  readonly requestLimit?: ClientRequestLimit | undefined
  /** Takes each blob body chunk once the socket has it (read buffers go back to their pool). */
  readonly sent?: ((chunk: Uint8Array) => void) | undefined
  readonly auth?: AppAuth | undefined
  /** Told of refused logins and denied repositories. */
  readonly authEvents?: Pick<MirrorEvents, 'authFailed' | 'accessDenied'> | undefined
}

type Ctx = Context & { state: AppState }

const API_VERSION = 'registry/2.0'
/** Tells clients and operators how the cache answered: hit, miss, joined, stale, revalidated. */
export const CACHE_HEADER = 'X-Mirror-Cache'
const PATH = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\/([^/]+)$/

export function createApp (options: AppOptions): Koa<AppState> {
  const app = new Koa<AppState>()
  app.proxy = false
  // Errors after the headers went out (a blob failing verification mid-stream) end in a cut
  // connection, which is the point; they are logged by the blob service, not here.
  app.on('error', (err: unknown) => {
    options.log.debug({ err: err instanceof Error ? err.message : String(err) }, 'response stream ended with an error')
  })
  app.use(clientAddress(options.trustedProxies ?? new TrustedProxies([])))
  app.use(requestLog(options))
  app.use(errors(options.log))
  if (options.requestLimit !== undefined) app.use(perClientLimit(options.requestLimit))
  const auth = options.auth
  if (auth !== undefined) app.use(authenticate(auth))

  const router = new Router<AppState>()
  const base = (ctx: Ctx): void => {
    ctx.set('Docker-Distribution-API-Version', API_VERSION)
    // With auth, /v2/ is where clients learn to log in (docker login checks it), so it
    // challenges every caller without credentials; anonymous pulls go on regardless.
    if (auth !== undefined && ctx.state.credentialed !== true) throw loginRequired(ctx, 'authentication required')
    ctx.body = {}
  }
  router.get('/v2/', base)
  router.get('/v2', base)
  if (auth !== undefined) {
    router.get(TOKEN_PATH, tokenEndpoint(auth, options))
    router.post(TOKEN_PATH, oauthTokenEndpoint(auth, options))
  }
  router.get('/v2/_catalog', ctx => {
    ctx.state.kind = 'catalog'
    const page = parsePage(single(ctx.query.n), single(ctx.query.last))
    if (auth !== undefined && ctx.state.user === undefined && !auth.authenticator.anonymousAllowed(clientOf(ctx))) {
      throw loginRequired(ctx, 'log in: anonymous access is not allowed from this network', 'registry:catalog:*')
    }
    const user = ctx.state.user
    const caller: PassthroughCaller = { login: ctx.state.login }
    const gate = auth?.passthrough
    const visible = auth === undefined
      ? undefined
      : (repository: string): boolean => {
          const upstream = repository.slice(0, repository.indexOf('/'))
          // A passthrough upstream's repositories: only those it let this caller read lately.
          if (gate?.covers(upstream) === true) return gate.allowed(caller, repository)
          return auth.rules.mayPull(user, repository)
        }
    const { repositories, next } = options.listings.catalog(page, visible)
    if (next !== undefined) {
      const q = new URLSearchParams()
      if (page.n !== undefined) q.set('n', String(page.n))
      q.set('last', next)
      ctx.set('Link', `</v2/_catalog?${q.toString()}>; rel="next"`)
    }
    ctx.body = { repositories }
  })
  app.use(router.routes())
  if (options.ops !== undefined) app.use(opsRouter<AppState>(options.ops).routes())
  app.use(distribution(options))
  return app
}

/**
 * Who is asking, settled once per request before anything else reads it: the
 * TCP peer, or from a trusted proxy the client its X-Forwarded-For names.
 */
function clientAddress (trusted: TrustedProxies) {
  return async (ctx: Ctx, next: Next): Promise<void> => {
    const peer = ctx.socket.remoteAddress
    ctx.state.client = trusted.clientOf(peer, ctx.req.headersDistinct['x-forwarded-for'])
    const protocol = trusted.protocolOf(peer, ctx.req.headersDistinct['x-forwarded-proto'])
    if (protocol !== undefined) ctx.state.protocol = protocol
    await next()
  }
}

/** The client's address; the clientAddress middleware set it. */
function clientOf (ctx: Ctx): string {
  return ctx.state.client ?? plainAddress(ctx.socket.remoteAddress ?? '')
}

/**
 * Requests under way per client address: one client cannot take every answer
 * the mirror can give. A burst past the limit waits its turn (in order, for a
 * while) before it is answered 429; one whose client leaves meanwhile is dropped.
 */
function perClientLimit (limit: ClientRequestLimit) {
  return async (ctx: Ctx, next: Next): Promise<void> => {
    // Most requests get their turn at once: the signal that a waiting client left is made only for those that wait.
    let turn = limit.tryAcquire(clientOf(ctx))
    if (turn === undefined) {
      const gone = new AbortController()
      const leave = (): void => { gone.abort() }
      ctx.res.once('close', leave)
      try {
        turn = await limit.acquire(clientOf(ctx), gone.signal)
      } finally {
        ctx.res.off('close', leave)
      }
    }
    // The client left while it waited (or as its turn came): nobody to answer.
    if (turn === undefined) return
    if (ctx.res.closed) {
      turn.release()
      return
    }
    // A request is under way until its response is done (a streamed blob: until its last byte, or the client leaves).
    ctx.res.once('close', turn.release)
    try {
      await next()
    } finally {
      if (ctx.res.writableFinished || ctx.res.destroyed) turn.release()
    }
  }
}

/** Where clients get tokens: this listener's own token endpoint, as the client reached it. */
export const TOKEN_PATH = '/auth/token'
/** The service named in challenges and tokens. */
const SERVICE = 'registry-mirror'

/** The Bearer challenge of a 401, naming this mirror's token endpoint by the Host the client used. */
function bearerChallenge (ctx: Ctx, scope?: string): string {
  // The Host header only tells the client where to ask for its own token; one that could
  // break the header's quoting is replaced by the address the request came in on.
  const host = /^[A-Za-z0-9.\-:[\]]{1,300}$/.test(ctx.host) ? ctx.host : `${ctx.socket.localAddress ?? '127.0.0.1'}:${ctx.socket.localPort ?? ''}`
  const realm = `${ctx.state.protocol ?? ctx.protocol}://${host}${TOKEN_PATH}`
  return `Bearer realm="${realm}",service="${SERVICE}"${scope === undefined ? '' : `,scope="${scope}"`}`
}

/** Who is asking, for requests of the distribution API (the ops endpoints have their own token; the token endpoint checks its own). */
function authenticate (auth: AppAuth) {
  return async (ctx: Ctx, next: Next): Promise<void> => {
    if (ctx.path === '/v2' || ctx.path.startsWith('/v2/')) {
      const authorization = ctx.get('authorization') || undefined
      const identity = await auth.authenticator.identify(authorization, clientOf(ctx), () => bearerChallenge(ctx))
      if (identity.user !== undefined) ctx.state.user = identity.user
      if (identity.login !== undefined) ctx.state.login = identity.login
      // Credentials that checked out, a token (anonymous ones too) or a login.
      ctx.state.credentialed = authorization !== undefined
    }
    await next()
  }
}

/** The token endpoint: a token for the caller its Basic credentials name, or an anonymous one. */
function tokenEndpoint (auth: AppAuth, options: AppOptions) {
  return async (ctx: Ctx): Promise<void> => {
    ctx.state.kind = 'other'
    const authorization = ctx.get('authorization') || undefined
    if (authorization !== undefined && !/^basic /i.test(authorization)) {
      throw new UnauthorizedError('the token endpoint takes Basic credentials', undefined, { 'www-authenticate': auth.authenticator.basicChallenge })
    }
    const issued = await issueToken(ctx, auth, options, authorization)
    ctx.body = { token: issued.token, access_token: issued.token, expires_in: issued.expiresIn, issued_at: issued.issuedAt }
  }
}

/** A token request's form, at most (a login of MAX_LOGIN_BYTES and the rest). */
const MAX_TOKEN_FORM_BYTES = 16 * 1024
/** A token request's form must arrive within this (ms): a trickling body would hold its connection and its client's turn. */
const TOKEN_FORM_TIMEOUT = 10_000

/**
 * The token endpoint's OAuth2 form (distribution's "OAuth2 Token
 * Authentication"), which containerd tries first when it has a login:
 * `grant_type=password` with `username` and `password`, taken as the same
 * login a Basic header would carry (the same checks, bounds and answers).
 * No refresh tokens are issued, so other grants get 400, on which containerd
 * asks with GET and Basic instead.
 */
function oauthTokenEndpoint (auth: AppAuth, options: AppOptions) {
  return async (ctx: Ctx): Promise<void> => {
    ctx.state.kind = 'other'
    if (!ctx.is('application/x-www-form-urlencoded')) throw new TokenRequestInvalidError('a token request by POST is an application/x-www-form-urlencoded form')
    const body = await readForm(ctx.req)
    if (typeof body === 'string') {
      // What is left of the body is not read: the connection ends with this answer.
      ctx.set('Connection', 'close')
      throw new TokenRequestInvalidError(body)
    }
    const form = new URLSearchParams(body.toString('utf8'))
    const grant = form.get('grant_type')
    if (grant !== 'password') throw new TokenRequestInvalidError(`grant_type ${JSON.stringify((grant ?? '').slice(0, 40))} is not taken here: only password (no refresh tokens are issued)`)
    const username = form.get('username') ?? ''
    const password = form.get('password') ?? ''
    const issued = await issueToken(ctx, auth, options, basicAuthorization(username, password))
    const scope = form.get('scope')
    ctx.body = { access_token: issued.token, expires_in: issued.expiresIn, issued_at: issued.issuedAt, ...(scope === null ? {} : { scope }) }
  }
}

/**
 * A token request's form, read whole within its bounds; what went wrong when
 * it was not. Past the size, reading stops (the request is paused, not read
 * to its end), so a client cannot make the mirror take more than the bound.
 */
async function readForm (req: Ctx['req']): Promise<Buffer | string> {
  const declared = Number(req.headers['content-length'] ?? 0)
  const tooLarge = `a token request's form is at most ${MAX_TOKEN_FORM_BYTES} bytes`
  if (declared > MAX_TOKEN_FORM_BYTES) return tooLarge
  return await new Promise(resolve => {
    const chunks: Buffer[] = []
    let size = 0
    const finish = (result: Buffer | string): void => {
      clearTimeout(timer)
      req.off('data', onData)
      req.off('end', onEnd)
      req.off('error', onEnd)
      if (typeof result === 'string') req.pause()
      resolve(result)
    }
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      if (size > MAX_TOKEN_FORM_BYTES) finish(tooLarge)
      else chunks.push(chunk)
    }
    const onEnd = (): void => { finish(req.complete ? Buffer.concat(chunks) : 'the token request\'s form did not arrive whole') }
    const timer = setTimeout(() => finish(`the token request's form did not arrive within ${TOKEN_FORM_TIMEOUT / 1000} s`), TOKEN_FORM_TIMEOUT)
    req.on('data', onData)
    req.once('end', onEnd)
    req.once('error', onEnd)
  })
}

/** A token for the caller the credentials name (none: anonymous), checked as every login is. */
async function issueToken (ctx: Ctx, auth: AppAuth, options: AppOptions, authorization: string | undefined): Promise<IssuedToken> {
  const address = clientOf(ctx)
  const { user, login } = await auth.authenticator.identify(authorization, address, () => auth.authenticator.basicChallenge)
  if (user === undefined && login === undefined && !auth.authenticator.anonymousAllowed(address)) {
    options.authEvents?.accessDenied('anonymous-network')
    throw new UnauthorizedError('log in: anonymous access is not allowed from this network', undefined, { 'www-authenticate': auth.authenticator.basicChallenge })
  }
  if (user !== undefined) ctx.state.user = user
  if (login !== undefined) ctx.state.login = login
  // A login for the passthrough upstream travels inside the token, sealed: the mirror keeps none.
  // A user's token is bound to the user's htpasswd entry: it ends with the entry.
  const issued = login === undefined
    ? auth.tokens.issue(user, { binding: user === undefined ? undefined : auth.authenticator.binding(user) })
    : auth.tokens.issue(undefined, { login })
  ctx.set('Cache-Control', 'no-store')
  return issued
}

function loginRequired (ctx: Ctx, message: string, scope?: string): UnauthorizedError {
  // A client that has a token already (an anonymous one) is told the token does not reach, so it logs in.
  const challenge = bearerChallenge(ctx, scope) + (ctx.state.credentialed === true && scope !== undefined ? ',error="insufficient_scope"' : '')
  return new UnauthorizedError(message, undefined, { 'www-authenticate': challenge, 'docker-distribution-api-version': API_VERSION })
}

/**
 * Whether the caller may pull the repository: an anonymous caller outside the
 * allowed networks, or one the rules do not let in, is asked to log in (401);
 * a user the rules do not let in is refused (403). Each refusal is logged and counted.
 * A passthrough upstream's repository is the upstream's to grant, asked with the
 * caller's own login (or none); the route then carries the caller for the services.
 */
async function authorize (ctx: Ctx, options: AppOptions, r: Route, asked: string, probe: () => Probe): Promise<Route> {
  const auth = options.auth
  if (auth === undefined) return r
  const repository = r.repository
  const user = ctx.state.user
  const login = ctx.state.login
  const address = clientOf(ctx)
  if (user === undefined && login === undefined && !auth.authenticator.anonymousAllowed(address)) {
    options.authEvents?.accessDenied('anonymous-network')
    options.log.info({ address, repository }, 'anonymous pull refused: not from an allowed network')
    throw loginRequired(ctx, 'log in: anonymous access is not allowed from this network', `repository:${asked}:pull`)
  }
  const gate = auth.passthrough
  if (gate?.covers(r.upstream) === true) {
    const caller: PassthroughCaller = { login }
    try {
      await gate.check(r.upstream, r.name, caller, probe())
    } catch (err) {
      if (!(err instanceof DeniedError)) throw err
      options.authEvents?.accessDenied('upstream-denied')
      options.log.info({ user, upstreamUser: login?.username, address, repository }, 'pull denied by the passthrough upstream')
      // Without a login of its own the caller is asked for one; with one, it is refused.
      if (login === undefined) throw loginRequired(ctx, err.message, `repository:${asked}:pull`)
      throw err
    }
    return { ...r, caller }
  }
  if (login !== undefined) {
    // A login for the passthrough upstream is not one of the mirror's users: anonymous here.
    if (auth.rules.mayPull(undefined, repository)) return r
    options.authEvents?.accessDenied('not-allowed')
    throw new DeniedError(`${login.username} is a login for ${gate?.upstreams.join(', ') ?? 'another upstream'}, which does not reach ${repository}`, { repository })
  }
  if (auth.rules.mayPull(user, repository)) return r
  if (user === undefined) {
    options.authEvents?.accessDenied('login-required')
    options.log.info({ address, repository }, 'anonymous pull refused: the repository needs a login')
    throw loginRequired(ctx, `authentication required to pull ${repository}`, `repository:${asked}:pull`)
  }
  options.authEvents?.accessDenied('not-allowed')
  options.log.warn({ user, address, repository }, 'pull denied by the access rules')
  throw new DeniedError(`${user} may not pull ${repository}`, { repository })
}

function errors (log: Logger) {
  return async (ctx: Ctx, next: Next): Promise<void> => {
    try {
      await next()
    } catch (err) {
      if (!(err instanceof RegistryError)) {
        log.error({ err, method: ctx.method, path: ctx.path }, 'unexpected error')
      }
      sendError(ctx, err)
    }
  }
}

function requestLog (options: AppOptions) {
  return async (ctx: Ctx, next: Next): Promise<void> => {
    const started = process.hrtime.bigint()
    // A client may close the connection the moment it has every byte, before the response
    // counts as finished; so body bytes are counted as they are handed to the socket.
    let bodyBytes = 0
    const count = (chunk: unknown): void => {
      if (ctx.method === 'HEAD') return
      if (typeof chunk === 'string') bodyBytes += Buffer.byteLength(chunk)
      else if (chunk instanceof Uint8Array) bodyBytes += chunk.byteLength
    }
    const res = ctx.res
    const write = res.write
    const end = res.end
    res.write = function (this: typeof res, chunk: unknown, ...rest: unknown[]): boolean {
      count(chunk)
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest)
    } as typeof res.write
    res.end = function (this: typeof res, chunk?: unknown, ...rest: unknown[]): typeof res {
      if (typeof chunk !== 'function') count(chunk)
      return (end as (...args: unknown[]) => typeof res).call(this, chunk, ...rest)
    } as typeof res.end
    ctx.res.once('close', () => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9
      const length = ctx.response.length
      const delivered = ctx.res.writableFinished || (typeof length === 'number' && (ctx.method === 'HEAD' || bodyBytes >= length))
      const status = delivered ? ctx.status : 499
      const outcome = status >= 400 || !delivered ? 'error' : ctx.state.cache
      options.log.info({
        method: ctx.method,
        path: loggedPath(ctx.path, ctx.querystring),
        client: ctx.state.client,
        status,
        bytes: bodyBytes,
        ms: Math.round(seconds * 1000),
        cache: ctx.state.cache,
        upstream: ctx.state.upstream,
        user: ctx.state.user,
        upstreamUser: ctx.state.login?.username
      }, 'request')
      options.events.requestFinished({
        method: ctx.method,
        kind: ctx.state.kind ?? 'other',
        status,
        outcome,
        seconds,
        bytes: bodyBytes,
        userAgent: ctx.req.headers['user-agent'],
        repository: ctx.state.repository,
        byTag: ctx.state.byTag,
        pull: ctx.state.pull === true && outcome !== 'error',
        api: ctx.path === '/v2' || ctx.path.startsWith('/v2/') || ctx.path.startsWith(TOKEN_PATH)
      })
    })
    await next()
  }
}

/** Query parameters of the distribution API; the value of any other may be a client's secret. */
const LOGGED_QUERY = new Set(['ns', 'n', 'last', 'artifactType'])

/** The path as logged: the query's own parameters kept, every other value redacted. */
export function loggedPath (path: string, query: string): string {
  if (query === '') return path
  const shown = new URLSearchParams()
  for (const [name, value] of new URLSearchParams(query)) shown.append(name, LOGGED_QUERY.has(name) ? value : '[redacted]')
  return `${path}?${shown.toString()}`
}

function distribution (options: AppOptions) {
  return async (ctx: Ctx): Promise<void> => {
    const path = ctx.path
    if (!path.startsWith('/v2/')) throw new NotFoundError('not found', { path })
    if (path.includes('%') || path.includes('//') || /\/\.{1,2}(\/|$)/.test(path)) {
      throw new NameInvalidError('invalid repository name', { path })
    }
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      throw new UnsupportedError('this registry is a read-only mirror', { method: ctx.method }, { allow: 'GET, HEAD' })
    }
    const m = PATH.exec(path)
    if (m === null) {
      if (/\/blobs\/uploads\/?/.test(path)) throw new UnsupportedError('this registry is a read-only mirror', { method: ctx.method }, { allow: 'GET, HEAD' })
      throw new NotFoundError('not found', { path })
    }
    const [, rawName = '', what = '', ref = ''] = m
    const ns = single(ctx.query.ns)
    const routed = route(options.routing, rawName, ns)
    ctx.state.upstream = routed.upstream
    const r = await authorize(ctx, options, routed, rawName, () => probeOf(what, ref, path))
    ctx.state.repository = r.repository
    ctx.set('Docker-Distribution-API-Version', API_VERSION)
    // The spec's "Registry Proxying": a registry that scopes a request by `ns` says so.
    if (ns !== undefined && ns === r.upstream) ctx.set('OCI-Namespace', ns)
    try {
      switch (what) {
        case 'manifests': return await manifest(ctx, options, r, ref)
        case 'blobs': return await blob(ctx, options, r, ref)
        case 'tags':
          if (ref !== 'list') throw new NotFoundError('not found', { path })
          return await tags(ctx, options, r, rawName)
        case 'referrers': return await referrers(ctx, options, r, ref)
      }
    } catch (err) {
      // Upstream refused the caller's own login after all: its yes is forgotten, and the next request asks again.
      if (r.caller !== undefined && err instanceof DeniedError) options.auth?.passthrough?.forget(r.caller, r.repository)
      throw err
    }
  }
}

/** What a passthrough upstream is asked, for a request; the reference is checked first, since it goes into the upstream's path. */
function probeOf (what: string, ref: string, path: string): Probe {
  switch (what) {
    case 'manifests': parseManifestReference(ref); return { kind: 'manifest', reference: ref }
    case 'blobs': return { kind: 'blob', digest: parseDigest(ref).digest }
    case 'referrers': return { kind: 'manifest', reference: parseDigest(ref).digest }
    default:
      if (ref !== 'list') throw new NotFoundError('not found', { path })
      return { kind: 'tags' }
  }
}

async function manifest (ctx: Ctx, options: AppOptions, r: Route, ref: string): Promise<void> {
  ctx.state.kind = 'manifest'
  const reference = parseManifestReference(ref)
  ctx.state.byTag = reference.kind === 'tag'
  const answer = await options.manifests.get(r, reference, ctx.get('accept') || undefined)
  ctx.state.cache = answer.outcome
  ctx.state.pull = ctx.method === 'GET' && !INDEX_TYPES.has(answer.mediaType)
  ctx.set(CACHE_HEADER, answer.outcome)
  for (const [k, v] of Object.entries(answer.headers)) ctx.set(k, v)
  ctx.body = answer.content
  ctx.type = answer.mediaType
  ctx.set('Docker-Content-Digest', answer.digest)
  ctx.set('ETag', `"${answer.digest}"`)
  ctx.length = answer.content.length
}

async function blob (ctx: Ctx, options: AppOptions, r: Route, ref: string): Promise<void> {
  ctx.state.kind = 'blob'
  const digest = parseDigest(ref).digest
  const method = ctx.method === 'HEAD' ? 'HEAD' : 'GET'
  const answer = await options.blobs.get(r, digest, { method, range: ctx.get('range') || undefined })
  ctx.state.cache = answer.outcome
  ctx.set(CACHE_HEADER, answer.outcome)
  for (const [k, v] of Object.entries(answer.headers)) ctx.set(k, v)
  if (answer.redirect !== undefined) {
    // As the reference registry does for a store that can redirect: the client follows, with its Range.
    ctx.status = 307
    ctx.set('Location', answer.redirect)
    ctx.set('Docker-Content-Digest', digest)
    return
  }
  ctx.status = answer.range !== undefined ? 206 : 200
  ctx.type = 'application/octet-stream'
  ctx.set('Docker-Content-Digest', digest)
  ctx.set('ETag', `"${digest}"`)
  ctx.set('Accept-Ranges', 'bytes')
  if (answer.range !== undefined) {
    ctx.set('Content-Range', `bytes ${answer.range.start}-${answer.range.end}/${answer.size ?? '*'}`)
    ctx.length = answer.range.end - answer.range.start + 1
  } else if (answer.size !== undefined) {
    ctx.length = answer.size
  }
  if (answer.body === undefined) return
  // The body goes out through sendBody rather than Koa's pipeline, so that read buffers
  // return to their pool once the socket has taken them and a slow client holds one of
  // them at most. A client that goes away stops reading; the download it may have started
  // goes on. A body that fails part way cuts the connection, so the client never takes it
  // for complete.
  ctx.respond = false
  try {
    await sendBody(ctx.res, answer.body, options.sent ?? noop)
  } catch (err) {
    options.log.debug({ err: err instanceof Error ? err.message : String(err), digest }, 'blob response ended early')
  }
}

function noop (): void {}

async function tags (ctx: Ctx, options: AppOptions, r: Route, rawName: string): Promise<void> {
  ctx.state.kind = 'tags'
  const page = parsePage(single(ctx.query.n), single(ctx.query.last))
  const list = await options.listings.tags(r, page)
  ctx.state.cache = list.outcome
  ctx.set(CACHE_HEADER, list.outcome)
  for (const [k, v] of Object.entries(list.headers)) ctx.set(k, v)
  if (list.next !== undefined) {
    const q = new URLSearchParams()
    if (page.n !== undefined) q.set('n', String(page.n))
    q.set('last', list.next)
    const ns = single(ctx.query.ns)
    if (ns !== undefined) q.set('ns', ns)
    ctx.set('Link', `</v2/${rawName}/tags/list?${q.toString()}>; rel="next"`)
  }
  ctx.body = { name: rawName, tags: list.tags }
}

async function referrers (ctx: Ctx, options: AppOptions, r: Route, ref: string): Promise<void> {
  ctx.state.kind = 'referrers'
  const digest = parseDigest(ref).digest
  const artifactType = single(ctx.query.artifactType)
  const answer = await options.listings.referrers(r, digest, artifactType)
  ctx.state.cache = answer.outcome
  ctx.set(CACHE_HEADER, answer.outcome)
  ctx.body = answer.content
  ctx.type = MediaTypes.ociIndex
  if (answer.filtered) ctx.set('OCI-Filters-Applied', 'artifactType')
}

function single (v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}
