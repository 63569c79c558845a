// What pins protect: for each pinned image, its manifest (or index), every
// manifest an index names, and every config, layer and artifact blob they
// reference (read by the one manifest parser, lib/oci/manifest.ts).

import type { CacheIndex } from '../db/cache-index.js'
import { childrenOf } from '../oci/manifest.js'
import { isDigest } from '../oci/reference.js'

export interface PinnedContent {
  /** Digests of manifests and blobs no eviction may remove. */
  readonly digests: ReadonlySet<string>
  /** Tags that point at pinned images: `${repository}\0${tag}`. */
  readonly tags: ReadonlySet<string>
}

export function pinnedContent (index: CacheIndex): PinnedContent {
  const digests = new Set<string>()
  const tags = new Set<string>()
  const visit = (digest: string): void => {
    if (digests.has(digest)) return
    digests.add(digest)
    const manifest = index.getManifest(digest)
    if (manifest === undefined) return
    for (const child of childrenOf(manifest.content)) {
      if (child.kind === 'manifest') visit(child.digest)
      else digests.add(child.digest)
    }
  }
  for (const pin of index.pins()) {
    if (isDigest(pin.reference)) {
      visit(pin.reference)
    } else {
      const tag = index.getTag(pin.repository, pin.reference)
      tags.add(`${pin.repository}\0${pin.reference}`)
      if (tag !== undefined) visit(tag.digest)
    }
  }
  return { digests, tags }
}

/** Bytes the cache holds of these blobs and manifests (pinned content, say). */
export function bytesOf (index: CacheIndex, digests: Iterable<string>): number {
  let bytes = 0
  for (const digest of digests) bytes += index.getBlob(digest)?.size ?? index.getManifest(digest)?.size ?? 0
  return bytes
}
