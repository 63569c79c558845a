// The status report: one shape (StatusReport, documented in docs/status.md)
// for /status.json, the /status page and `registry-mirror stats --json`. What
// needs a running server (since start, the last hour, clients, downloads,
// evictions, upstream traffic) is absent from `stats`, never zero. Built at
// most once a second however many viewers ask (the index's largest
// repositories at most once a minute: a scan), then cut per viewer to the
// repositories the access rules let it read.

import type { LocalCache } from '../cache/local-cache.js'
import { FROM_CACHE } from '../events.js'
import type { MirrorConfig } from '../config/types.js'
import type { DownloadInFlight } from '../mirror/blobs.js'
import { mirrorVersion } from '../version.js'
import type { Activity, Figures } from './activity.js'
import { CLIENT_KIND_NAMES, CLIENT_KINDS, type ClientKind } from './client-kind.js'

/** The shape's version: fields may be added within one, never renamed or removed. */
export const STATUS_SCHEMA = 1
/** Repositories listed by size and by pulls. */
export const TOP = 10
/** Evictions listed. */
export const EVICTIONS = 50
const REPORT_MS = 1000
/** The index scan for the largest repositories takes at most this share of the time between two. */
const LARGEST_SHARE = 50
const LARGEST_MAX_MS = 60_000

export interface RequestCounts {
  hit: number
  miss: number
  joined: number
  stale: number
  revalidated: number
  error: number
  /** Share of blob and manifest requests answered from the cache, 0..1; null before the first. */
  hitRatio: number | null
}

export interface CacheSection {
  totalBytes: number
  blobs: number
  blobBytes: number
  manifests: number
  manifestBytes: number
  tags: number
  repositories: number
  pins: number
  pinnedBytes: number
  /** storage.maxSize and the watermarks in bytes; null when the cache is unbounded. */
  maxSize: number | null
  highWatermarkBytes: number | null
  lowWatermarkBytes: number | null
  /** Free bytes on the data directory's volume; null when it cannot be read. */
  freeBytes: number | null
  /** Null when the index can be written; else why not (the cache is degraded: a full disk, an I/O error). */
  degraded: string | null
  oldestAccess: string | null
  newestAccess: string | null
}

export interface UpstreamSection {
  name: string
  /** Without its user or password. */
  url: string
  default: boolean
  passthrough: boolean
  /** `unknown` from `stats`, which cannot ask: only a serving mirror knows it is up. */
  state: 'up' | 'down' | 'unknown'
  downSince: string | null
  /** When a down upstream is tried again (server only). */
  nextProbe?: string | null
  lastError?: { at: string, message: string } | null
  /** What it last said is left of its rate limit; null when it never said (Docker Hub does; most registries do not). */
  rateLimit?: { remaining: number, limit: number | null, windowSeconds: number | null, at: string } | null
  requests?: number
  fetchedBytes?: number
}

export type MinuteFigures = Figures & { at: string }

export interface StatusReport {
  schema: number
  version: string
  generatedAt: string
  /** Present only from a running server. */
  server?: { startedAt: string, uptimeSeconds: number, refreshSeconds: number }
  node: { fleet: false, note: string }
  config: ConfigSummary
  cache: CacheSection
  /** Counted in the index since the cache was made (`stats` reads the same), flushed every few seconds. */
  requests: RequestCounts
  sinceStart?: Figures & {
    hitRatio: number | null
    /** Bytes sent to clients beyond the blob bytes fetched from upstream: what the cache and joined downloads saved. */
    savedBytes: number
    avoided: { tagsWithinTtl: number, joinedDownloads: number }
    errors: number
  }
  lastHour?: MinuteFigures[]
  clients?: Array<{ kind: ClientKind, name: string, lastServedAt: string | null, source: 'cache' | 'upstream' | null, userAgent: string | null, requests: number }>
  top: {
    bySize: Array<{ repository: string, bytes: number, blobs: number }>
    byPulls?: Array<{ repository: string, pulls: number }>
  }
  pins: Array<{ repository: string, reference: string, createdAt: string }>
  /** The last evictions of every command (serve, gc), newest first, from the index. */
  evictions: Array<{ at: string, kind: 'blob' | 'manifest', digest: string, bytes: number | null, reason: string, by: string, repositories: string[] }>
  downloads?: Array<{ digest: string, repository: string, upstream: string, startedAt: string, bytes: number, size: number | null, bytesPerSecond: number, clients: number }>
  upstreams: UpstreamSection[]
  /** Entries left out because the viewer may not read their repository. */
  hidden: number
}

