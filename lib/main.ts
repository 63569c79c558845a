// createMirror wires the parts from a validated config; it is the only place
// that knows them all. Closing closes them in reverse order.

import { once } from 'node:events'
import { mkdir } from 'node:fs/promises'
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
}

export interface Mirror {
  readonly server: Server
  /** `http://host:port` once listening. */
  readonly url: string
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
  close (): Promise<void>
}

/** Opens the cache (settling whatever a crash left first) and builds the services on it. */
export async function openMirrorCore (config: MirrorConfig, log: Logger, hooks: MirrorHooks = {}): Promise<MirrorCore> {
  const now = hooks.now ?? Date.now
  await mkdir(config.storage.path, { recursive: true })
  const store = new BlobStore(config.storage.path)
  await store.init()
  const index = new CacheIndex({ path: join(config.storage.path, 'index.db'), now })
  const report = await checkConsistency({ index, store, log, now })
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
  const blobs = new BlobService({ index, store, upstream, access, log, events: blobEvents, makeRoom: evict, freeBytes: hooks.freeBytes })
  const manifests = new ManifestService({ index, upstream, access, hot, tagTtl: config.cache.tagTtl, log, now })
  const listings = new ListingService({ index, upstream, referrersTtl: config.cache.tagTtl, now })
  const defaultUpstream = [...config.upstreams.values()].find(u => u.default)?.name
  const routing: RoutingTable = { upstreams: new Set(config.upstreams.keys()), defaultUpstream }

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => {
      clearInterval(evictionTimer)
      await Promise.all([...upstreams.values()].map(async u => await u.close()))
      await blobs.idle() // downloads end (committed or discarded) before the index closes
      await evictor.idle()
      access.close()
      index.close()
    })()
    await closing
  }
  return { config, index, store, evictor, access, blobs, manifests, listings, routing, close }
}

/** Opens the cache and starts serving on the configured address. */
export async function createMirror (config: MirrorConfig, log: Logger, hooks: MirrorHooks = {}): Promise<Mirror> {
  const core = await openMirrorCore(config, log, hooks)
  const { blobs, manifests, listings, routing, access } = core
  const onRequest = (record: RequestRecord): void => {
    if ((record.kind === 'blob' || record.kind === 'manifest') && record.outcome !== undefined) {
      access.count(`${record.kind}.${record.outcome}`)
    }
    hooks.onRequest?.(record)
  }
  const app = createApp({ blobs, manifests, listings, routing, log, onRequest })

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
  const address = server.address() as AddressInfo
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  const url = `http://${host === '0.0.0.0' || host === '[::]' ? '127.0.0.1' : host}:${address.port}`

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => {
      server.close()
      server.closeIdleConnections()
      const forced = setTimeout(() => server.closeAllConnections(), 5_000)
      await once(server, 'close').catch(() => {})
      clearTimeout(forced)
      await core.close()
    })()
    await closing
  }
  return { server, url, index: core.index, store: core.store, evictor: core.evictor, flushAccess: () => access.flush(), close }
}
