// Keeps the cache within its bounds: anything not accessed within maxAge goes,
// and past the high watermark of maxSize the least recently used blobs and
// manifests go until the low watermark is reached. Pinned images never go.
// A blob's row is deleted before its file, so a request after that is a miss
// (and fetches again); readers with the file already open keep reading it.

import type { Logger } from 'pino'
import type { EvictionReason, MirrorEvents } from '../events.js'
import type { LocalCache } from './local-cache.js'
import { childrenOf } from '../oci/manifest.js'
import type { BucketEvictionResult } from './bucket-eviction.js'
import type { PinnedContent } from './pins.js'

export interface EvictionPolicy {
  /** Bytes; undefined = no size bound. */
  readonly maxSize: number | undefined
  /** Milliseconds since last access; undefined = no age bound. */
  readonly maxAge: number | undefined
  /** Fractions of maxSize: start evicting above high, stop at low. */
  readonly highWatermark: number
  readonly lowWatermark: number
}

export interface EvictionResult {
  readonly removed: number
  readonly bytes: number
  readonly byReason: Readonly<Record<EvictionReason, { count: number, bytes: number }>>
  /** Bytes cached after the run. */
  readonly usedBytes: number
  readonly pinnedBytes: number
  /** The shared bucket's pass, when the blobs are in one. */
  readonly bucket?: BucketEvictionResult | undefined
}

export interface EvictionRequest {
  /** Free at least this many bytes on top of the policy, for a write that found the disk full. */
  readonly needBytes?: number
  readonly dryRun?: boolean
  /** Manifests (with what they name) this pass must leave alone: the images being pulled. */
  readonly protect?: Iterable<string>
}

export interface EvictorOptions {
  readonly cache: LocalCache
  readonly policy: EvictionPolicy
  readonly log: Logger
  readonly now?: () => number
  /** Told of each removal. */
  readonly events?: Pick<MirrorEvents, 'evicted'> | undefined
}

const BATCH = 500

export class Evictor {
  readonly #o: EvictorOptions
  readonly #now: () => number
  #running: Promise<EvictionResult> | undefined
  #again = false

  constructor (options: EvictorOptions) {
    this.#o = options
    this.#now = options.now ?? Date.now
  }

