// What pins protect: for each pinned image, its manifest (or index), every
// manifest an index names, and every config and layer blob they reference.

import type { CacheIndex } from '../db/cache-index.js'
import { isDigest } from '../reference.js'

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
    for (const child of referencedDigests(manifest.content)) {
      if (child.manifest) visit(child.digest)
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

/** The descriptors a manifest or index names: child manifests of an index, config and layers of an image. */
export function referencedDigests (content: Buffer): Array<{ digest: string, manifest: boolean }> {
  let parsed: unknown
  try {
    parsed = JSON.parse(content.toString('utf8'))
  } catch {
    return []
  }
  if (typeof parsed !== 'object' || parsed === null) return []
  const out: Array<{ digest: string, manifest: boolean }> = []
  const record = parsed as Record<string, unknown>
  const take = (value: unknown, manifest: boolean): void => {
    if (typeof value === 'object' && value !== null && 'digest' in value && typeof value.digest === 'string' && isDigest(value.digest)) {
      out.push({ digest: value.digest, manifest })
    }
  }
  if (Array.isArray(record.manifests)) for (const m of record.manifests) take(m, true)
  take(record.config, false)
  if (Array.isArray(record.layers)) for (const l of record.layers) take(l, false)
  if (Array.isArray(record.blobs)) for (const b of record.blobs) take(b, false)
  // Docker schema 1: fsLayers[].blobSum
  if (Array.isArray(record.fsLayers)) {
    for (const l of record.fsLayers) {
      if (typeof l === 'object' && l !== null && 'blobSum' in l && typeof l.blobSum === 'string' && isDigest(l.blobSum)) out.push({ digest: l.blobSum, manifest: false })
    }
  }
  return out
}
