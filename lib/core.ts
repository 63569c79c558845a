// Opens a data directory: the one way every command (serve, warm, export,
// import, gc, pin, unpin, stats) gets at the cache. It makes the parts (the
// read-buffer pool, the staging directory, the blob store, the index) and
// hands them to the local cache, which owns them from then on; it removes
// what interrupted downloads left in staging, then builds eviction and the
// pull-through services on the cache. Opening costs the same whatever the
// cache holds: the full sweep (lib/cache/consistency.ts) runs in `gc`, and
// once in the background of a serving mirror. No HTTP here: `serve` adds its
// listeners on top (lib/server.ts).

import { createHash } from 'node:crypto'
import { hostname } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { emptySweepReport, repairs, type SweepOptions, type SweepReport } from './cache/consistency.js'
import { Evictor } from './cache/eviction.js'
import { EvictionSchedule } from './cache/eviction-schedule.js'
import { ChunkHasher } from './cache/chunk-hasher.js'
import { LocalCache } from './cache/local-cache.js'
import { RecentPulls } from './cache/recent-pulls.js'
import { Scrubber } from './cache/scrubber.js'
import type { MirrorConfig } from './config/types.js'
import { CacheIndex } from './db/cache-index.js'
import { ConfigError } from './errors.js'
import { Events, type MirrorEvents } from './events.js'
import { BlobService } from './mirror/blobs.js'
import { ListingService } from './mirror/listings.js'
import { ManifestService } from './mirror/manifests.js'
import { blobReadBuffers, type BufferPool } from './store/buffer-pool.js'
import type { BlobStore } from './store/blob-store.js'
import { FsBlobStore } from './store/fs-blob-store.js'
import { Staging } from './store/staging.js'
import type { UpstreamClient } from './upstream/client.js'
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
  /**
   * Run the full sweep at opening (`gc`), with its dry run and verify; staging is then only
   * reported too when it is a dry run. Without it, opening only cleans staging.
   */
  readonly sweep?: SweepOptions | undefined
  /** Milliseconds between tries at putting a blob into a bucket (tests of a failing store). */
  readonly uploadRetryDelays?: readonly number[] | undefined
  /**
   * False for commands that only read and tidy the data directory (stats, pin, gc): no upstream
   * clients, and the HTTP client library not even loaded (a sixth of such a command's time).
   */
  readonly upstreams?: boolean | undefined
  /** The command opening the data directory, as the eviction log names it; `serve` for the owner. */
  readonly command?: string | undefined
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
  /** What opening repaired: staging, and everything else when `sweep` was asked for. */
  readonly consistency: SweepReport
  /** The pool blob reads go into; whoever sends a chunk gives its buffer back. */
  readonly readBuffers: BufferPool
  /** Resolves when the background sweep of a serving mirror is done (at once for other commands). */
  readonly swept: Promise<SweepReport | undefined>
  close: () => Promise<void>
}

