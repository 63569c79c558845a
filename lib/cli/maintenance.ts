// The maintenance commands (gc, pin, unpin, stats). They work on the data
// directory directly, whether or not a mirror is serving it: SQLite in WAL
// mode lets both at the index, and files only ever appear by rename.

import { join } from 'node:path'
import type { Logger } from 'pino'
import { checkConsistency, type ConsistencyReport } from '../cache/consistency.js'
import { Evictor, type EvictionResult } from '../cache/eviction.js'
import { pinnedContent } from '../cache/pins.js'
import type { MirrorConfig } from '../config/types.js'
import { CacheIndex } from '../db/cache-index.js'
import { formatImageReference, parseImageReference } from '../image-ref.js'
import { BlobStore } from '../store/blob-store.js'
import type { RoutingTable } from '../upstream/routing.js'

/** Temp files younger than this may belong to a download a running mirror is doing. */
export const LIVE_TEMP_AGE_MS = 60 * 60 * 1000

export interface CacheHandle {
  readonly index: CacheIndex
  readonly store: BlobStore
  readonly routing: RoutingTable
  close (): void
}

export async function openCache (config: MirrorConfig): Promise<CacheHandle> {
  const store = new BlobStore(config.storage.path)
  await store.init()
  const index = new CacheIndex({ path: join(config.storage.path, 'index.db') })
  const defaultUpstream = [...config.upstreams.values()].find(u => u.default)?.name
  return { index, store, routing: { upstreams: new Set(config.upstreams.keys()), defaultUpstream }, close: () => index.close() }
}

export interface GcResult { consistency: ConsistencyReport, eviction: EvictionResult }

export async function gc (cache: CacheHandle, config: MirrorConfig, log: Logger, dryRun: boolean): Promise<GcResult> {
  const consistency = await checkConsistency({ index: cache.index, store: cache.store, log, dryRun, tempMinAgeMs: LIVE_TEMP_AGE_MS })
  const evictor = new Evictor({ index: cache.index, store: cache.store, log, policy: config.storage })
  const eviction = await evictor.run({ dryRun })
  return { consistency, eviction }
}

export function pin (cache: CacheHandle, images: readonly string[]): Array<{ image: string, cached: boolean }> {
  const refs = images.map(text => parseImageReference(text, cache.routing))
  return refs.map(ref => {
    cache.index.addPin(ref.repository, ref.reference)
    const digest = ref.digest ?? cache.index.getTag(ref.repository, ref.reference)?.digest
    return { image: formatImageReference(ref), cached: digest !== undefined && cache.index.getManifest(digest) !== undefined }
  })
}

export function unpin (cache: CacheHandle, images: readonly string[]): Array<{ image: string, wasPinned: boolean }> {
  const refs = images.map(text => parseImageReference(text, cache.routing))
  return refs.map(ref => ({ image: formatImageReference(ref), wasPinned: cache.index.deletePin(ref.repository, ref.reference) }))
}

export interface Stats {
  totalBytes: number
  blobs: number
  blobBytes: number
  manifests: number
  manifestBytes: number
  tags: number
  repositories: number
  pins: number
  pinnedBytes: number
  requests: { hit: number, miss: number, joined: number, stale: number, revalidated: number, error: number }
  /** Share of blob and manifest requests answered from the cache, 0..1; null before any. */
  hitRatio: number | null
  oldestAccess: string | null
  newestAccess: string | null
}

export function stats (cache: CacheHandle): Stats {
  const totals = cache.index.totals()
  const pinned = pinnedContent(cache.index)
  let pinnedBytes = 0
  for (const digest of pinned.digests) pinnedBytes += cache.index.getBlob(digest)?.size ?? cache.index.getManifest(digest)?.size ?? 0
  const counters = cache.index.counters()
  const sum = (outcome: string): number => (counters.get(`blob.${outcome}`) ?? 0) + (counters.get(`manifest.${outcome}`) ?? 0)
  const requests = { hit: sum('hit'), miss: sum('miss'), joined: sum('joined'), stale: sum('stale'), revalidated: sum('revalidated'), error: sum('error') }
  const fromCache = requests.hit + requests.stale + requests.revalidated
  const served = fromCache + requests.miss + requests.joined
  return {
    totalBytes: totals.blobBytes + totals.manifestBytes,
    blobs: totals.blobs,
    blobBytes: totals.blobBytes,
    manifests: totals.manifests,
    manifestBytes: totals.manifestBytes,
    tags: totals.tags,
    repositories: totals.repositories,
    pins: cache.index.pins().length,
    pinnedBytes,
    requests,
    hitRatio: served === 0 ? null : fromCache / served,
    oldestAccess: totals.oldestAccess === null ? null : new Date(totals.oldestAccess).toISOString(),
    newestAccess: totals.newestAccess === null ? null : new Date(totals.newestAccess).toISOString()
  }
}

export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i] ?? ''}`
}
