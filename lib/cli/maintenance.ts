// The maintenance commands (gc, pin, unpin, stats). They work on the data
// directory directly, whether or not a mirror is serving it: SQLite in WAL
// mode lets both at the index, and files only ever appear by rename.

import type { Logger } from 'pino'
import type { SweepReport } from '../cache/consistency.js'
import type { EvictionResult } from '../cache/eviction.js'
import type { WriteFailure } from '../cache/local-cache.js'
import type { MirrorConfig } from '../config/types.js'
import { openCore, type MirrorCore } from '../core.js'
import { formatImageReference, parseImageReference } from '../image-ref.js'

export interface GcResult { consistency: SweepReport, eviction: EvictionResult }

/**
 * Opens the data directory with the consistency check only reported (dry run) or done (with
 * verify, every cached blob and manifest re-hashed), then evicts what the bounds say must go.
 */
export async function gc (config: MirrorConfig, log: Logger, dryRun: boolean, verify = false): Promise<GcResult> {
  const core = await openCore(config, log, { sweep: { dryRun, verify }, upstreams: false })
  try {
    return { consistency: core.consistency, eviction: await core.evictor.run({ dryRun }) }
  } finally {
    await core.close()
  }
}

export function pin ({ cache, routing }: MirrorCore, images: readonly string[]): Array<{ image: string, cached: boolean }> {
  const refs = images.map(text => parseImageReference(text, routing))
  return refs.map(ref => {
    cache.addPin(ref.repository, ref.reference)
    const digest = ref.digest ?? cache.tag(ref.repository, ref.reference)?.digest
    return { image: formatImageReference(ref), cached: digest !== undefined && cache.manifest(digest) !== undefined }
  })
}

export function unpin ({ cache, routing }: MirrorCore, images: readonly string[]): Array<{ image: string, wasPinned: boolean }> {
  const refs = images.map(text => parseImageReference(text, routing))
  return refs.map(ref => ({ image: formatImageReference(ref), wasPinned: cache.deletePin(ref.repository, ref.reference) }))
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
  /** Null when the index can be written; else why not (the cache is degraded: a full disk, an I/O error). */
  degraded: string | null
  /** Upstreams the serving mirror has marked down (its circuit open), with since when. */
  upstreamsDown: Array<{ upstream: string, since: string }>
  /** Share of blob and manifest requests answered from the cache, 0..1; null before any. */
  hitRatio: number | null
  oldestAccess: string | null
  newestAccess: string | null
}

export function stats ({ cache }: MirrorCore): Stats {
  const totals = cache.totals()
  const counters = cache.counters()
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
    pins: cache.pins().length,
    pinnedBytes: cache.bytesOf(cache.pinnedContent().digests),
    degraded: degradation(cache.probeWrite()),
    upstreamsDown: cache.upstreamsDown().map(d => ({ upstream: d.upstream, since: new Date(d.since).toISOString() })),
    requests,
    hitRatio: served === 0 ? null : fromCache / served,
    oldestAccess: totals.oldestAccess === null ? null : new Date(totals.oldestAccess).toISOString(),
    newestAccess: totals.newestAccess === null ? null : new Date(totals.newestAccess).toISOString()
  }
}

function degradation (failure: WriteFailure | undefined): string | null {
  return failure === undefined ? null : `the index cannot be written (${failure.message})`
}

export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i] ?? ''}`
}