export async function openCore (config: MirrorConfig, log: Logger, options: CoreOptions = {}): Promise<MirrorCore> {
  const now = options.now ?? Date.now
  const outer = options.events ?? new Events()
  const readBuffers = blobReadBuffers()
  // Staging is on the data directory's volume: a blob file moves into the store by rename.
  const staging = new Staging({ dir: join(config.storage.path, 'tmp'), freeBytes: options.freeBytes, readBuffers })
  const s3 = config.storage.s3
  await usablePath(config, async () => await staging.init())
  let store: BlobStore
  if (s3 === undefined) {
    const fs = new FsBlobStore({ root: config.storage.path, readBuffers })
    await usablePath(config, async () => await fs.init())
    store = fs
  } else {
    // The AWS SDK is loaded only for a bucket: a third of a second of every command's start.
    const { BucketSetupError, S3BlobStore } = await import('./store/s3-blob-store.js')
    const { TieredBlobStore } = await import('./store/tiered-blob-store.js')
    const remote = new S3BlobStore({ config: s3 })
    store = s3.localCache === undefined
      ? remote
      // Hot blobs on the node's own disk, beside staging (a copy is a hard link to the staged file).
      : new TieredBlobStore({ remote, dir: join(config.storage.path, 'hot'), maxBytes: s3.localCache, readBuffers, log })
    try {
      await store.init()
    } catch (err) {
      store.close?.()
      // A bucket that is missing or refuses the credentials stops the start, naming the key at fault.
      if (err instanceof BucketSetupError) throw new ConfigError(config.source ?? 'config', [`${err.key}: ${err.message}`])
      throw err
    }
  }
  const index = new CacheIndex({ path: join(config.storage.path, 'index.db'), now })
  const cache = new LocalCache({ index, store, staging, readBuffers, hotEntries: config.cache.hotEntries, log, now, events: outer, uploadRetryDelays: options.uploadRetryDelays, node: nodeName(config), process: options.command ?? (options.owner === true ? 'serve' : 'cli') })
  // Evictions and scrub removals go into the index's log, whichever command made them; a serving
  // mirror also notes which upstreams are down (the cache listens), for `registry-mirror stats`.
  const events = new Events(options.owner === true ? [outer, cache.evictions, cache] : [outer, cache.evictions])
  if (options.owner === true) for (const name of config.upstreams.keys()) cache.noteUpstreamDown(name, 0)
  const dryRun = options.sweep?.dryRun === true
  let consistency: SweepReport
  try {
    const cleaned = await cache.cleanStaging({ minAgeMs: options.owner === true ? 0 : LIVE_TEMP_AGE_MS, dryRun, now })
    consistency = { ...(options.sweep === undefined ? emptySweepReport() : await cache.sweep(options.sweep)), ...cleaned }
  } catch (err) {
    cache.close()
    throw err
  }
  if (!dryRun && repairs(consistency) > 0) {
    log.warn(consistency, 'cache was inconsistent at start (interrupted downloads or a crash); repaired')
  }

  const upstreams = new Map<string, UpstreamClient>()
  if (options.upstreams !== false) {
    const { UpstreamClient } = await import('./upstream/client.js')
    for (const u of config.upstreams.values()) upstreams.set(u.name, new UpstreamClient({ config: u, log, events, now, buffers: readBuffers }))
  }
  const upstream = (name: string): UpstreamClient => {
    const client = upstreams.get(name)
    if (client === undefined) throw new Error(`no upstream client for ${name}${options.upstreams === false ? ' in a command that opened none' : ''}`)
    return client
  }
  const evictor = new Evictor({ cache, log, now, policy: config.storage, events })
  const eviction = new EvictionSchedule({ evictor, usedBytes: cache.usedBytes(), interval: config.storage.evictionInterval, log })
  // Only a mirror that owns the data directory scrubs it; a command run beside it does not.
  const scrubber = options.owner === true ? new Scrubber({ cache, rate: config.storage.scrubRate, interval: config.storage.scrubInterval, log, events }) : undefined
  const hasher = new ChunkHasher()
  const offline = config.offline
  const pulls = new RecentPulls(now)
  const blobs = new BlobService({ cache, upstream, log, events, space: eviction, pulls, offline, hasher, redirect: s3?.redirect })
  const manifests = new ManifestService({ cache, upstream, tagTtl: config.cache.tagTtl, log, now, offline, pulls })
  const listings = new ListingService({ cache, upstream, referrersTtl: config.cache.tagTtl, now, offline })

  // A serving mirror sweeps once, in the background: after a crash, blob files without a row
  // take room the index does not count, and rows may name files lost with it.
  const stopSweep = new AbortController()
  const swept: Promise<SweepReport | undefined> = options.owner !== true
    ? Promise.resolve(undefined)
    : new Promise<void>(resolve => setImmediate(resolve)).then(async () => await cache.sweep({ signal: stopSweep.signal })).then(report => {
      if (repairs(report) > 0) log.warn(report, 'the background sweep found the cache inconsistent (a crash?); repaired')
      else log.debug(report, 'background sweep done')
      return report
    }, (err: unknown) => {
      log.error({ err }, 'background sweep failed')
      return undefined
    })

  let closing: Promise<void> | undefined
  const close = async (): Promise<void> => {
    closing ??= (async () => {
      stopSweep.abort()
      await swept
      await scrubber?.close()
      await Promise.all([...upstreams.values()].map(async u => await u.close()))
      await blobs.idle() // downloads end (committed or discarded) before the index closes
      await cache.finishUploads()
      await hasher.close()
      await eviction.close()
      cache.close()
      store.close?.()
    })()
    await closing
  }
  const upstreamStates = (): Record<string, string> => Object.fromEntries([...upstreams.values()].map(u => {
    const down = u.down
    return [u.name, down === undefined ? 'up' : `down since ${new Date(down.since).toISOString()}, tried again after ${new Date(down.until).toISOString()}`]
  }))
  return { config, cache, evictor, eviction, blobs, manifests, listings, routing: routingTable(config), upstream, upstreamStates, consistency, readBuffers, swept, close }
}

/**
 * Runs a step that makes directories under storage.path; a path that cannot hold them (not
 * a directory, not writable by this user, a read-only volume) is a problem of the config,
 * said as one, naming the path.
 */
async function usablePath (config: MirrorConfig, step: () => Promise<void>): Promise<void> {
  try {
    await step()
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EACCES' || code === 'EPERM' || code === 'ENOTDIR' || code === 'EROFS' || code === 'EEXIST') {
      const where = (err as NodeJS.ErrnoException).path ?? config.storage.path
      throw new ConfigError(config.source ?? 'config', [`storage.path: ${config.storage.path} cannot be used (${code} on ${where}): it must be a directory this user (uid ${process.getuid?.() ?? '?'}) can write, such as a mounted volume`])
    }
    throw err
  }
}

/** This node's name among a fleet's: its host, and its data directory (two mirrors may share a host). */
function nodeName (config: MirrorConfig): string {
  return `${hostname()}-${createHash('sha256').update(config.storage.path).digest('hex').slice(0, 8)}`
}
