// createMirror wires the parts from a validated config; it is the only place
// that knows them all. Closing closes them in reverse order.

import { once } from 'node:events'
import { constants } from 'node:fs'
import { access as fsAccess, mkdir } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { AccessRecorder } from './cache/access-recorder.js'
import { checkConsistency } from './cache/consistency.js'
import { Evictor, type EvictorOptions } from './cache/eviction.js'
import type { MirrorConfig } from './config/types.js'
import { CacheIndex } from './db/cache-index.js'
import { createApp, type RequestRecord } from './http/app.js'
import { createOpsApp, type OpsOptions } from './http/ops.js'
import { Metrics } from './metrics.js'
import { pinnedContent } from './cache/pins.js'
import { FileHasher } from './cache/file-hasher.js'
import { BlobService, type BlobEvents } from './mirror/blobs.js'
import { ListingService } from './mirror/listings.js'
import { ManifestService, type HotEntry } from './mirror/manifests.js'
import { BlobStore } from './store/blob-store.js'
import { UpstreamClient, type UpstreamEvents } from './upstream/client.js'
import type { RoutingTable } from './upstream/routing.js'

export interface MirrorHooks {
  readonly upstream?: UpstreamEvents
  readonly blobs?: BlobEvents
  readonly onRequest?: (record: RequestRecord) => void
  readonly onEvicted?: EvictorOptions['onRemoved']
  /** Free bytes on the cache volume, for tests of a full disk. */
  readonly freeBytes?: (path: string) => Promise<number>
  /** The clock, for tests of time-based behaviour. */
  readonly now?: () => number
  /**
   * Temp files younger than this survive the start-up check. 0 for `serve`, which owns the data
   * directory; commands that may run beside a serving mirror must not delete its downloads.
   */
  readonly tempMinAgeMs?: number
}

export interface Mirror {
  readonly server: Server
  /** `http://host:port` once listening. */
  readonly url: string
  /** The separate metrics listener, when metrics.listen is set. */
  readonly opsUrl: string | undefined
  readonly index: CacheIndex
  readonly store: BlobStore
  readonly evictor: Evictor
  /** Applies batched last-access times and counters now (tests, eviction). */
  flushAccess (): void
  close (): Promise<void>
}

const HOT_CACHE_BYTES = 256 * 1024 * 1024

/** The cache and its pull-through services, without an HTTP server: what `serve` and `warm` share. */
export interface MirrorCore {
  readonly config: MirrorConfig
  readonly index: CacheIndex
  readonly store: BlobStore
  readonly evictor: Evictor
  readonly access: AccessRecorder
  readonly blobs: BlobService
  readonly manifests: ManifestService
  readonly listings: ListingService
  readonly routing: RoutingTable
  /** Bytes cached, kept current by downloads and eviction. */
  usedBytes (): number
  close (): Promise<void>
}

