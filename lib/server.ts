// `serve`: the data directory opened (lib/core.ts), the metrics, and the
// listeners — the main one with the distribution API (and the operational
// endpoints unless they have their own address), and the metrics one.
// Closing closes them in reverse order.

import { once } from 'node:events'
import { createServer, type RequestListener, type Server } from 'node:http'
import { createServer as createTlsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import type { SweepReport } from './cache/consistency.js'
import type { Evictor } from './cache/eviction.js'
import type { LocalCache } from './cache/local-cache.js'
import type { AuthConfig, MirrorConfig } from './config/types.js'
import { openCore, type CoreOptions, type MirrorCore } from './core.js'
import { Events, type EventSink, type MirrorEvents } from './events.js'
import { createApp, type AppAuth } from './http/app.js'
import { TrustedProxies } from './http/client-address.js'
import { ClientRequestLimit } from './http/client-limit.js'
import { ConnectionCap } from './http/connection-cap.js'
import { createOpsApp, type OpsOptions } from './http/ops.js'
import { TlsFiles } from './http/tls.js'
import { AccessRules } from './auth/access-rules.js'
import { Authenticator } from './auth/authenticator.js'
import { TokenIssuer } from './auth/tokens.js'
import { HtpasswdFile } from './auth/htpasswd.js'
import { PassthroughGate, type PassthroughUpstream } from './auth/passthrough.js'
import { ConfigError, HtpasswdError } from './errors.js'
import { Metrics } from './metrics.js'
import { Activity } from './status/activity.js'
import { STATUS_ASSETS } from './status/assets.js'
import { renderLoginPage, renderStatusPage } from './status/page.js'
import { forViewer, StatusReporter, type StatusReport } from './status/report.js'
import type { StatusPages } from './http/status-routes.js'
import type { BufferPool } from './store/buffer-pool.js'

export interface MirrorOptions extends Pick<CoreOptions, 'now' | 'freeBytes' | 'uploadRetryDelays'> {
  /** More listeners for the mirror's events (tests). */
  readonly events?: readonly EventSink[]
  /** Log lines the log destination dropped so far, for the metrics. */
  readonly logLinesDropped?: (() => number) | undefined
}

export interface Mirror {
  readonly server: Server
  /** `http(s)://host:port` once listening. */
  readonly url: string
  /** The separate metrics listener, when metrics.listen is set. */
  readonly opsUrl: string | undefined
  readonly cache: LocalCache
  readonly evictor: Evictor
  /** The pool blob reads go into (tests watch how many buffers it made). */
  readonly readBuffers: BufferPool
  /** Resolves when the background sweep after start is done. */
  readonly swept: Promise<SweepReport | undefined>
  /** Applies batched last-access times and counters now (tests, eviction). */
  flushAccess: () => void
  close: () => Promise<void>
}

/** Opens the cache and starts serving on the configured address. */
export async function createMirror (config: MirrorConfig, log: Logger, options: MirrorOptions = {}): Promise<Mirror> {
  // Bad TLS files stop the start before the data directory is opened.
  const tls = config.tls === undefined ? undefined : await TlsFiles.load(config.tls, log, config.source)
  const users = config.auth === undefined ? undefined : await loadUsers(config, log)
  const metrics = config.metrics.enabled ? new Metrics() : undefined
  const activity = new Activity({ upstreams: config.upstreams.keys(), now: options.now })
  const sinks = [metrics, activity, ...options.events ?? []]
  const core = await openCore(config, log, { events: new Events(sinks), now: options.now, freeBytes: options.freeBytes, uploadRetryDelays: options.uploadRetryDelays, owner: true })
  const { cache, blobs, manifests, listings, routing } = core
  metrics?.watch({ summary: () => cache.summary(), downloadsInFlight: () => blobs.downloadsInFlight, downloadClients: () => blobs.downloadClients, logLinesDropped: options.logLinesDropped })
  // Finished requests also go to the counters `registry-mirror stats` reports.
  const events = new Events([...sinks, cache.access])
  const auth = config.auth === undefined
    ? undefined
    : authParts(config, config.auth, users, core, events, log, options.now)
  /** host:port of the main listener once it listens: the status page's first-run hint when a request's Host is no host. */
  let listening = `${config.listen.host}:${config.listen.port}`
  const ops: OpsOptions = {
    metrics,
    upstreams: core.upstreamStates,
    token: config.metrics.token,
    ready: async () => await cache.problems(),
    // Where /metrics is, and only then: behind the same token.
    status: metrics === undefined ? undefined : statusPages(config, core, activity, auth, options.now, () => listening)
  }
  const separateOps = config.metrics.listen !== undefined
  if (auth !== undefined && tls === undefined) log.warn('auth is set without tls: passwords cross the network in clear text')
  const limits = config.limits
  const trusted = new TrustedProxies(limits.trustedProxies)
  const requestLimit = new ClientRequestLimit({ maxUnderWay: limits.maxRequestsPerClient, maxWaiting: limits.maxQueuedPerClient, maxWait: limits.queueTimeout })
  const app = createApp({ blobs, manifests, listings, routing, log, events, trustedProxies: trusted, requestLimit, ops: separateOps ? undefined : ops, sent: chunk => core.readBuffers.give(chunk), auth, authEvents: events })

  const server = listener(app.callback(), { limits, trusted, events, name: 'main' }, tls, log)
  server.listen(config.listen.port, config.listen.host)
  try {
    await once(server, 'listening')
  } catch (err) {
    tls?.stop()
    users?.stop()
    await core.close()
    throw err
  }
  const url = urlOf(server, tls !== undefined)
  listening = new URL(url).host
  let opsServer: Server | undefined
  if (config.metrics.listen !== undefined) {
    // Its own connection counts: a flood on the main listener leaves /healthz and /metrics answering.
    opsServer = listener(createOpsApp(ops).callback(), { limits, trusted, events, name: 'ops' }, tls, log)
    opsServer.listen(config.metrics.listen.port, config.metrics.listen.host)
    try {
      await once(opsServer, 'listening')
    } catch (err) {
      tls?.stop()
      users?.stop()
      await stopServer(server)
      await core.close()
      throw err
    }
  }

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => {
      tls?.stop()
      users?.stop()
      await Promise.all([stopServer(server), opsServer === undefined ? undefined : stopServer(opsServer)])
      await core.close()
    })()
    await closing
  }
  return {
    server,
    url,
    opsUrl: opsServer === undefined ? undefined : urlOf(opsServer, tls !== undefined),
    cache,
    evictor: core.evictor,
    readBuffers: core.readBuffers,
    swept: core.swept,
    flushAccess: () => cache.access.flush(),
    close
  }
}

