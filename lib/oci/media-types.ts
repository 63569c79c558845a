// Manifest media types the mirror knows, what it asks upstream for, and how a
// client's Accept header is read.

export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  /** The artifact manifest of OCI 1.1's release candidates; some registries still serve it. */
  ociArtifact: 'application/vnd.oci.artifact.manifest.v1+json'
} as const

/** The media types of an index (or Docker manifest list): what it names are manifests. */
export const INDEX_TYPES: ReadonlySet<string> = new Set([MediaTypes.ociIndex, MediaTypes.dockerList])
/** Every manifest media type the mirror caches and serves. */
export const MANIFEST_TYPES: ReadonlySet<string> = new Set(Object.values(MediaTypes))

const TOKEN = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/

/** Whether a string is a media type as RFC 6838 writes one (type/subtype, no parameters, no control characters, bounded). */
export function isMediaType (value: string): boolean {
  return TOKEN.test(value)
}

/** What the mirror asks upstream for when it resolves a tag for its cache: every current type. */
export const MANIFEST_ACCEPT = [
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerList,
  MediaTypes.dockerManifest
].join(', ')

/**
 * Whether a client's Accept header admits a manifest media type. No header
 * admits anything. As RFC 9110 says, the most specific matching range
 * decides, so `type;q=0, *\/*` refuses `type`.
 */
export function accepts (acceptHeader: string | undefined, mediaType: string): boolean {
  if (acceptHeader === undefined || acceptHeader.trim() === '') return true
  const type = mediaType.toLowerCase()
  let best: { specificity: number, refused: boolean } | undefined
  for (const part of acceptHeader.split(',')) {
    const [range = '', ...params] = part.split(';').map(s => s.trim().toLowerCase())
    let specificity = -1
    if (range === type) specificity = 2
    else if (range.endsWith('/*') && range !== '*/*' && type.startsWith(range.slice(0, -1))) specificity = 1
    else if (range === '*/*') specificity = 0
    if (specificity < 0) continue
    const refused = params.some(p => /^q\s*=\s*0(?:\.0*)?$/.test(p))
    if (best === undefined || specificity > best.specificity || (specificity === best.specificity && refused)) {
      best = { specificity, refused }
    }
  }
  return best !== undefined && !best.refused
}
