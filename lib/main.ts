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
  /** The clock, for tests of time-based behaviour. */
  readonly now?: () => number
}

export interface Mirror {
  readonly server: Server
  /** `http://host:port` once listening. */
  readonly url: string
  readonly index: CacheIndex
  readonly store: BlobStore
  close (): Promise<void>
}

const HOT_CACHE_BYTES = 256 * 1024 * 1024

/** Opens the cache and starts serving on the configured address. */
export async function createMirror (config: MirrorConfig, log: Logger, hooks: MirrorHooks = {}): Promise<Mirror> {
  const now = hooks.now ?? Date.now
  await mkdir(config.storage.path, { recursive: true })
  const store = new BlobStore(config.storage.path)
  await store.init()
  const index = new CacheIndex({ path: join(config.storage.path, 'index.db'), now })
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
  const blobs = new BlobService({ index, store, upstream, access, log, events: hooks.blobs })
  const manifests = new ManifestService({ index, upstream, access, hot, tagTtl: config.cache.tagTtl, log, now })
  const listings = new ListingService({ index, upstream, referrersTtl: config.cache.tagTtl, now })
  const defaultUpstream = [...config.upstreams.values()].find(u => u.default)?.name
  const routing: RoutingTable = { upstreams: new Set(config.upstreams.keys()), defaultUpstream }
  const app = createApp({ blobs, manifests, listings, routing, log, onRequest: hooks.onRequest })

  const server = createServer(app.callback())
  server.keepAliveTimeout = 65_000
  server.requestTimeout = 0 // large blobs take as long as they take; idle sockets are bounded by keepAliveTimeout
  server.listen(config.listen.port, config.listen.host)
  try {
    await once(server, 'listening')
  } catch (err) {
    index.close()
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
      await Promise.all([...upstreams.values()].map(async u => await u.close()))
      access.close()
      index.close()
    })()
    await closing
  }
  return { server, url, index, store, close }
}