/** Seconds between the status page's refreshes. */
const STATUS_REFRESH_SECONDS = 5

/**
 * The status page for an anonymous viewer: with auth, only the repositories anonymous callers
 * may pull are named on it, and never one of a passthrough upstream (which only says per login).
 */
function statusPages (config: MirrorConfig, core: MirrorCore, activity: Activity, auth: AppAuth | undefined, now: (() => number) | undefined, listening: () => string): StatusPages {
  const reporter = new StatusReporter({ config, cache: core.cache, now, live: { activity, downloads: () => core.blobs.downloads(), refreshSeconds: STATUS_REFRESH_SECONDS } })
  const passthrough = new Set([...config.upstreams.values()].filter(u => u.passthrough !== undefined).map(u => u.name))
  const mayRead = (repository: string): boolean => {
    if (passthrough.has(repository.slice(0, repository.indexOf('/')))) return false
    return auth === undefined || auth.rules.mayPull(undefined, repository)
  }
  // One cut, one page per address and one JSON text per report (a second), however many viewers.
  let cut: { from: StatusReport, report: StatusReport, json: string } | undefined
  let page: { from: StatusReport, address: string, html: string } | undefined
  const viewed = async (): Promise<{ from: StatusReport, report: StatusReport, json: string }> => {
    const from = await reporter.report()
    if (cut?.from !== from) {
      const report = forViewer(from, mayRead)
      cut = { from, report, json: JSON.stringify(report) }
    }
    return cut
  }
  return {
    html: async address => {
      const { from, report } = await viewed()
      if (page?.from !== from || page.address !== address) page = { from, address, html: renderStatusPage(report, { address, now: Date.parse(report.generatedAt) }) }
      return page.html
    },
    json: async () => (await viewed()).json,
    login: renderLoginPage,
    assets: STATUS_ASSETS,
    address: listening
  }
}