/** Opens the cache (settling whatever a crash left first) and builds the services on it. */
export async function openMirrorCore (config: MirrorConfig, log: Logger, hooks: MirrorHooks = {}): Promise<MirrorCore> {
  const now = hooks.now ?? Date.now
  await mkdir(config.storage.path, { recursive: true })
  const store = new BlobStore(config.storage.path)
  await store.init()
  const index = new CacheIndex({ path: join(config.storage.path, 'index.db'), now })
  const report = await checkConsistency({ index, store, log, now, tempMinAgeMs: hooks.tempMinAgeMs ?? 0 })
  if (report.tempFilesRemoved + report.rowsDropped + report.filesIndexed + report.filesRemoved > 0) {
    log.warn(report, 'cache was inconsistent at start (interrupted downloads or a crash); repaired')
  }
  const access = new AccessRecorder({ sink: index, now, onError: err => log.error({ err }, 'could not record last access') })
  const upstreams = new Map<string, UpstreamClient>()
  for (const u of config.upstreams.values()) {
    upstreams.set(u.name, new UpstreamClient({ config: u, log, events: hooks.upstream, now }))
  }
  const upstream = (name: string): UpstreamClient => {
    const client = upstreams.get(name)
    if (client === undefined) throw new Error(`no upstream client for ${name}`)
    return client
  }
  const hot = new LRUCache<string, HotEntry>({
    max: config.cache.hotEntries,
    maxSize: HOT_CACHE_BYTES,
    sizeCalculation: e => e.kind === 'manifest' ? e.manifest.content.length + 200 : 200
  })
  const evictor = new Evictor({
    index,
    store,
    log,
    now,
    policy: config.storage,
    flushAccess: () => access.flush(),
    onRemoved: item => {
      if (item.kind === 'manifest') hot.delete(`m:${item.digest}`)
      for (const { repository, tag } of item.tags) hot.delete(`t:${repository}:${tag}`)
      hooks.onEvicted?.(item)
    }
  })
  let usedBytes = (() => { const t = index.totals(); return t.blobBytes + t.manifestBytes })()
  const evict = async (needBytes?: number): Promise<void> => await evictor.run(needBytes === undefined ? {} : { needBytes })
    .then(r => { usedBytes = r.usedBytes }, (err: unknown) => { log.error({ err }, 'eviction failed') })
  const evictionTimer = setInterval(() => { void evict() }, config.storage.evictionInterval)
  evictionTimer.unref()
  const blobEvents: BlobEvents = {
    ...hooks.blobs,
    onDownloadEnd: (digest, result, bytes, upstreamName) => {
      hooks.blobs?.onDownloadEnd?.(digest, result, bytes, upstreamName)
      if (result !== 'ok') return
      usedBytes += bytes
      if (evictor.overHighWatermark(usedBytes)) void evict()
    }
  }
  const hasher = new FileHasher()
  const blobs = new BlobService({ index, store, upstream, access, log, events: blobEvents, makeRoom: evict, freeBytes: hooks.freeBytes, offline: config.offline, hasher })
  const manifests = new ManifestService({ index, upstream, access, hot, tagTtl: config.cache.tagTtl, log, now, offline: config.offline })
  const listings = new ListingService({ index, upstream, referrersTtl: config.cache.tagTtl, now, offline: config.offline })
  const defaultUpstream = [...config.upstreams.values()].find(u => u.default)?.name
  const routing: RoutingTable = { upstreams: new Set(config.upstreams.keys()), defaultUpstream }

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => {
      clearInterval(evictionTimer)
      await Promise.all([...upstreams.values()].map(async u => await u.close()))
      await blobs.idle() // downloads end (committed or discarded) before the index closes
      await hasher.close()
      await evictor.idle()
      access.close()
      index.close()
    })()
    await closing
  }
  return { config, index, store, evictor, access, blobs, manifests, listings, routing, usedBytes: () => usedBytes, close }
}

