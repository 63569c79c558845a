// `registry-mirror warm`: on the data directory (the cache's own services,
// whether or not a mirror is serving it) or against a running mirror by URL.

import type { Logger } from 'pino'
import type { MirrorConfig } from '../config/types.js'
import { formatBytes } from '../cli/maintenance.js'
import { openCore } from '../core.js'
import type { RequestedImage } from './image-list.js'
import type { PlatformSpec } from '../oci/platform.js'
import type { Progress } from './progress.js'
import { coreSource, serverSource } from './sources.js'
import { Warmer, type WarmResult } from './warmer.js'

export const DEFAULT_CONCURRENCY = 4

export interface WarmOptions {
  readonly config: MirrorConfig
  readonly log: Logger
  readonly images: readonly RequestedImage[]
  readonly platforms?: readonly PlatformSpec[]
  readonly concurrency?: number
  /** Pin each image warmed (data directory only). */
  readonly pin?: boolean
  /** A running mirror's base URL; undefined = the data directory. */
  readonly server?: string | undefined
  /** For a server with auth. */
  readonly credentials?: { readonly user: string, readonly password: string } | undefined
  readonly progress: Progress
}

export interface WarmReport {
  readonly results: readonly WarmResult[]
  /** Images pinned, canonical names. */
  readonly pinned: readonly string[]
}

export async function warm (options: WarmOptions): Promise<WarmReport> {
  const concurrency = options.concurrency ?? DEFAULT_CONCURRENCY
  if (options.server !== undefined) {
    if (options.pin === true) throw new Error('--pin works on the data directory; run registry-mirror pin on the mirror\'s host')
    const source = await serverSource(options.server, options.credentials)
    try {
      const warmer = new Warmer({ source, platforms: options.platforms, concurrency, verifyCached: true, progress: options.progress })
      return { results: await warmer.run(options.images), pinned: [] }
    } finally {
      options.progress.close()
      await source.close()
    }
  }
  const core = await openCore(options.config, options.log, { command: 'warm' })
  try {
    const warmer = new Warmer({ source: coreSource(core), platforms: options.platforms, concurrency, verifyCached: true, progress: options.progress })
    const results = await warmer.run(options.images)
    const pinned: string[] = []
    if (options.pin === true) {
      for (const r of results) {
        if (!r.ok) continue
        core.cache.addPin(r.image.ref.repository, r.image.ref.reference)
        pinned.push(r.image.name)
      }
    }
    return { results, pinned }
  } finally {
    options.progress.close()
    await core.close()
  }
}

/** The closing lines: totals, then each failure with its reason. */
export function summarize (verb: string, results: readonly WarmResult[]): string[] {
  const ok = results.filter(r => r.ok)
  let blobs = 0
  let fetchedBlobs = 0
  let fetchedBytes = 0
  let cachedBytes = 0
  for (const r of ok) {
    blobs += r.warmed.blobs.length
    fetchedBlobs += r.warmed.fetched.blobs
    fetchedBytes += r.warmed.fetched.bytes
    cachedBytes += r.warmed.cached.bytes
  }
  const lines = [`${verb} ${ok.length} of ${results.length} images: ${blobs} blobs, ${formatBytes(fetchedBytes + cachedBytes)} ` +
    `(${fetchedBlobs} fetched, ${formatBytes(fetchedBytes)}; ${blobs - fetchedBlobs} already cached, ${formatBytes(cachedBytes)})`]
  const failed = results.filter((r): r is Extract<WarmResult, { ok: false }> => !r.ok)
  if (failed.length > 0) {
    lines.push(`${failed.length} failed:`)
    for (const r of failed) lines.push(`  ${r.image.name}: ${r.reason}`)
  }
  return lines
}