function authParts (mirror: MirrorConfig, config: AuthConfig, users: HtpasswdFile | undefined, core: MirrorCore, events: Events, log: Logger, now: (() => number) | undefined): AppAuth {
  const tokens = new TokenIssuer(config.tokenTtl, now, config.tokenKey === undefined ? undefined : TokenIssuer.keyFrom(config.tokenKey))
  const passthrough = new Map<string, PassthroughUpstream>()
  for (const u of mirror.upstreams.values()) {
    if (u.passthrough !== undefined) passthrough.set(u.name, { client: core.upstream(u.name), ...u.passthrough })
  }
  const gate = passthrough.size === 0 ? undefined : new PassthroughGate({ upstreams: passthrough, events, log, now, offline: mirror.offline })
  return {
    authenticator: new Authenticator({ ...config, users, upstreamLogins: gate, events, log, tokens, now }),
    rules: new AccessRules({ rules: config.rules, defaultPull: config.defaultPull }),
    tokens,
    passthrough: gate
  }
}

/** The htpasswd file of auth; a problem with it stops the start, named as config problems are. */
async function loadUsers (config: MirrorConfig, log: Logger): Promise<HtpasswdFile | undefined> {
  if (config.auth?.htpasswd === undefined) return undefined
  try {
    return await HtpasswdFile.load(config.auth.htpasswd, log, config.auth.reloadInterval)
  } catch (err) {
    if (err instanceof HtpasswdError) throw new ConfigError(config.source ?? 'config', [`auth.htpasswd: ${err.message}`])
    throw err
  }
}

interface ListenerLimits {
  readonly limits: MirrorConfig['limits']
  /** Exempt from the per-address connection cap. */
  readonly trusted: TrustedProxies
  readonly events: Pick<MirrorEvents, 'connectionRefused'>
  /** "main" or "ops", in log lines. */
  readonly name: string
}

/**
 * An HTTP listener that bounds what clients can hold: the TLS handshake and the
 * request headers each within headersTimeout (checked every second, so a silent
 * connection goes then, not a check interval later), idle keep-alive connections
 * for idleTimeout, at most maxConnections open, and at most
 * maxConnectionsPerClient of them from one address (checked as each is accepted,
 * before the TLS handshake). A request itself takes as long as it takes: large
 * blobs do. With TLS: 1.2 and later, the files' renewals taken as they come, and
 * a client certificate required when there is a client CA.
 */
function listener (handle: RequestListener, { limits, trusted, events, name }: ListenerLimits, tls: TlsFiles | undefined, log: Logger): Server {
  const http = { headersTimeout: limits.headersTimeout, requestTimeout: 0, connectionsCheckingInterval: Math.min(1000, limits.headersTimeout) }
  let server: Server
  if (tls === undefined) {
    server = createServer(http, handle)
  } else {
    const secure = createTlsServer({
      ...http,
      ...tls.options,
      minVersion: 'TLSv1.2',
      handshakeTimeout: limits.headersTimeout,
      requestCert: tls.clientCertificates,
      rejectUnauthorized: tls.clientCertificates
    }, handle)
    tls.serve(secure)
    // A refused handshake (no client certificate, one another CA signed, an old protocol) is
    // the client's failure to see; the operator sees it here.
    secure.on('tlsClientError', (err: Error & { code?: string }, socket) => {
      log.info({ address: socket.remoteAddress, reason: err.code ?? err.message }, 'TLS handshake refused')
    })
    server = secure
  }
  server.keepAliveTimeout = limits.idleTimeout
  server.maxConnections = limits.maxConnections
  new ConnectionCap({ maxPerClient: limits.maxConnectionsPerClient, trusted, events, log, listener: name }).watch(server)
  return server
}

function urlOf (server: Server, secure: boolean): string {
  const address = server.address() as AddressInfo
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return `${secure ? 'https' : 'http'}://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${address.port}`
}

/** Stops accepting, lets answers under way finish for up to 5 s, then cuts them. */
async function stopServer (server: Server): Promise<void> {
  if (!server.listening) return
  server.close()
  server.closeIdleConnections()
  const forced = setTimeout(() => server.closeAllConnections(), 5_000)
  await once(server, 'close').catch(() => {})
  clearTimeout(forced)
}
