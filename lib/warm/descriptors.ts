// What a manifest or index names, with the sizes its descriptors promise:
// child manifests of an index, the config and layers of an image.

import { isDigest, MediaTypes } from '../reference.js'
import { platformOf, type PlatformSpec } from './platform.js'

export interface ChildDescriptor {
  readonly digest: string
  /** As the descriptor states it; Docker schema 1 states none. */
  readonly size: number | undefined
  readonly mediaType: string | undefined
  readonly kind: 'manifest' | 'config' | 'layer'
  readonly platform: PlatformSpec | undefined
}

export interface ParsedManifest {
  /** An index (or Docker manifest list): its children are manifests. */
  readonly isIndex: boolean
  readonly mediaType: string | undefined
  readonly children: readonly ChildDescriptor[]
}

/** Parses manifest bytes; throws when they are not a JSON object. */
export function parseManifest (content: Buffer): ParsedManifest {
  let parsed: unknown
  try {
    parsed = JSON.parse(content.toString('utf8'))
  } catch {
    throw new Error('manifest is not JSON')
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('manifest is not a JSON object')
  const record = parsed as Record<string, unknown>
  const mediaType = typeof record.mediaType === 'string' ? record.mediaType : undefined
  const children: ChildDescriptor[] = []
  const take = (value: unknown, kind: ChildDescriptor['kind']): void => {
    if (typeof value !== 'object' || value === null) return
    const d = value as Record<string, unknown>
    if (typeof d.digest !== 'string' || !isDigest(d.digest)) throw new Error(`a ${kind} descriptor has no valid digest`)
    const size = typeof d.size === 'number' && Number.isSafeInteger(d.size) && d.size >= 0 ? d.size : undefined
    children.push({ digest: d.digest, size, mediaType: typeof d.mediaType === 'string' ? d.mediaType : undefined, kind, platform: kind === 'manifest' ? platformOf(d) : undefined })
  }
  const isIndex = Array.isArray(record.manifests) || mediaType === MediaTypes.ociIndex || mediaType === MediaTypes.dockerList
  if (Array.isArray(record.manifests)) for (const m of record.manifests) take(m, 'manifest')
  take(record.config, 'config')
  if (Array.isArray(record.layers)) for (const l of record.layers) take(l, 'layer')
  // Docker schema 1: fsLayers[].blobSum, often repeated, never sized.
  if (Array.isArray(record.fsLayers)) {
    const seen = new Set<string>()
    for (const l of record.fsLayers) {
      if (typeof l !== 'object' || l === null || !('blobSum' in l) || typeof l.blobSum !== 'string' || !isDigest(l.blobSum)) continue
      if (seen.has(l.blobSum)) continue
      seen.add(l.blobSum)
      children.push({ digest: l.blobSum, size: undefined, mediaType: undefined, kind: 'layer', platform: undefined })
    }
  }
  return { isIndex, mediaType, children }
}
