// An upstream for the mirror's tests: a real node:http server speaking the pull
// side of the OCI distribution API (and Docker's token auth), which can be made
// to misbehave on cue in ways the reference registry cannot: corrupt or cut
// bodies, stalls, slow or gated downloads, 5xx/429 answers, rate limits,
// redirects to a second "CDN" host, and going down and up on the same port.
// Every request that reaches it is logged, so tests assert on what the mirror
// actually asked upstream.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type Server,
  type ServerResponse
} from 'node:http'
import type { AddressInfo, Socket } from 'node:net'

export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json'

const SERVICE = 'fake-registry'
const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' }
const DIGEST_RE = /^sha256:[a-f0-9]{64}$/
const NAME_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/
const RATE_LIMIT_WINDOW = 'w=21600'

// ---------------------------------------------------------------- public types

export interface RecordedRequest {
  readonly method: string
  /** Path with query string, as the client sent it. */
  readonly path: string
  readonly headers: IncomingHttpHeaders
  /** Status of the answer once it was sent; undefined while pending or if the socket died first. */
  status: number | undefined
}

export interface AuthOptions {
  /**
   * Where the Bearer challenge sends clients for a token: this server's own
   * `/token` ('same', the default) or a separate token server, as Docker Hub
   * sends clients to auth.docker.io. Credentials of a separate token server
   * are set on that server.
   */
  realmHost?: 'same' | FakeTokenServer
  /** When both are set, `/token` demands them as Basic credentials. Only with realmHost 'same'. */
  username?: string
  password?: string
}

export interface RateLimit {
  /** Manifest GETs left; decremented by each one. At 0 manifest GETs get 429. */
  remaining: number
  limit: number
}

/** Everything here may be changed while the server runs; the next request sees it. */
export interface FakeRegistryBehaviour {
  /** Docker token auth on every /v2 request; undefined = anonymous access. */
  auth: AuthOptions | undefined
  /** Lifetime of tokens issued by this server's own `/token`. */
  tokenTtlSeconds: number
  /** Blob GETs answer 307 to the CDN server (HEADs are still answered here). */
  redirectBlobs: boolean
  /** Docker Hub style pull limit on manifest GETs. */
  rateLimit: RateLimit | undefined
  /**
   * Answer a manifest only if the request's Accept lists its media type (or
   * a wildcard), as the reference registry does for OCI types; a missing
   * Accept header lists nothing. Otherwise 404 MANIFEST_UNKNOWN.
   */
  strictAccept: boolean
  /** When false, /v2/<name>/referrers/<digest> is a plain 404, like a registry without the API. */
  referrersApi: boolean
  /** Delay before answering any request (registry, token endpoint and CDN). */
  latencyMs: number
  /**
   * Tag lists name every tag, the last tagged first, whatever n and last ask:
   * as distribution 2.8 answers, which neither sorts nor pages them (the spec
   * wants both).
   */
  unsortedTags: boolean
}

export type FakeRegistryOptions = Partial<FakeRegistryBehaviour>

export type Fault =
  /** Full Content-Length, one byte (the middle one) flipped. */
  | { kind: 'corrupt', times?: number }
  /** Full Content-Length in the headers, `after` bytes of body, then the socket is destroyed. */
  | { kind: 'truncate', after: number, times?: number }
  /** `after` bytes of body, then nothing more; the socket stays open until stop() or close(). */
  | { kind: 'stall', after: number, times?: number }
  /** An error answer with the OCI envelope (code chosen from the status) and extra headers. */
  | { kind: 'status', status: number, headers?: Record<string, string>, times?: number }
  /** No answer: the connection is closed at once, as by a server dropping an idle keep-alive connection. */
  | { kind: 'reset', times?: number }
  /** `bytesPerChunk` bytes every `intervalMs`, the first chunk at once. */
  | { kind: 'slow', bytesPerChunk: number, intervalMs: number, times?: number }
  /** `after` bytes (default half the body), then the rest waits for the gate's release(). */
  | GateFault

export interface GateFault { kind: 'gate', after?: number, times?: number }

export interface Gate {
  /**
   * Resolves once a response has handed its first part to the socket and is
   * held at this gate; the client may not have read those bytes yet.
   */
  readonly reached: Promise<void>
  /** Responses currently held. */
  readonly waiting: number
  readonly released: boolean
  /** Lets every held response finish; later responses pass straight through. */
  release (): void
}

// ---------------------------------------------------------------- small parts

