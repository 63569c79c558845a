// The one reader of manifest bytes: what an image manifest, an index (or
// Docker manifest list), an OCI artifact manifest or a Docker schema 1
// manifest names. Pins, warm, export, import and the manifest service all use
// it, so what eviction protects is what warm fetches and export writes.

import { ManifestInvalidError, UnavailableError } from '../errors.js'
import { INDEX_TYPES, isMediaType, MANIFEST_TYPES, MediaTypes } from './media-types.js'
import { platformOf, type PlatformSpec } from './platform.js'
import { isDigest } from './reference.js'

/**
 * What a descriptor points at: a child manifest of an index, the config or a
 * layer of an image, or one of an artifact manifest's `blobs`.
 */
export type DescriptorKind = 'manifest' | 'config' | 'layer' | 'blob'

export interface ChildDescriptor {
  readonly digest: string
  /** As the descriptor states it; Docker schema 1 states none. */
  readonly size: number | undefined
  readonly mediaType: string | undefined
  readonly kind: DescriptorKind
  readonly platform: PlatformSpec | undefined
}

export interface ParsedManifest {
  /** An index (or Docker manifest list): its children are manifests. */
  readonly isIndex: boolean
  /** The body's own `mediaType`, when it states one. */
  readonly mediaType: string | undefined
  readonly artifactType: string | undefined
  /** Everything the manifest needs to be whole: child manifests, config, layers, blobs. */
  readonly children: readonly ChildDescriptor[]
  /** The manifest an artifact refers to (`subject`); not part of it, so not a child. */
  readonly subject: ChildDescriptor | undefined
  /** Descriptors that were skipped, each said in words (a missing or invalid digest). */
  readonly problems: readonly string[]
}

/** Parses manifest bytes; throws ManifestInvalidError when they are not a JSON object. */
export function parseManifest (content: Buffer): ParsedManifest {
  let parsed: unknown
  try {
    parsed = JSON.parse(content.toString('utf8'))
  } catch {
    throw new ManifestInvalidError('manifest is not JSON')
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ManifestInvalidError('manifest is not a JSON object')
  const record = parsed as Record<string, unknown>
  const mediaType = typeof record.mediaType === 'string' ? record.mediaType : undefined
  const children: ChildDescriptor[] = []
  const problems: string[] = []
  const descriptor = (value: unknown, kind: DescriptorKind): ChildDescriptor | undefined => {
    if (typeof value !== 'object' || value === null) return undefined
    const d = value as Record<string, unknown>
    if (typeof d.digest !== 'string' || !isDigest(d.digest)) {
      problems.push(`a ${kind} descriptor has no valid digest`)
      return undefined
    }
    const size = typeof d.size === 'number' && Number.isSafeInteger(d.size) && d.size >= 0 ? d.size : undefined
    return { digest: d.digest, size, mediaType: typeof d.mediaType === 'string' ? d.mediaType : undefined, kind, platform: kind === 'manifest' ? platformOf(d) : undefined }
  }
  const take = (value: unknown, kind: DescriptorKind): void => {
    const d = descriptor(value, kind)
    if (d !== undefined) children.push(d)
  }
  const isIndex = Array.isArray(record.manifests) || (mediaType !== undefined && INDEX_TYPES.has(mediaType))
  if (Array.isArray(record.manifests)) for (const m of record.manifests) take(m, 'manifest')
  take(record.config, 'config')
  if (Array.isArray(record.layers)) for (const l of record.layers) take(l, 'layer')
  if (Array.isArray(record.blobs)) for (const b of record.blobs) take(b, 'blob')
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
  const artifactType = typeof record.artifactType === 'string' ? record.artifactType : undefined
  return { isIndex, mediaType, artifactType, children, subject: descriptor(record.subject, 'manifest'), problems }
}

/** Like parseManifest, but a descriptor without a valid digest makes the whole manifest invalid. */
export function parseManifestStrictly (content: Buffer): ParsedManifest {
  const parsed = parseManifest(content)
  const [problem] = parsed.problems
  if (problem !== undefined) throw new ManifestInvalidError(problem)
  return parsed
}

/** What a cached manifest names, or nothing when its bytes are not a manifest: for walking what the cache holds. */
export function childrenOf (content: Buffer): readonly ChildDescriptor[] {
  try {
    return parseManifest(content).children
  } catch {
    return []
  }
}

/** Media types an upstream may send that say nothing of what the manifest is. */
const VAGUE_TYPES = new Set(['', 'application/json', 'text/plain', 'application/octet-stream'])

/**
 * The media type of manifest bytes from an upstream, once they are found to be a manifest:
 * valid JSON of a known manifest or index type, as its own `mediaType` says (so no
 * upstream's Content-Type can change it), else as a specific Content-Type says, else as
 * its shape says. Anything else is refused as the upstream's fault.
 */
export function manifestMediaType (contentType: string | undefined, content: Buffer): string {
  let parsed: ParsedManifest
  try {
    parsed = parseManifest(content)
  } catch {
    throw new UnavailableError('upstream sent a manifest that is not JSON')
  }
  const named = contentType?.split(';')[0]?.trim().toLowerCase() ?? ''
  const type = parsed.mediaType ?? (VAGUE_TYPES.has(named) ? shapeOf(content) : named)
  if (!isMediaType(type) || !MANIFEST_TYPES.has(type)) {
    throw new UnavailableError(`upstream sent a ${JSON.stringify(type.slice(0, 80))} document where a manifest belongs`)
  }
  const problem = parsed.problems[0] ?? structuralProblem(type, content)
  if (problem !== undefined) throw new UnavailableError(`upstream sent an invalid manifest: ${problem}`)
  return type
}

/** The type a manifest without a stated one has, by what registries assume. */
function shapeOf (content: Buffer): string {
  const record = JSON.parse(content.toString('utf8')) as Record<string, unknown>
  if (Array.isArray(record.manifests)) return MediaTypes.ociIndex
  if (record.schemaVersion === 1) return MediaTypes.dockerSchema1
  return MediaTypes.ociManifest
}

/** What a manifest of this type lacks, if anything. */
function structuralProblem (type: string, content: Buffer): string | undefined {
  const record = JSON.parse(content.toString('utf8')) as Record<string, unknown>
  const object = (v: unknown): boolean => typeof v === 'object' && v !== null && !Array.isArray(v)
  if (INDEX_TYPES.has(type)) return Array.isArray(record.manifests) ? undefined : 'an index without a manifests list'
  if (type === MediaTypes.dockerSchema1 || type === MediaTypes.dockerSchema1Signed) return Array.isArray(record.fsLayers) ? undefined : 'a schema 1 manifest without fsLayers'
  if (type === MediaTypes.ociArtifact) return record.blobs === undefined || Array.isArray(record.blobs) ? undefined : 'an artifact manifest whose blobs are not a list'
  if (!object(record.config)) return 'an image manifest without a config'
  if (record.layers !== undefined && !Array.isArray(record.layers)) return 'an image manifest whose layers are not a list'
  return undefined
}