export interface ConfigSummary {
  listen: string
  storage: { path: string, maxSize: number | null, maxAgeSeconds: number | null, highWatermark: number, lowWatermark: number, bucket: string | null, redirect: boolean }
  tagTtlSeconds: number
  offline: boolean
  tls: boolean
  auth: { users: boolean, rules: number, defaultPull: boolean, anonymousNetworks: number | null } | null
  metrics: { ownListener: boolean, tokenRequired: boolean }
}

/** What a report is made from: the cache and config always, a running server's activity when there is one. */
export interface ReportSources {
  readonly config: MirrorConfig
  readonly cache: LocalCache
  readonly now?: (() => number) | undefined
  readonly live?: {
    readonly activity: Activity
    readonly downloads: () => DownloadInFlight[]
    readonly refreshSeconds: number
  } | undefined
}

export function configSummary (config: MirrorConfig): ConfigSummary {
  const { storage, auth } = config
  return {
    listen: `${config.listen.host.includes(':') ? `[${config.listen.host}]` : config.listen.host}:${config.listen.port}`,
    storage: {
      path: storage.path,
      maxSize: storage.maxSize ?? null,
      maxAgeSeconds: storage.maxAge === undefined ? null : storage.maxAge / 1000,
      highWatermark: storage.highWatermark,
      lowWatermark: storage.lowWatermark,
      bucket: storage.s3?.bucket ?? null,
      redirect: storage.s3?.redirect ?? false
    },
    tagTtlSeconds: config.cache.tagTtl / 1000,
    offline: config.offline === true,
    tls: config.tls !== undefined,
    auth: auth === undefined
      ? null
      : { users: auth.htpasswd !== undefined, rules: auth.rules.length, defaultPull: auth.defaultPull, anonymousNetworks: auth.anonymousNetworks?.length ?? null },
    metrics: { ownListener: config.metrics.listen !== undefined, tokenRequired: config.metrics.token !== undefined }
  }
}

function withoutCredentials (url: string): string {
  try {
    const u = new URL(url)
    u.username = ''
    u.password = ''
    return u.toString().replace(/\/$/, '')
  } catch {
    return '(unreadable)'
  }
}

function iso (ms: number): string { return new Date(ms).toISOString() }

function requestCounts (counters: Map<string, number>): RequestCounts {
  const sum = (outcome: string): number => (counters.get(`blob.${outcome}`) ?? 0) + (counters.get(`manifest.${outcome}`) ?? 0)
  const r = { hit: sum('hit'), miss: sum('miss'), joined: sum('joined'), stale: sum('stale'), revalidated: sum('revalidated'), error: sum('error') }
  const fromCache = [...FROM_CACHE].reduce((n, outcome) => n + sum(outcome), 0)
  const served = fromCache + r.miss + r.joined
  return { ...r, hitRatio: served === 0 ? null : fromCache / served }
}