export function sha256 (bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

class RequestLog {
  readonly entries: RecordedRequest[] = []

  record (req: IncomingMessage, res: ServerResponse): RecordedRequest {
    const entry: RecordedRequest = { method: req.method ?? 'GET', path: req.url ?? '/', headers: { ...req.headers }, status: undefined }
    this.entries.push(entry)
    res.once('close', () => { entry.status = res.headersSent ? res.statusCode : undefined })
    return entry
  }

  count (method: string, pathSubstring: string): number {
    const wanted = method.toUpperCase()
    return this.entries.filter(e => (wanted === '*' || e.method === wanted) && e.path.includes(pathSubstring)).length
  }

  clear (): void {
    this.entries.length = 0
  }
}

/** A node:http server that can stop listening and start again on the same port. */
class Listener {
  readonly #handler: (req: IncomingMessage, res: ServerResponse) => void
  readonly #sockets = new Set<Socket>()
  #server: Server | undefined
  #port = 0

  constructor (handler: (req: IncomingMessage, res: ServerResponse) => void) {
    this.#handler = handler
  }

  get port (): number { return this.#port }
  get listening (): boolean { return this.#server !== undefined }

  async listen (): Promise<void> {
    if (this.#server !== undefined) return
    // A fresh Server each time: a closed http.Server is not meant to be reused.
    const server = createServer(this.#handler)
    server.on('connection', socket => {
      this.#sockets.add(socket)
      socket.once('close', () => this.#sockets.delete(socket))
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.#port, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    this.#port = (server.address() as AddressInfo).port
    this.#server = server
  }

  async stop (): Promise<void> {
    const server = this.#server
    if (server === undefined) return
    this.#server = undefined
    const closed = new Promise<void>(resolve => server.close(() => resolve()))
    for (const socket of this.#sockets) socket.destroy()
    await closed
  }
}

function sendJson (req: IncomingMessage, res: ServerResponse, status: number, body: unknown, headers: OutgoingHttpHeaders = {}): void {
  const bytes = Buffer.from(JSON.stringify(body))
  res.writeHead(status, { ...headers, 'content-type': 'application/json; charset=utf-8', 'content-length': bytes.length })
  res.end(req.method === 'HEAD' ? undefined : bytes)
}

function sendError (req: IncomingMessage, res: ServerResponse, status: number, code: string, message: string, detail: unknown = null, headers: OutgoingHttpHeaders = {}): void {
  sendJson(req, res, status, { errors: [{ code, message, detail }] }, headers)
}

function sendNotFound (res: ServerResponse): void {
  res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', 'content-length': 19 })
  res.end('404 page not found\n')
}

function codeForStatus (status: number): string {
  switch (status) {
    case 401: return 'UNAUTHORIZED'
    case 403: return 'DENIED'
    case 429: return 'TOOMANYREQUESTS'
    case 503: return 'UNAVAILABLE'
    default: return 'UNKNOWN'
  }
}

function parseRange (header: string | undefined, size: number): { start: number, end: number } | 'unsatisfiable' | undefined {
  if (header === undefined) return undefined
  // One range only; anything else (several ranges, other units) is ignored and the whole body sent, as RFC 9110 allows.
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (match === null) return undefined
  const first = match[1] ?? ''
  const last = match[2] ?? ''
  if (first === '' && last === '') return undefined
  if (first === '') {
    const suffix = Number(last)
    if (suffix === 0 || size === 0) return 'unsatisfiable'
    return { start: Math.max(0, size - suffix), end: size - 1 }
  }
  const start = Number(first)
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1)
  if (start >= size || end < start) return 'unsatisfiable'
  return { start, end }
}

function acceptedTypes (header: string | undefined): string[] {
  if (header === undefined) return []
  return header.split(',').map(part => (part.split(';')[0] ?? '').trim().toLowerCase()).filter(type => type !== '')
}

function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function parseJson (bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'))
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------- faults

class GateImpl implements Gate {
  readonly reached: Promise<void>
  readonly #waiters = new Set<() => void>()
  #reach: () => void = () => {}
  #released = false

  constructor () {
    this.reached = new Promise(resolve => { this.#reach = resolve })
  }

  get waiting (): number { return this.#waiters.size }
  get released (): boolean { return this.#released }

  release (): void {
    this.#released = true
    const waiters = [...this.#waiters]
    this.#waiters.clear()
    for (const go of waiters) go()
  }

  /** Calls go() once released; returns a function that forgets the waiter. */
  hold (go: () => void): () => void {
    if (this.#released) {
      go()
      return () => {}
    }
    this.#waiters.add(go)
    this.#reach()
    return () => { this.#waiters.delete(go) }
  }
}

interface ActiveFault {
  readonly fault: Fault
  readonly gate: GateImpl | undefined
  /** Applications left; undefined = until cleared. */
  remaining: number | undefined
}

type FaultKind = Fault['kind']
const BODY_KINDS: readonly FaultKind[] = ['corrupt', 'truncate', 'stall', 'slow', 'gate']
/** Faults answered before a body is chosen. */
const ANSWER_KINDS: readonly FaultKind[] = ['status', 'reset']
const ALL_KINDS: readonly FaultKind[] = [...ANSWER_KINDS, ...BODY_KINDS]

class FaultTable {
  readonly #faults = new Map<string, ActiveFault>()

  set (key: string, fault: Fault): GateImpl | undefined {
    this.#releaseGate(this.#faults.get(key))
    const gate = fault.kind === 'gate' ? new GateImpl() : undefined
    this.#faults.set(key, { fault, gate, remaining: fault.times })
    return gate
  }

  delete (key: string): void {
    this.#releaseGate(this.#faults.get(key))
    this.#faults.delete(key)
  }

  clear (): void {
    for (const active of this.#faults.values()) this.#releaseGate(active)
    this.#faults.clear()
  }

  /** The first of `keys` holding a fault of one of `kinds`, counted as applied once. */
  take (keys: readonly string[], kinds: readonly FaultKind[]): ActiveFault | undefined {
    for (const key of keys) {
      const active = this.#faults.get(key)
      if (active === undefined || !kinds.includes(active.fault.kind)) continue
      if (active.remaining !== undefined) {
        active.remaining -= 1
        // A gate that has run out of uses still lets its held responses go on release().
        if (active.remaining <= 0) this.#faults.delete(key)
      }
      return active
    }
    return undefined
  }

  #releaseGate (active: ActiveFault | undefined): void {
    // Nothing may hang once its fault is gone.
    active?.gate?.release()
  }
}

/** Writes `chunk`, then calls `then` once it has been handed to the socket. */
function writeThen (res: ServerResponse, chunk: Buffer, then: () => void): void {
  if (chunk.length > 0) {
    res.write(chunk, () => then())
    return
  }
  res.flushHeaders()
  // flushHeaders writes on a corked socket that uncorks on the next tick.
  setImmediate(then)
}

/** Sends `bytes` as the body, bent by `active` when given. HEAD gets the headers only. */
function sendBytes (req: IncomingMessage, res: ServerResponse, status: number, headers: OutgoingHttpHeaders, bytes: Buffer, active: ActiveFault | undefined): void {
  res.writeHead(status, { ...headers, 'content-length': bytes.length })
  if (req.method === 'HEAD') {
    res.end()
    return
  }
  if (active === undefined) {
    res.end(bytes)
    return
  }
  const fault = active.fault
  switch (fault.kind) {
    case 'status':
    case 'reset':
      // These are answered before a body is chosen; reaching here is a bug in the fake.
      res.destroy(new Error(`${fault.kind} fault reached the body writer`))
      return
    case 'corrupt': {
      const bad = Buffer.from(bytes)
      if (bad.length > 0) {
        const at = Math.floor(bad.length / 2)
        bad[at] = (bad[at] ?? 0) ^ 0xff
      }
      res.end(bad)
      return
    }
    case 'truncate':
      writeThen(res, bytes.subarray(0, Math.min(fault.after, bytes.length)), () => res.socket?.destroy())
      return
    case 'stall':
      writeThen(res, bytes.subarray(0, Math.min(fault.after, bytes.length)), () => {})
      return
    case 'slow': {
      const step = Math.max(1, fault.bytesPerChunk)
      let offset = 0
      const tick = (): void => {
        if (res.destroyed || res.writableEnded) return
        const end = Math.min(offset + step, bytes.length)
        const chunk = bytes.subarray(offset, end)
        offset = end
        if (offset >= bytes.length) {
          clearInterval(timer)
          res.end(chunk)
        } else {
          res.write(chunk)
        }
      }
      const timer = setInterval(tick, fault.intervalMs)
      res.once('close', () => clearInterval(timer))
      tick()
      return
    }
    case 'gate': {
      const gate = active.gate
      const after = Math.min(fault.after ?? Math.floor(bytes.length / 2), bytes.length)
      writeThen(res, bytes.subarray(0, after), () => {
        if (res.destroyed || gate === undefined) return
        const forget = gate.hold(() => { if (!res.destroyed) res.end(bytes.subarray(after)) })
        res.once('close', forget)
      })
    }
  }
}

// ---------------------------------------------------------------- tokens

type Verdict = 'ok' | 'missing' | 'invalid_token' | 'insufficient_scope'

interface IssuerSettings {
  readonly service: string
  readonly username: string | undefined
  readonly password: string | undefined
  readonly ttlSeconds: number
}

/** Docker's token service: GET /token?service=..&scope=.. → an opaque Bearer token bound to its scopes. */
class TokenIssuer {
  /** Requests that reached the token endpoint, granted or not. */
  requests = 0
  readonly #settings: () => IssuerSettings
  readonly #tokens = new Map<string, { readonly scopes: ReadonlySet<string>, expiresAt: number }>()

  constructor (settings: () => IssuerSettings) {
    this.#settings = settings
  }

  get service (): string { return this.#settings().service }

  handle (req: IncomingMessage, res: ServerResponse, url: URL): void {
    this.requests += 1
    const { service, username, password, ttlSeconds } = this.#settings()
    if (req.method !== 'GET') {
      sendError(req, res, 405, 'UNSUPPORTED', 'the token endpoint answers GET only', null, { allow: 'GET' })
      return
    }
    if (username !== undefined && password !== undefined && !this.#credentialsMatch(req.headers.authorization, username, password)) {
      sendError(req, res, 401, 'UNAUTHORIZED', 'incorrect username or password', null, { 'www-authenticate': `Basic realm="${service}"` })
      return
    }
    const asked = url.searchParams.get('service')
    if (asked !== service) {
      sendError(req, res, 400, 'DENIED', `unknown service ${JSON.stringify(asked)}, expected ${JSON.stringify(service)}`)
      return
    }
    const scopes = new Set<string>()
    // Clients send several `scope` parameters, or (OAuth style) several scopes in one separated by spaces.
    for (const param of url.searchParams.getAll('scope')) {
      for (const scope of param.split(' ')) {
        const granted = grantPull(scope)
        if (granted !== undefined) scopes.add(granted)
      }
    }
    const token = `fake.${randomBytes(24).toString('base64url')}`
    const issuedAt = Date.now()
    this.#tokens.set(token, { scopes, expiresAt: issuedAt + ttlSeconds * 1000 })
    sendJson(req, res, 200, { token, access_token: token, expires_in: ttlSeconds, issued_at: new Date(issuedAt).toISOString() })
  }

  verify (authorization: string | undefined, scope: string | undefined): Verdict {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? '')
    if (match === null) return 'missing'
    const issued = this.#tokens.get(match[1] ?? '')
    if (issued === undefined || issued.expiresAt <= Date.now()) return 'invalid_token'
    if (scope !== undefined && !issued.scopes.has(scope)) return 'insufficient_scope'
    return 'ok'
  }

  expireAll (): void {
    for (const issued of this.#tokens.values()) issued.expiresAt = 0
  }

  #credentialsMatch (header: string | undefined, username: string, password: string): boolean {
    const match = /^Basic\s+(\S+)$/i.exec(header ?? '')
    if (match === null) return false
    const given = Buffer.from(match[1] ?? '', 'base64')
    const expected = Buffer.from(`${username}:${password}`)
    return given.length === expected.length && timingSafeEqual(given, expected)
  }
}

/** `repository:<name>:<actions>` → `repository:<name>:pull` when pull (or *) is among the actions. */
function grantPull (scope: string): string | undefined {
  const parts = scope.split(':')
  if (parts.length < 3 || parts[0] !== 'repository') return undefined
  const actions = (parts[parts.length - 1] ?? '').split(',')
  const name = parts.slice(1, -1).join(':')
  return actions.includes('pull') || actions.includes('*') ? `repository:${name}:pull` : undefined
}

export interface FakeTokenServerOptions {
  username?: string
  password?: string
  tokenTtlSeconds?: number
  /** The `service` the registry names in its challenge and the token server insists on. */
  service?: string
  latencyMs?: number
}

/** A token server on its own port, standing in for auth.docker.io. */
export class FakeTokenServer {
  readonly settings: { username: string | undefined, password: string | undefined, tokenTtlSeconds: number, service: string, latencyMs: number }
  readonly #listener: Listener
  readonly #log = new RequestLog()
  readonly #issuer: TokenIssuer
  #closing: Promise<void> | undefined

  /** Use startFakeTokenServer(). */
  constructor (options: FakeTokenServerOptions) {
    this.settings = {
      username: options.username,
      password: options.password,
      tokenTtlSeconds: options.tokenTtlSeconds ?? 300,
      service: options.service ?? SERVICE,
      latencyMs: options.latencyMs ?? 0
    }
    this.#issuer = new TokenIssuer(() => ({
      service: this.settings.service,
      username: this.settings.username,
      password: this.settings.password,
      ttlSeconds: this.settings.tokenTtlSeconds
    }))
    this.#listener = new Listener((req, res) => { void this.#handle(req, res) })
  }

  get url (): string { return `http://${this.host}` }
  get host (): string { return `127.0.0.1:${this.#listener.port}` }
  get service (): string { return this.settings.service }
  get requests (): RecordedRequest[] { return this.#log.entries }
  get tokenRequests (): number { return this.#issuer.requests }
  count (method: string, pathSubstring: string): number { return this.#log.count(method, pathSubstring) }
  reset (): void {
    this.#log.clear()
    this.#issuer.requests = 0
  }

  /** Every token issued so far stops being valid now. */
  expireTokens (): void { this.#issuer.expireAll() }
  /** Used by a FakeRegistry whose realm is this server. */
  verify (authorization: string | undefined, scope: string | undefined): Verdict { return this.#issuer.verify(authorization, scope) }

  async start (): Promise<void> {
    if (this.#closing !== undefined) throw new Error('FakeTokenServer: start() after close()')
    await this.#listener.listen()
  }

  async close (): Promise<void> {
    this.#closing ??= this.#listener.stop()
    await this.#closing
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    req.resume()
    this.#log.record(req, res)
    if (this.settings.latencyMs > 0) await sleep(this.settings.latencyMs)
    const url = new URL(req.url ?? '/', 'http://fake')
    if (url.pathname === '/token') this.#issuer.handle(req, res, url)
    else sendNotFound(res)
  }
}

export async function startFakeTokenServer (options: FakeTokenServerOptions = {}): Promise<FakeTokenServer> {
  const server = new FakeTokenServer(options)
  await server.start()
  return server
}

// ---------------------------------------------------------------- the registry

interface StoredManifest {
  readonly bytes: Buffer
  readonly mediaType: string
}

interface Repository {
  readonly blobs: Set<string>
  readonly manifests: Map<string, StoredManifest>
  readonly tags: Map<string, string>
}

export class FakeRegistry {
  /** Change any of these at any time. */
  readonly behaviour: FakeRegistryBehaviour
  readonly #registry: Listener
  readonly #cdn: Listener
  readonly #log = new RequestLog()
  readonly #cdnLog = new RequestLog()
  readonly #issuer: TokenIssuer
  readonly #blobs = new Map<string, Buffer>()
  readonly #repos = new Map<string, Repository>()
  readonly #blobFaults = new FaultTable()
  readonly #manifestFaults = new FaultTable()
  #closing: Promise<void> | undefined

  /** Use startFakeRegistry(). */
  constructor (options: FakeRegistryOptions) {
    this.behaviour = {
      auth: options.auth,
      tokenTtlSeconds: options.tokenTtlSeconds ?? 300,
      redirectBlobs: options.redirectBlobs ?? false,
      rateLimit: options.rateLimit,
      strictAccept: options.strictAccept ?? false,
      referrersApi: options.referrersApi ?? true,
      latencyMs: options.latencyMs ?? 0,
      unsortedTags: options.unsortedTags ?? false
    }
    this.#issuer = new TokenIssuer(() => ({
      service: SERVICE,
      username: this.behaviour.auth?.username,
      password: this.behaviour.auth?.password,
      ttlSeconds: this.behaviour.tokenTtlSeconds
    }))
    this.#registry = new Listener((req, res) => { this.#guard(req, res, this.#handle(req, res)) })
    this.#cdn = new Listener((req, res) => { this.#guard(req, res, this.#handleCdn(req, res)) })
  }

  get url (): string { return `http://${this.host}` }
  get host (): string { return `127.0.0.1:${this.#registry.port}` }
  /** Base URL of the second server that redirected blob GETs land on. */
  get cdnUrl (): string { return `http://127.0.0.1:${this.#cdn.port}` }
  get running (): boolean { return this.#registry.listening }

  // ------------------------------------------------------------ request log

  /** Every request to the registry (its /token included), in arrival order. */
  get requests (): RecordedRequest[] { return this.#log.entries }
  /** Every request to the CDN server, headers included, to check no credentials went there. */
  get cdnRequests (): RecordedRequest[] { return this.#cdnLog.entries }
  /** Requests that reached the token endpoint in use (this server's or the separate token server's). */
  get tokenRequests (): number {
    const realm = this.behaviour.auth?.realmHost
    return realm instanceof FakeTokenServer ? realm.tokenRequests : this.#issuer.requests
  }

  /** Registry requests with this method ('*' for any) whose path (with query) contains `pathSubstring`. */
  count (method: string, pathSubstring: string): number { return this.#log.count(method, pathSubstring) }
  /** Registry requests of any method whose path contains `pathSubstring`. */
  hits (pathSubstring: string): number { return this.#log.count('*', pathSubstring) }
  /** The latest registry request matching, e.g. to read the Accept header the client sent. */
  lastRequest (method: string, pathSubstring: string): RecordedRequest | undefined {
    const wanted = method.toUpperCase()
    return this.#log.entries.findLast(e => (wanted === '*' || e.method === wanted) && e.path.includes(pathSubstring))
  }

  /** Clears the request logs (registry and CDN) and the token request count; content and behaviour stay. */
  reset (): void {
    this.#log.clear()
    this.#cdnLog.clear()
    this.#issuer.requests = 0
  }

  // ------------------------------------------------------------ content

  addBlob (repo: string, bytes: Buffer): string {
    const digest = sha256(bytes)
    this.#blobs.set(digest, Buffer.from(bytes))
    this.#repo(repo).blobs.add(digest)
    return digest
  }

  /** Stores the bytes as given (objects are JSON.stringify'd once) and serves them byte-exact. */
  addManifest (repo: string, reference: string | undefined, body: Buffer | object, mediaType: string): string {
    const bytes = Buffer.isBuffer(body) ? Buffer.from(body) : Buffer.from(JSON.stringify(body))
    const digest = sha256(bytes)
    const repository = this.#repo(repo)
    repository.manifests.set(digest, { bytes, mediaType })
    if (reference !== undefined && reference !== digest) this.tag(repo, reference, digest)
    return digest
  }

  /** Points (or moves) a tag at a manifest already in the repository. */
  tag (repo: string, tag: string, digest: string): void {
    if (!TAG_RE.test(tag)) throw new Error(`FakeRegistry.tag: invalid tag ${JSON.stringify(tag)}`)
    const repository = this.#repo(repo)
    if (!repository.manifests.has(digest)) throw new Error(`FakeRegistry.tag: no manifest ${digest} in ${repo}`)
    repository.tags.set(tag, digest)
  }

  deleteTag (repo: string, tag: string): void {
    this.#repos.get(repo)?.tags.delete(tag)
  }

  deleteManifest (repo: string, digest: string): void {
    const repository = this.#repos.get(repo)
    if (repository === undefined) return
    repository.manifests.delete(digest)
    for (const [tag, target] of repository.tags) if (target === digest) repository.tags.delete(tag)
  }

  deleteBlob (repo: string, digest: string): void {
    this.#repos.get(repo)?.blobs.delete(digest)
  }

  // ------------------------------------------------------------ faults

  /** Bends every response carrying this blob's bytes (here, or at the CDN when redirecting). */
  setBlobFault (digest: string, fault: GateFault): Gate
  setBlobFault (digest: string, fault: Exclude<Fault, GateFault>): undefined
  setBlobFault (digest: string, fault: Fault): Gate | undefined
  setBlobFault (digest: string, fault: Fault): Gate | undefined {
    return this.#blobFaults.set(digest, validateFault(fault))
  }

  /** Headers and the first `after` bytes (default half) of the blob go out; the rest waits for release(). */
  gateBlob (digest: string, after?: number): Gate {
    return this.setBlobFault(digest, after === undefined ? { kind: 'gate' } : { kind: 'gate', after })
  }

  /**
   * `reference` is a tag or a digest. A fault on a digest also bends requests
   * by a tag that resolves to it; a fault on a tag only requests by that tag.
   */
  setManifestFault (repo: string, reference: string, fault: GateFault): Gate
  setManifestFault (repo: string, reference: string, fault: Exclude<Fault, GateFault>): undefined
  setManifestFault (repo: string, reference: string, fault: Fault): Gate | undefined
  setManifestFault (repo: string, reference: string, fault: Fault): Gate | undefined {
    return this.#manifestFaults.set(`${repo}@${reference}`, validateFault(fault))
  }

  gateManifest (repo: string, reference: string, after?: number): Gate {
    return this.setManifestFault(repo, reference, after === undefined ? { kind: 'gate' } : { kind: 'gate', after })
  }

  clearBlobFault (digest: string): void { this.#blobFaults.delete(digest) }
  clearManifestFault (repo: string, reference: string): void { this.#manifestFaults.delete(`${repo}@${reference}`) }

  /** Removes every fault and releases every gate. */
  clearFaults (): void {
    this.#blobFaults.clear()
    this.#manifestFaults.clear()
  }

  // ------------------------------------------------------------ tokens

  /** Every token this server issued stops being valid now (a separate token server has its own). */
  expireTokens (): void {
    this.#issuer.expireAll()
  }

  // ------------------------------------------------------------ lifecycle

  /** Listens (again) on the same ports as before; the first start picks free ones. */
  async start (): Promise<void> {
    if (this.#closing !== undefined) throw new Error('FakeRegistry: start() after close()')
    await this.#registry.listen()
    await this.#cdn.listen()
  }

  /** Stops listening and destroys every open connection (the upstream is down); start() brings it back. */
  async stop (): Promise<void> {
    await Promise.all([this.#registry.stop(), this.#cdn.stop()])
  }

  async close (): Promise<void> {
    if (this.#closing === undefined) {
      this.clearFaults()
      this.#closing = this.stop()
    }
    await this.#closing
  }

  // ------------------------------------------------------------ handlers

  #guard (req: IncomingMessage, res: ServerResponse, handling: Promise<void>): void {
    handling.catch((err: unknown) => {
      if (res.headersSent) {
        res.destroy()
        return
      }
      sendError(req, res, 500, 'UNKNOWN', `fake registry failed: ${err instanceof Error ? err.message : String(err)}`)
    })
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    req.resume()
    this.#log.record(req, res)
    if (this.behaviour.latencyMs > 0) await sleep(this.behaviour.latencyMs)
    const url = new URL(req.url ?? '/', 'http://fake')
    const path = url.pathname
    const auth = this.behaviour.auth

    if (path === '/token') {
      if (auth !== undefined && !(auth.realmHost instanceof FakeTokenServer)) this.#issuer.handle(req, res, url)
      else sendNotFound(res)
      return
    }
    if (path !== '/v2' && !path.startsWith('/v2/')) {
      sendNotFound(res)
      return
    }
    for (const [header, value] of Object.entries(API_VERSION_HEADER)) res.setHeader(header, value)

    const route = parseRoute(path)
    if (route === undefined) {
      sendNotFound(res)
      return
    }
    if (route.kind !== 'base' && !NAME_RE.test(route.name)) {
      sendError(req, res, 400, 'NAME_INVALID', 'invalid repository name', { name: route.name })
      return
    }
    if (!this.#authorized(req, res, route.kind === 'base' ? undefined : route.name)) return
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendError(req, res, 405, 'UNSUPPORTED', 'the fake registry serves pulls only', null, { allow: 'GET, HEAD' })
      return
    }

    switch (route.kind) {
      case 'base': sendJson(req, res, 200, {}); return
      case 'manifests': this.#manifest(req, res, route.name, route.reference); return
      case 'blobs': this.#blob(req, res, route.name, route.reference); return
      case 'tags': this.#tags(req, res, route.name, url); return
      case 'referrers': this.#referrers(req, res, route.name, route.reference, url)
    }
  }

  /** False when the request was answered with a 401 challenge. */
  #authorized (req: IncomingMessage, res: ServerResponse, name: string | undefined): boolean {
    const auth = this.behaviour.auth
    if (auth === undefined) return true
    const scope = name === undefined ? undefined : `repository:${name}:pull`
    const realm = auth.realmHost instanceof FakeTokenServer ? auth.realmHost : undefined
    const verdict = realm !== undefined ? realm.verify(req.headers.authorization, scope) : this.#issuer.verify(req.headers.authorization, scope)
    if (verdict === 'ok') return true
    const realmUrl = `${realm?.url ?? this.url}/token`
    const service = realm?.service ?? SERVICE
    let challenge = `Bearer realm="${realmUrl}",service="${service}"`
    if (scope !== undefined) challenge += `,scope="${scope}"`
    // As RFC 6750 and the reference registry: say why a token that was sent is not good enough.
    if (verdict !== 'missing') challenge += `,error="${verdict}"`
    const detail = name === undefined ? null : [{ Type: 'repository', Class: '', Name: name, Action: 'pull' }]
    sendError(req, res, 401, 'UNAUTHORIZED', 'authentication required', detail, { 'www-authenticate': challenge })
    return false
  }

  #manifest (req: IncomingMessage, res: ServerResponse, name: string, reference: string): void {
    const rateHeaders = this.#rateLimit(req)
    if (rateHeaders === 'limited') {
      const limit = this.behaviour.rateLimit?.limit ?? 0
      sendError(req, res, 429, 'TOOMANYREQUESTS', 'You have reached your pull rate limit.', null, {
        'ratelimit-limit': `${limit};${RATE_LIMIT_WINDOW}`,
        'ratelimit-remaining': `0;${RATE_LIMIT_WINDOW}`,
        'retry-after': '60'
      })
      return
    }
    const repository = this.#repos.get(name)
    const digest = reference.includes(':') ? reference : repository?.tags.get(reference)
    const stored = digest === undefined ? undefined : repository?.manifests.get(digest)
    const faultKeys = [`${name}@${reference}`]
    if (digest !== undefined && digest !== reference) faultKeys.push(`${name}@${digest}`)

    const statusFault = this.#manifestFaults.take(faultKeys, ANSWER_KINDS)
    if (statusFault !== undefined) {
      sendStatusFault(req, res, statusFault, rateHeaders)
      return
    }
    if (stored === undefined || digest === undefined) {
      sendError(req, res, 404, 'MANIFEST_UNKNOWN', 'manifest unknown', { name, reference }, rateHeaders)
      return
    }
    if (this.behaviour.strictAccept) {
      const accepted = acceptedTypes(req.headers.accept)
      if (!accepted.includes(stored.mediaType) && !accepted.includes('*/*')) {
        sendError(req, res, 404, 'MANIFEST_UNKNOWN', `manifest of type ${stored.mediaType} found, but the accept header does not list it`, { name, reference }, rateHeaders)
        return
      }
    }
    const bodyFault = req.method === 'HEAD' ? undefined : this.#manifestFaults.take(faultKeys, BODY_KINDS)
    sendBytes(req, res, 200, {
      ...rateHeaders,
      'content-type': stored.mediaType,
      'docker-content-digest': digest,
      etag: `"${digest}"`
    }, stored.bytes, bodyFault)
  }

  /** Rate-limit headers for this manifest request, or 'limited' when a GET must get 429. */
  #rateLimit (req: IncomingMessage): OutgoingHttpHeaders | 'limited' {
    const limit = this.behaviour.rateLimit
    if (limit === undefined) return {}
    // Like Docker Hub, HEAD requests are not counted against the limit.
    if (req.method === 'GET') {
      if (limit.remaining <= 0) return 'limited'
      limit.remaining -= 1
    }
    return {
      'ratelimit-limit': `${limit.limit};${RATE_LIMIT_WINDOW}`,
      'ratelimit-remaining': `${Math.max(0, limit.remaining)};${RATE_LIMIT_WINDOW}`
    }
  }

  #blob (req: IncomingMessage, res: ServerResponse, name: string, digest: string): void {
    if (!DIGEST_RE.test(digest)) {
      sendError(req, res, 400, 'DIGEST_INVALID', 'provided digest did not match uploaded content', { digest })
      return
    }
    const statusFault = this.#blobFaults.take([digest], ANSWER_KINDS)
    if (statusFault !== undefined) {
      sendStatusFault(req, res, statusFault)
      return
    }
    const bytes = this.#repos.get(name)?.blobs.has(digest) === true ? this.#blobs.get(digest) : undefined
    if (bytes === undefined) {
      sendError(req, res, 404, 'BLOB_UNKNOWN', 'blob unknown to registry', { digest })
      return
    }
    if (req.method === 'GET' && this.behaviour.redirectBlobs) {
      // Like a presigned object-store URL: another host, credentials in the query, none expected in headers.
      const location = `${this.cdnUrl}/cdn/${digest}?sig=${randomBytes(8).toString('hex')}`
      res.writeHead(307, { location, 'content-type': 'text/html; charset=utf-8', 'content-length': 0 })
      res.end()
      return
    }
    this.#serveBlobBytes(req, res, digest, bytes)
  }

  async #handleCdn (req: IncomingMessage, res: ServerResponse): Promise<void> {
    req.resume()
    this.#cdnLog.record(req, res)
    if (this.behaviour.latencyMs > 0) await sleep(this.behaviour.latencyMs)
    const url = new URL(req.url ?? '/', 'http://fake')
    const match = /^\/cdn\/(sha256:[a-f0-9]{64})$/.exec(url.pathname)
    const digest = match?.[1]
    const bytes = digest === undefined ? undefined : this.#blobs.get(digest)
    if (digest === undefined || bytes === undefined || (req.method !== 'GET' && req.method !== 'HEAD')) {
      sendNotFound(res)
      return
    }
    const statusFault = this.#blobFaults.take([digest], ANSWER_KINDS)
    if (statusFault !== undefined) {
      sendStatusFault(req, res, statusFault)
      return
    }
    this.#serveBlobBytes(req, res, digest, bytes)
  }

  #serveBlobBytes (req: IncomingMessage, res: ServerResponse, digest: string, bytes: Buffer): void {
    const headers: OutgoingHttpHeaders = {
      'content-type': 'application/octet-stream',
      'docker-content-digest': digest,
      'accept-ranges': 'bytes',
      etag: `"${digest}"`,
      'cache-control': 'max-age=31536000'
    }
    const range = parseRange(req.headers.range, bytes.length)
    if (range === 'unsatisfiable') {
      sendError(req, res, 416, 'RANGE_INVALID', 'requested range not satisfiable', { range: req.headers.range }, { 'content-range': `bytes */${bytes.length}` })
      return
    }
    const fault = req.method === 'HEAD' ? undefined : this.#blobFaults.take([digest], BODY_KINDS)
    if (range === undefined) {
      sendBytes(req, res, 200, headers, bytes, fault)
      return
    }
    headers['content-range'] = `bytes ${range.start}-${range.end}/${bytes.length}`
    sendBytes(req, res, 206, headers, bytes.subarray(range.start, range.end + 1), fault)
  }

  #tags (req: IncomingMessage, res: ServerResponse, name: string, url: URL): void {
    const repository = this.#repos.get(name)
    if (repository === undefined) {
      sendError(req, res, 404, 'NAME_UNKNOWN', 'repository name not known to registry', { name })
      return
    }
    if (this.behaviour.unsortedTags) {
      sendJson(req, res, 200, { name, tags: [...repository.tags.keys()].reverse() })
      return
    }
    let tags = [...repository.tags.keys()].sort()
    const last = url.searchParams.get('last')
    if (last !== null) tags = tags.filter(tag => tag > last)
    const nParam = url.searchParams.get('n')
    const headers: OutgoingHttpHeaders = {}
    if (nParam !== null) {
      if (!/^\d+$/.test(nParam)) {
        sendError(req, res, 400, 'PAGINATION_NUMBER_INVALID', 'invalid number of results requested', { n: nParam })
        return
      }
      const n = Number(nParam)
      if (tags.length > n) {
        tags = tags.slice(0, n)
        const lastTag = tags[tags.length - 1]
        // Relative, as the reference registry sends it: clients resolve it against the request URL.
        if (lastTag !== undefined) headers.link = `</v2/${name}/tags/list?n=${n}&last=${encodeURIComponent(lastTag)}>; rel="next"`
      }
    }
    sendJson(req, res, 200, { name, tags }, headers)
  }

  #referrers (req: IncomingMessage, res: ServerResponse, name: string, digest: string, url: URL): void {
    if (!this.behaviour.referrersApi) {
      sendNotFound(res)
      return
    }
    if (!DIGEST_RE.test(digest)) {
      sendError(req, res, 400, 'DIGEST_INVALID', 'invalid digest', { digest })
      return
    }
    const artifactTypeFilter = url.searchParams.get('artifactType')
    const manifests: Array<Record<string, unknown>> = []
    for (const [manifestDigest, stored] of this.#repos.get(name)?.manifests ?? []) {
      const parsed = parseJson(stored.bytes)
      if (!isRecord(parsed) || !isRecord(parsed.subject) || parsed.subject.digest !== digest) continue
      const config = isRecord(parsed.config) ? parsed.config : undefined
      const artifactType = typeof parsed.artifactType === 'string'
        ? parsed.artifactType
        : typeof config?.mediaType === 'string' ? config.mediaType : undefined
      if (artifactTypeFilter !== null && artifactType !== artifactTypeFilter) continue
      const descriptor: Record<string, unknown> = { mediaType: stored.mediaType, digest: manifestDigest, size: stored.bytes.length }
      if (artifactType !== undefined) descriptor.artifactType = artifactType
      if (isRecord(parsed.annotations)) descriptor.annotations = parsed.annotations
      manifests.push(descriptor)
    }
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }))
    const headers: OutgoingHttpHeaders = { 'content-type': OCI_INDEX }
    if (artifactTypeFilter !== null) headers['oci-filters-applied'] = 'artifactType'
    sendBytes(req, res, 200, headers, body, undefined)
  }

  #repo (name: string): Repository {
    if (!NAME_RE.test(name)) throw new Error(`FakeRegistry: invalid repository name ${JSON.stringify(name)}`)
    let repository = this.#repos.get(name)
    if (repository === undefined) {
      repository = { blobs: new Set(), manifests: new Map(), tags: new Map() }
      this.#repos.set(name, repository)
    }
    return repository
  }
}

type Route =
  | { kind: 'base' }
  | { kind: 'manifests' | 'blobs' | 'referrers', name: string, reference: string }
  | { kind: 'tags', name: string }

function parseRoute (path: string): Route | undefined {
  if (path === '/v2' || path === '/v2/') return { kind: 'base' }
  // Greedy: a name may itself contain "/blobs/" and the like; the last one is the endpoint.
  const tags = /^\/v2\/(.+)\/tags\/list$/.exec(path)
  if (tags?.[1] !== undefined) return { kind: 'tags', name: tags[1] }
  const match = /^\/v2\/(.+)\/(manifests|blobs|referrers)\/([^/]+)$/.exec(path)
  const name = match?.[1]
  const kind = match?.[2]
  const reference = match?.[3]
  if (name === undefined || reference === undefined) return undefined
  if (kind === 'manifests' || kind === 'blobs' || kind === 'referrers') return { kind, name, reference: decodeURIComponent(reference) }
  return undefined
}

function sendStatusFault (req: IncomingMessage, res: ServerResponse, active: ActiveFault, headers: OutgoingHttpHeaders = {}): void {
  const fault = active.fault
  if (fault.kind === 'reset') {
    req.socket.destroy()
    return
  }
  if (fault.kind !== 'status') return
  sendError(req, res, fault.status, codeForStatus(fault.status), `injected fault: status ${fault.status}`, null, { ...headers, ...fault.headers })
}

function validateFault (fault: Fault): Fault {
  const problems: string[] = []
  const nonNegativeInteger = (value: number | undefined, what: string): void => {
    if (value !== undefined && (!Number.isInteger(value) || value < 0)) problems.push(`${what} must be a non-negative integer, got ${String(value)}`)
  }
  if (!ALL_KINDS.includes(fault.kind)) problems.push(`unknown fault kind ${JSON.stringify(fault.kind)}`)
  if (fault.times !== undefined && (!Number.isInteger(fault.times) || fault.times < 1)) problems.push(`fault.times must be a positive integer, got ${String(fault.times)}`)
  switch (fault.kind) {
    case 'truncate':
    case 'stall':
    case 'gate':
      nonNegativeInteger(fault.after, 'fault.after')
      break
    case 'slow':
      if (!Number.isInteger(fault.bytesPerChunk) || fault.bytesPerChunk < 1) problems.push(`fault.bytesPerChunk must be a positive integer, got ${String(fault.bytesPerChunk)}`)
      nonNegativeInteger(fault.intervalMs, 'fault.intervalMs')
      break
    case 'status':
      if (!Number.isInteger(fault.status) || fault.status < 400 || fault.status > 599) problems.push(`fault.status must be an HTTP error status, got ${String(fault.status)}`)
      break
  }
  if (problems.length > 0) throw new Error(`FakeRegistry: ${problems.join('; ')}`)
  return fault
}

function validateOptions (options: FakeRegistryOptions): void {
  const problems: string[] = []
  if (options.tokenTtlSeconds !== undefined && (!Number.isInteger(options.tokenTtlSeconds) || options.tokenTtlSeconds < 1)) {
    problems.push(`options.tokenTtlSeconds must be a positive integer, got ${String(options.tokenTtlSeconds)}`)
  }
  if (options.latencyMs !== undefined && (!Number.isInteger(options.latencyMs) || options.latencyMs < 0)) {
    problems.push(`options.latencyMs must be a non-negative integer, got ${String(options.latencyMs)}`)
  }
  const rate = options.rateLimit
  if (rate !== undefined) {
    if (!Number.isInteger(rate.limit) || rate.limit < 0) problems.push(`options.rateLimit.limit must be a non-negative integer, got ${String(rate.limit)}`)
    if (!Number.isInteger(rate.remaining) || rate.remaining < 0) problems.push(`options.rateLimit.remaining must be a non-negative integer, got ${String(rate.remaining)}`)
  }
  const auth = options.auth
  if (auth !== undefined) {
    if (auth.realmHost instanceof FakeTokenServer && (auth.username !== undefined || auth.password !== undefined)) {
      problems.push('options.auth.username/password: set credentials on the FakeTokenServer when realmHost is one')
    }
    if ((auth.username === undefined) !== (auth.password === undefined)) {
      problems.push('options.auth: username and password must be set together')
    }
  }
  if (problems.length > 0) throw new Error(`startFakeRegistry: ${problems.join('; ')}`)
}

export async function startFakeRegistry (options: FakeRegistryOptions = {}): Promise<FakeRegistry> {
  validateOptions(options)
  const registry = new FakeRegistry(options)
  await registry.start()
  return registry
}
