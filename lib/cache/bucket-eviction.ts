// Eviction from a bucket the fleet shares. No node's index knows what the
// others serve, so no node decides from its own rows: each node that serves a
// blob marks it in the bucket (at most every MARK_EVERY_MS, and before it
// redirects a client to it), and a mark's time is the fleet's last access.
// Any node's pass deletes a blob only when
//   - the fleet has not touched it for longer than the policy allows (maxAge,
//     or least recently used first past maxSize's high watermark), and
//   - not for at least the life of a presigned URL for it plus two mark
//     intervals (a client handed the blob by any node may still be fetching
//     it: a node that handed it out within a mark interval has marked it),
//   - no node pins it (each node writes its pins into the bucket), and
//   - its mark, looked at again just before the delete, is still as old.
// The one window left is that last round trip: a node whose first access
// after all that idleness lands between the look and the delete. A stream
// already under way is not cut by the delete (the store keeps serving an
// object being read); a client redirected in that window gets a 404 from the
// store, and its retry is a miss that fetches the blob again.
//
// Several nodes may run passes at once: deletes are idempotent, and each
// node's rows for a blob deleted elsewhere are dropped when next asked for.

import type { Logger } from 'pino'
import type { EvictedItem, EvictionReason, MirrorEvents } from '../events.js'
import type { BlobStore, SharedContent } from '../store/blob-store.js'
import type { EvictionPolicy } from './eviction.js'

/** A node marks a blob it serves at most this often. */
export const MARK_EVERY_MS = 10 * 60 * 1000

export interface BucketEvictionParts {
  readonly store: BlobStore
  readonly shared: SharedContent
  /** This node's name in the bucket's pins. */
  readonly node: string
  /** What this node pins (manifests and the blobs they name). */
  readonly pinned: () => ReadonlySet<string>
  /** Drops this node's row of a blob the pass deleted. */
  readonly dropRow: (digest: string) => void
  readonly log: Logger
  readonly now: () => number
  readonly events?: Pick<MirrorEvents, 'evicted'> | undefined
}

export interface BucketEvictionResult {
  readonly removed: number
  readonly bytes: number
  /** Bytes of blobs in the bucket after the pass. */
  readonly bucketBytes: number
  /** Candidates left alone because a node touched them since the listing. */
  readonly spared: number
}

/**
 * Writes what `node` pins into the bucket (and takes back what it no longer pins); returns what
 * every node pins. Run by each eviction pass, and by `pin`/`unpin` at once, so that no other
 * node's pass takes a blob in between.
 */
export async function publishPins (shared: SharedContent, node: string, own: ReadonlySet<string>, options: { dryRun?: boolean } = {}): Promise<Set<string>> {
  const everyones = new Set<string>(own)
  const listedOwn = new Set<string>()
  for await (const pin of shared.pins()) {
    everyones.add(pin.digest)
    if (pin.node === node) listedOwn.add(pin.digest)
  }
  if (options.dryRun !== true) {
    for (const digest of own) if (!listedOwn.has(digest)) await shared.putPin(node, digest)
    for (const digest of listedOwn) if (!own.has(digest)) await shared.removePin(node, digest)
  }
  return everyones
}

export async function evictBucket (parts: BucketEvictionParts, policy: EvictionPolicy, options: { dryRun?: boolean | undefined } = {}): Promise<BucketEvictionResult> {
  const { store, shared, log } = parts
  const now = parts.now()
  const dryRun = options.dryRun === true

  // 1. This node's pins, written into the bucket; everyone's, read back.
  const protectedDigests = await publishPins(shared, parts.node, parts.pinned(), { dryRun })
  if (policy.maxAge === undefined && policy.maxSize === undefined) return { removed: 0, bytes: 0, bucketBytes: 0, spared: 0 }

  // 2. What the bucket holds, and when the fleet last touched each blob.
  const marks = new Map<string, number>()
  for await (const mark of shared.marks()) marks.set(mark.digest, mark.at)
  const blobs: Array<{ digest: string, size: number, lastAccess: number }> = []
  let bucketBytes = 0
  for await (const object of store.list()) {
    if (object.digest === undefined) continue
    bucketBytes += object.size
    blobs.push({ digest: object.digest, size: object.size, lastAccess: Math.max(marks.get(object.digest) ?? 0, object.storedAt ?? 0) })
  }
  blobs.sort((a, b) => a.lastAccess - b.lastAccess)

  let removed = 0
  let bytes = 0
  let spared = 0
  const eligible = (blob: { digest: string, size: number, lastAccess: number }): boolean =>
    !protectedDigests.has(blob.digest) && now - blob.lastAccess >= shared.holdMs(blob.size) + 2 * MARK_EVERY_MS
  const remove = async (blob: { digest: string, size: number, lastAccess: number }, reason: EvictionReason): Promise<boolean> => {
    // Looked at again just before the delete: a node may have handed it out since the listing.
    const marked = await shared.markedAt(blob.digest)
    if (marked !== undefined && marked > blob.lastAccess) {
      spared++
      return false
    }
    log.info({ digest: blob.digest, size: blob.size, reason, idleMs: now - blob.lastAccess, dryRun }, 'evicting from the shared bucket')
    if (!dryRun) {
      await store.delete(blob.digest)
      parts.dropRow(blob.digest)
    }
    removed++
    bytes += blob.size
    bucketBytes -= blob.size
    const item: EvictedItem = { kind: 'blob', digest: blob.digest, size: blob.size, reason, tags: [] }
    parts.events?.evicted(item)
    return true
  }

  const gone = new Set<string>()
  // 3. Age: what the fleet has not touched within maxAge.
  if (policy.maxAge !== undefined) {
    for (const blob of blobs) {
      if (now - blob.lastAccess <= policy.maxAge) break // sorted: the rest are younger
      if (eligible(blob) && await remove(blob, 'age')) gone.add(blob.digest)
    }
  }
  // 4. Size: past the high watermark, least recently touched first, down to the low one.
  if (policy.maxSize !== undefined && bucketBytes > policy.maxSize * policy.highWatermark) {
    const target = policy.maxSize * policy.lowWatermark
    for (const blob of blobs) {
      if (bucketBytes <= target) break
      if (!gone.has(blob.digest) && eligible(blob) && await remove(blob, 'size')) gone.add(blob.digest)
    }
  }
  if (removed > 0 || spared > 0) log.info({ removed, bytes, bucketBytes, spared, dryRun }, 'evicted from the shared bucket')
  return { removed, bytes, bucketBytes, spared }
}