async function cacheSection (config: MirrorConfig, cache: LocalCache): Promise<CacheSection> {
  const totals = cache.totals()
  const failure = cache.probeWrite()
  const max = config.storage.maxSize
  return {
    totalBytes: totals.blobBytes + totals.manifestBytes,
    blobs: totals.blobs,
    blobBytes: totals.blobBytes,
    manifests: totals.manifests,
    manifestBytes: totals.manifestBytes,
    tags: totals.tags,
    repositories: totals.repositories,
    pins: cache.pins().length,
    pinnedBytes: cache.bytesOf(cache.pinnedContent().digests),
    maxSize: max ?? null,
    highWatermarkBytes: max === undefined ? null : Math.floor(max * config.storage.highWatermark),
    lowWatermarkBytes: max === undefined ? null : Math.floor(max * config.storage.lowWatermark),
    freeBytes: await cache.freeBytes().catch(() => null),
    degraded: failure === undefined ? null : `the index cannot be written (${failure.message})`,
    oldestAccess: totals.oldestAccess === null ? null : iso(totals.oldestAccess),
    newestAccess: totals.newestAccess === null ? null : iso(totals.newestAccess)
  }
}

/** The report of a data directory, no server needed (`stats --json`), or of a running one (`live`). */
export async function buildReport (sources: ReportSources, largest?: StatusReport['top']['bySize']): Promise<StatusReport> {
  const { config, cache, live } = sources
  const now = (sources.now ?? Date.now)()
  const down = new Map(cache.upstreamsDown().map(d => [d.upstream, d.since]))
  const activity = live?.activity
  const seen = new Map((activity?.upstreams() ?? []).map(u => [u.name, u]))
  const report: StatusReport = {
    schema: STATUS_SCHEMA,
    version: mirrorVersion(),
    generatedAt: iso(now),
    node: { fleet: false, note: 'this node only: nodes of a fleet share a bucket, not their activity; open each node\'s page' },
    config: configSummary(config),
    cache: await cacheSection(config, cache),
    requests: requestCounts(cache.counters()),
    top: { bySize: largest ?? cache.largestRepositories(TOP) },
    pins: cache.pins().map(p => ({ repository: p.repository, reference: p.reference, createdAt: iso(p.createdAt) })),
    evictions: cache.recentEvictions(EVICTIONS).map(e => ({ at: iso(e.at), kind: e.kind, digest: e.digest, bytes: e.bytes, reason: e.reason, by: e.by, repositories: [...e.repositories] })),
    upstreams: [...config.upstreams.values()].map(u => {
      const section: UpstreamSection = {
        name: u.name,
        url: withoutCredentials(u.url),
        default: u.default,
        passthrough: u.passthrough !== undefined,
        state: 'unknown',
        downSince: null
      }
      const a = seen.get(u.name)
      if (a === undefined) {
        // From the index: what the serving mirror last recorded.
        const since = down.get(u.name)
        if (since !== undefined) Object.assign(section, { state: 'down', downSince: iso(since) })
        return section
      }
      section.state = a.down === undefined ? 'up' : 'down'
      section.downSince = a.down === undefined ? null : iso(a.down.since)
      section.nextProbe = a.down === undefined ? null : iso(a.down.until)
      section.lastError = a.lastError === undefined ? null : { at: iso(a.lastError.at), message: a.lastError.message }
      section.rateLimit = a.rateLimit === undefined
        ? null
        : { remaining: a.rateLimit.remaining, limit: a.rateLimit.limit ?? null, windowSeconds: a.rateLimit.windowSeconds ?? null, at: iso(a.rateLimit.at) }
      section.requests = a.requests
      section.fetchedBytes = a.fetchedBytes
      return section
    }),
    hidden: 0
  }
  if (live === undefined || activity === undefined) return report

  const t = activity.totals
  const served = t.hits + t.misses
  report.server = { startedAt: iso(activity.startedAt), uptimeSeconds: Math.floor((now - activity.startedAt) / 1000), refreshSeconds: live.refreshSeconds }
  report.sinceStart = {
    requests: t.requests,
    pulls: t.pulls,
    hits: t.hits,
    misses: t.misses,
    cacheBytes: t.cacheBytes,
    upstreamBytes: t.upstreamBytes,
    fetchedBytes: t.fetchedBytes,
    hitRatio: served === 0 ? null : t.hits / served,
    savedBytes: Math.max(0, t.cacheBytes + t.upstreamBytes - t.fetchedBytes),
    avoided: { tagsWithinTtl: t.tagsWithinTtl, joinedDownloads: t.joined },
    errors: t.errors
  }
  report.lastHour = activity.lastHour().map(({ minute, ...f }) => ({ at: iso(minute * 60_000), ...f }))
  const clients = new Map(activity.clients().map(c => [c.kind, c]))
  report.clients = CLIENT_KINDS.map(kind => {
    const c = clients.get(kind)
    return {
      kind,
      name: CLIENT_KIND_NAMES[kind],
      lastServedAt: c === undefined ? null : iso(c.lastServedAt),
      source: c?.lastSource ?? null,
      userAgent: c?.userAgent ?? null,
      requests: c?.requests ?? 0
    }
  })
  report.top.byPulls = activity.pulls().slice(0, TOP)
  report.downloads = live.downloads().map(d => ({
    digest: d.digest,
    repository: d.repository,
    upstream: d.upstream,
    startedAt: iso(d.startedAt),
    bytes: d.bytes,
    size: d.size ?? null,
    bytesPerSecond: Math.round(d.bytes / Math.max(0.001, (now - d.startedAt) / 1000)),
    clients: d.clients
  }))
  return report
}

