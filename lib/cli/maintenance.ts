// The maintenance commands (gc, pin, unpin; stats is the status report, lib/status/report.ts). They work on the data
// directory directly, whether or not a mirror is serving it: SQLite in WAL
// mode lets both at the index, and files only ever appear by rename.

import type { Logger } from 'pino'
import type { SweepReport } from '../cache/consistency.js'
import type { EvictionResult } from '../cache/eviction.js'
import type { MirrorConfig } from '../config/types.js'
import { openCore, type MirrorCore } from '../core.js'
import { formatImageReference, parseImageReference } from '../image-ref.js'

export interface GcResult { consistency: SweepReport, eviction: EvictionResult }

/**
 * Opens the data directory with the consistency check only reported (dry run) or done (with
 * verify, every cached blob and manifest re-hashed), then evicts what the bounds say must go.
 */
export async function gc (config: MirrorConfig, log: Logger, dryRun: boolean, verify = false): Promise<GcResult> {
  const core = await openCore(config, log, { sweep: { dryRun, verify }, upstreams: false, command: 'gc' })
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

export function formatBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i] ?? ''}`
}
