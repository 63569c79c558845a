// Opens a data directory: the one way every command (serve, warm, export,
// import, gc, pin, unpin, stats) gets at the cache. It settles whatever a
// crash or an interrupted download left (the consistency check), then builds
// the local cache, eviction and the pull-through services on it. No HTTP here:
// `serve` adds its listeners on top (lib/server.ts).

import { join } from 'node:path'
import type { Logger } from 'pino'
import { checkConsistency, repairs, type ConsistencyReport } from './cache/consistency.js'
import { Evictor } from './cache/eviction.js'
import { EvictionSchedule } from './cache/eviction-schedule.js'
import { FileHasher } from './cache/file-hasher.js'
import { LocalCache } from './cache/local-cache.js'
import { RecentPulls } from './cache/recent-pulls.js'
import { Scrubber } from './cache/scrubber.js'
import type { MirrorConfig } from './config/types.js'
import { CacheIndex } from './db/cache-index.js'
import { Events, type MirrorEvents } from './events.js'
import { BlobService } from './mirror/blobs.js'
import { ListingService } from './mirror/listings.js'
import { ManifestService } from './mirror/manifests.js'
import { FsBlobStore } from './store/fs-blob-store.js'
import { UpstreamClient } from './upstream/client.js'
import { routingTable, type RoutingTable } from './upstream/routing.js'

/** Temp files younger than this may belong to a download a running mirror is doing. */
export const LIVE_TEMP_AGE_MS = 60 * 60 * 1000

export interface CoreOptions {
  readonly events?: MirrorEvents | undefined
  /** The clock, for tests of time-based behaviour. */
  readonly now?: (() => number) | undefined
  /** Free bytes on the cache volume, for tests of a full disk. */
  readonly freeBytes?: ((path: string) => Promise<number>) | undefined
  /**
   * Whether this process owns the data directory (`serve`): then temp files of any age are
   * interrupted downloads. Other commands may run beside a serving mirror and must leave
   * its downloads alone.
   */
  readonly owner?: boolean | undefined
  /** Report what the consistency check would repair, and repair nothing (`gc --dry-run`). */
  readonly dryRun?: boolean | undefined
  /** Re-hash every cached blob and manifest at opening (`gc --verify`). */
  readonly verify?: boolean | undefined
}

/** The cache and its pull-through services, without an HTTP server. */
export interface MirrorCore {
  readonly config: MirrorConfig
  readonly cache: LocalCache
  readonly evictor: Evictor
  readonly eviction: EvictionSchedule
  readonly blobs: BlobService
  readonly manifests: ManifestService
  readonly listings: ListingService
  readonly routing: RoutingTable
  /** The client of a configured upstream, by name. */
  readonly upstream: (name: string) => UpstreamClient
  /** Each upstream's state: "up", or since when it is down and when it is tried again. */
  upstreamStates: () => Record<string, string>
  /** What the consistency check found when the data directory was opened. */
  readonly consistency: ConsistencyReport
  close: () => Promise<void>
}

export async function openCore (config: MirrorConfig, log: Logger, options: CoreOptions = {}): Promise<MirrorCore> {
  const now = options.now ?? Date.now
  const outer = options.events ?? new Events()
  const store = new FsBlobStore({ root: config.storage.path, freeBytes: options.freeBytes })
  await store.init()
  const index = new CacheIndex({ path: join(config.storage.path, 'index.db'), now })
  const cache = new LocalCache({ index, store, hotEntries: config.cache.hotEntries, log, now, events: outer })
  // A serving mirror notes in the index which upstreams are down (the cache listens), for `registry-mirror stats`.
  const events = options.owner === true ? new Events([outer, cache]) : outer
  if (options.owner === true) for (const name of config.upstreams.keys()) cache.noteUpstreamDown(name, 0)
  let consistency: ConsistencyReport
  try {
    consistency = await checkConsistency({ cache, log, now, dryRun: options.dryRun, verify: options.verify, tempMinAgeMs: options.owner === true ? 0 : LIVE_TEMP_AGE_MS })
  } catch (err) {
    cache.close()
    throw err
  }
  if (options.dryRun !== true && repairs(consistency) > 0) {
    log.warn(consistency, 'cache was inconsistent at start (interrupted downloads or a crash); repaired')
  }

  const upstreams = new Map<string, UpstreamClient>()
  for (const u of config.upstreams.values()) upstreams.set(u.name, new UpstreamClient({ config: u, log, events, now }))
  const upstream = (name: string): UpstreamClient => {
    const client = upstreams.get(name)
    if (client === undefined) throw new Error(`no upstream client for ${name}`)
    return client
  }
  const evictor = new Evictor({ cache, log, now, policy: config.storage, events })
  const eviction = new EvictionSchedule({ evictor, usedBytes: cache.usedBytes(), interval: config.storage.evictionInterval, log })
  // Only a mirror that owns the data directory scrubs it; a command run beside it does not.
  const scrubber = options.owner === true ? new Scrubber({ cache, rate: config.storage.scrubRate, interval: config.storage.scrubInterval, log, events }) : undefined
  const hasher = new FileHasher()
  const offline = config.offline
  const pulls = new RecentPulls(now)
  const blobs = new BlobService({ cache, upstream, log, events, space: eviction, pulls, offline, hasher })
  const manifests = new ManifestService({ cache, upstream, tagTtl: config.cache.tagTtl, log, now, offline, pulls })
  const listings = new ListingService({ cache, upstream, referrersTtl: config.cache.tagTtl, now, offline })

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => {
      await scrubber?.close()
      await Promise.all([...upstreams.values()].map(async u => await u.close()))
      await blobs.idle() // downloads end (committed or discarded) before the index closes
      await hasher.close()
      await eviction.close()
      cache.close()
    })()
    await closing
  }
  const upstreamStates = (): Record<string, string> => Object.fromEntries([...upstreams.values()].map(u => {
    const down = u.down
    return [u.name, down === undefined ? 'up' : `down since ${new Date(down.since).toISOString()}, tried again after ${new Date(down.until).toISOString()}`]
  }))
  return { config, cache, evictor, eviction, blobs, manifests, listings, routing: routingTable(config), upstream, upstreamStates, consistency, close }
}