/**
 * The report cut to what a viewer may read: an entry naming a repository it may not read is
 * left out (a download, a top entry, a pin), or loses the name (an eviction), and counted in
 * `hidden`. Top lists can hold a pull count or size of a repository only, never more.
 */
export function forViewer (report: StatusReport, mayRead: (repository: string) => boolean): StatusReport {
  let hidden = 0
  const keep = <T extends { repository: string }>(items: T[]): T[] => items.filter(i => {
    if (mayRead(i.repository)) return true
    hidden++
    return false
  })
  const out: StatusReport = {
    ...report,
    top: { bySize: keep(report.top.bySize), ...(report.top.byPulls === undefined ? {} : { byPulls: keep(report.top.byPulls) }) },
    pins: keep(report.pins)
  }
  if (report.downloads !== undefined) out.downloads = keep(report.downloads)
  out.evictions = report.evictions.map(e => {
    const repositories = e.repositories.filter(r => mayRead(r))
    hidden += e.repositories.length - repositories.length
    return { ...e, repositories }
  })
  out.hidden = hidden
  return out
}

/**
 * Builds the report at most once a second for however many viewers; the index scan for the
 * largest repositories (synchronous: SQLite) again only after fifty times as long as it took
 * last, and at least once a minute, so that on a large cache it costs at most 2% of the event loop.
 */
export class StatusReporter {
  readonly #sources: ReportSources
  readonly #now: () => number
  #report: { at: number, value: Promise<StatusReport> } | undefined
  #largest: { at: number, tookMs: number, value: StatusReport['top']['bySize'] } | undefined

  constructor (sources: ReportSources) {
    this.#sources = sources
    this.#now = sources.now ?? Date.now
  }

  async report (): Promise<StatusReport> {
    const now = this.#now()
    if (this.#report === undefined || now - this.#report.at >= REPORT_MS) {
      const largest = this.#largest
      if (largest === undefined || now - largest.at >= Math.min(LARGEST_MAX_MS, largest.tookMs * LARGEST_SHARE)) {
        const started = performance.now()
        const value = this.#sources.cache.largestRepositories(TOP)
        this.#largest = { at: now, tookMs: performance.now() - started, value }
      }
      const value = buildReport(this.#sources, this.#largest?.value)
      // A failed build is not kept: the next viewer tries again.
      value.catch(() => { this.#report = undefined })
      this.#report = { at: now, value }
    }
    return await this.#report.value
  }
}