  get policy (): EvictionPolicy { return this.#o.policy }

  /** Resolves when no pass is under way. */
  async idle (): Promise<void> {
    while (this.#running !== undefined) await this.#running.catch(() => {})
  }

  /** True when the cache holds more than the high watermark. */
  overHighWatermark (usedBytes: number): boolean {
    const { maxSize, highWatermark } = this.#o.policy
    return maxSize !== undefined && usedBytes > maxSize * highWatermark
  }

  /**
   * Runs one eviction pass; concurrent calls share the pass under way (and ask
   * for one more after it). `needBytes` frees at least that much on top of the
   * policy, for a write that found the disk full.
   */
  async run (options: EvictionRequest = {}): Promise<EvictionResult> {
    if (this.#running !== undefined) {
      this.#again = true
      return await this.#running
    }
    this.#running = this.#pass(options).finally(() => { this.#running = undefined })
    const result = await this.#running
    if (this.#again) {
      this.#again = false
      return await this.run()
    }
    return result
  }

  /** Bytes a pass could free at most: everything but pinned images and those named in `protect`. */
  evictableBytes (protect: Iterable<string> = []): number {
    const { cache } = this.#o
    // Rows of a bucket's blobs take no room on this node's disk: dropping them frees none.
    if (!cache.evictionFreesDisk) return 0
    const t = cache.totals()
    const kept = this.#kept(cache.pinnedContent(), protect)
    return t.blobBytes + t.manifestBytes - cache.bytesOf(kept)
  }

  /** Pinned content, and the manifests in `protect` with everything they name. */
  #kept (pinned: PinnedContent, protect: Iterable<string>): Set<string> {
    const { cache } = this.#o
    const kept = new Set(pinned.digests)
    const visit = (digest: string): void => {
      if (kept.has(digest)) return
      kept.add(digest)
      const manifest = cache.storedManifest(digest)
      if (manifest === undefined) return
      for (const child of childrenOf(manifest)) visit(child.digest)
    }
    for (const digest of protect) visit(digest)
    return kept
  }

  async #pass (options: EvictionRequest): Promise<EvictionResult> {
    const { cache, policy, log } = this.#o
    // Batched last-access times first, so the least recently used really are.
    cache.access.flush()
    const pinned = cache.pinnedContent()
    // Never evicted: pinned images, and the images being pulled.
    const kept = this.#kept(pinned, options.protect ?? [])
    const totals = cache.totals()
    let used = totals.blobBytes + totals.manifestBytes
    const byReason: Record<EvictionReason, { count: number, bytes: number }> = {
      age: { count: 0, bytes: 0 }, size: { count: 0, bytes: 0 }, space: { count: 0, bytes: 0 }
    }
    const pinnedTotal = cache.bytesOf(pinned.digests)
    const remove = async (c: { kind: 'blob' | 'manifest', digest: string, size: number }, reason: EvictionReason): Promise<void> => {
      let tags: Array<{ repository: string, tag: string }> = []
      if (options.dryRun !== true) {
        if (c.kind === 'blob') await cache.removeBlob(c.digest)
        else tags = cache.removeManifest(c.digest)
      }
      used -= c.size
      log.info({ kind: c.kind, digest: c.digest, size: c.size, reason, dryRun: options.dryRun === true }, 'evicting')
      byReason[reason].count++
      byReason[reason].bytes += c.size
      this.#o.events?.evicted({ kind: c.kind, digest: c.digest, size: c.size, reason, tags })
    }

    // 1. Age: everything not accessed within maxAge.
    if (policy.maxAge !== undefined) {
      const cutoff = this.#now() - policy.maxAge
      // Referrers answers too old to be served fresh go with the rest.
      if (options.dryRun !== true) cache.dropReferrersBefore(cutoff)
      const skipped = new Set<string>()
      for (;;) {
        const batch = cache.evictionCandidates(cutoff, BATCH + skipped.size).filter(c => !skipped.has(c.digest))
        if (batch.length === 0) break
        for (const c of batch) {
          if (kept.has(c.digest) || options.dryRun === true) skipped.add(c.digest)
          if (!kept.has(c.digest)) await remove(c, 'age')
        }
        await yieldToRequests()
      }
    }

    // 2. Size: past the high watermark (or asked for room), least recently used first, down to the low one.
    const need = options.needBytes ?? 0
    const overSize = policy.maxSize !== undefined && used > policy.maxSize * policy.highWatermark
    if (overSize || need > 0) {
      const target = Math.max(0, Math.min(
        policy.maxSize !== undefined && overSize ? policy.maxSize * policy.lowWatermark : Infinity,
        need > 0 ? used - need : Infinity))
      const reason: EvictionReason = need > 0 && !overSize ? 'space' : 'size'
      const skipped = new Set<string>()
      let exhausted = false
      while (used > target && !exhausted) {
        const batch = cache.evictionCandidates(Number.MAX_SAFE_INTEGER, BATCH + skipped.size)
          .filter(c => !skipped.has(c.digest))
        exhausted = true
        for (const c of batch) {
          if (used <= target) break
          if (kept.has(c.digest)) {
            skipped.add(c.digest)
            continue
          }
          exhausted = false
          if (options.dryRun === true) skipped.add(c.digest)
          await remove(c, reason)
        }
        await yieldToRequests()
      }
      if (policy.maxSize !== undefined && used > policy.maxSize && pinnedTotal > 0) {
        log.warn({ usedBytes: used, maxSize: policy.maxSize, pinnedBytes: pinnedTotal }, 'pinned images alone keep the cache above storage.maxSize; they are not evicted')
      }
    }

    const removed = byReason.age.count + byReason.size.count + byReason.space.count
    const bytes = byReason.age.bytes + byReason.size.bytes + byReason.space.bytes
    if (removed > 0) {
      log.info({ removed, bytes, byReason, usedBytes: used, dryRun: options.dryRun === true }, 'evicted cache entries')
    }
    // A shared bucket is bounded by the fleet's last access to each blob, not by this node's rows.
    const bucket = options.needBytes === undefined
      ? await cache.evictShared(policy, { dryRun: options.dryRun, events: this.#o.events })
      : undefined
    return { removed, bytes, byReason, usedBytes: used, pinnedBytes: pinnedTotal, bucket }
  }
}

async function yieldToRequests (): Promise<void> {
  await new Promise(resolve => setImmediate(resolve))
}