/** Opens the cache and starts serving on the configured address. */
export async function createMirror (config: MirrorConfig, log: Logger, hooks: MirrorHooks = {}): Promise<Mirror> {
  let opened: MirrorCore | undefined
  const counts = memo(1000, () => {
    const t = opened?.index.totals()
    const pinned = opened === undefined ? undefined : pinnedContent(opened.index)
    let pinnedBytes = 0
    for (const digest of pinned?.digests ?? []) pinnedBytes += opened?.index.getBlob(digest)?.size ?? opened?.index.getManifest(digest)?.size ?? 0
    return { bytes: (t?.blobBytes ?? 0) + (t?.manifestBytes ?? 0), blobs: t?.blobs ?? 0, manifests: t?.manifests ?? 0, tags: t?.tags ?? 0, pinnedBytes }
  })
  const metrics = config.metrics.enabled
    ? new Metrics({
      // From the index, so manifests cached since the last eviction pass count too.
      usedBytes: () => counts().bytes,
      blobs: () => counts().blobs,
      manifests: () => counts().manifests,
      tags: () => counts().tags,
      pinnedBytes: () => counts().pinnedBytes,
      downloadsInFlight: () => opened?.blobs.downloadsInFlight ?? 0,
      downloadClients: () => opened?.blobs.downloadClients ?? 0
    })
    : undefined
  const core = await openMirrorCore(config, log, metrics === undefined ? hooks : withMetrics(hooks, metrics))
  opened = core
  const { blobs, manifests, listings, routing, access } = core
  const onRequest = (record: RequestRecord): void => {
    if ((record.kind === 'blob' || record.kind === 'manifest') && record.outcome !== undefined) {
      access.count(`${record.kind}.${record.outcome}`)
    }
    metrics?.request(record)
    hooks.onRequest?.(record)
  }
  const ops: OpsOptions = {
    metrics,
    token: config.metrics.token,
    ready: async () => {
      const problems: string[] = []
      try {
        core.index.ping()
      } catch (err) {
        problems.push(`index: ${err instanceof Error ? err.message : String(err)}`)
      }
      try {
        await fsAccess(core.store.tmpDir, constants.W_OK)
      } catch (err) {
        problems.push(`storage: ${err instanceof Error ? err.message : String(err)}`)
      }
      return problems
    }
  }
  const separateOps = config.metrics.listen !== undefined
  const app = createApp({ blobs, manifests, listings, routing, log, onRequest, ops: separateOps ? undefined : ops, sent: chunk => core.store.readBuffers.give(chunk) })

  const server = createServer(app.callback())
  server.keepAliveTimeout = 65_000
  server.requestTimeout = 0 // large blobs take as long as they take; idle sockets are bounded by keepAliveTimeout
  server.listen(config.listen.port, config.listen.host)
  try {
    await once(server, 'listening')
  } catch (err) {
    await core.close()
    throw err
  }
  const url = urlOf(server)
  let opsServer: Server | undefined
  if (config.metrics.listen !== undefined) {
    opsServer = createServer(createOpsApp(ops).callback())
    opsServer.listen(config.metrics.listen.port, config.metrics.listen.host)
    try {
      await once(opsServer, 'listening')
    } catch (err) {
      await stopServer(server)
      await core.close()
      throw err
    }
  }

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => {
      await Promise.all([stopServer(server), opsServer === undefined ? undefined : stopServer(opsServer)])
      await core.close()
    })()
    await closing
  }
  return {
    server,
    url,
    opsUrl: opsServer === undefined ? undefined : urlOf(opsServer),
    index: core.index,
    store: core.store,
    evictor: core.evictor,
    flushAccess: () => access.flush(),
    close
  }
}

function urlOf (server: Server): string {
  const address = server.address() as AddressInfo
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return `http://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${address.port}`
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

function withMetrics (hooks: MirrorHooks, metrics: Metrics): MirrorHooks {
  return {
    ...hooks,
    upstream: {
      onResponse: info => {
        metrics.upstreamResponse(info.upstream, info.kind, info.status)
        hooks.upstream?.onResponse?.(info)
      },
      onTokenFetch: upstream => {
        metrics.tokenFetch(upstream)
        hooks.upstream?.onTokenFetch?.(upstream)
      },
      onRetry: upstream => {
        metrics.retry(upstream)
        hooks.upstream?.onRetry?.(upstream)
      }
    },
    blobs: {
      ...hooks.blobs,
      onDownloadEnd: (digest, result, bytes, upstream) => {
        metrics.upstreamBytes(upstream, bytes)
        if (result === 'mismatch') metrics.digestMismatch(upstream)
        hooks.blobs?.onDownloadEnd?.(digest, result, bytes, upstream)
      },
      onUncached: (digest, reason) => {
        metrics.uncached(reason)
        hooks.blobs?.onUncached?.(digest, reason)
      }
    },
    onEvicted: item => {
      metrics.evicted(item.reason, item.size)
      hooks.onEvicted?.(item)
    }
  }
}

/** The last value of `fn`, recomputed at most every `ms`. */
function memo<T> (ms: number, fn: () => T): () => T {
  let at = -Infinity
  let value: T | undefined
  return () => {
    const now = Date.now()
    if (value === undefined || now - at >= ms) {
      value = fn()
      at = now
    }
    return value
  }
}
