// Image references as users write them: `nginx`, `nginx:1.27`,
// `library/nginx@sha256:...`, `ghcr.io/org/app:v1`, resolved against the
// configured upstreams the way a pull through the mirror would be.

import { parseDigest, parseManifestReference } from './oci/reference.js'
import { route, type Route, type RoutingTable } from './upstream/routing.js'

export interface ImageReference extends Route {
  /** A tag or a digest. */
  readonly reference: string
  readonly tag: string | undefined
  readonly digest: string | undefined
  /** As given, for messages. */
  readonly text: string
}

export function parseImageReference (text: string, table: RoutingTable): ImageReference {
  const trimmed = text.trim()
  let rest = trimmed
  let digest: string | undefined
  let tag: string | undefined
  const at = rest.indexOf('@')
  if (at !== -1) {
    digest = parseDigest(rest.slice(at + 1)).digest
    rest = rest.slice(0, at)
  }
  const lastSlash = rest.lastIndexOf('/')
  const colon = rest.indexOf(':', lastSlash + 1)
  if (colon !== -1) {
    tag = rest.slice(colon + 1)
    parseManifestReference(tag)
    rest = rest.slice(0, colon)
  }
  if (digest === undefined && tag === undefined) tag = 'latest'
  const r = route(table, rest, undefined)
  return { ...r, reference: digest ?? tag ?? 'latest', tag, digest, text: trimmed }
}

/** `registry/name:tag` or `registry/name@digest`, the canonical form for output. */
export function formatImageReference (ref: Pick<ImageReference, 'upstream' | 'name' | 'reference'>): string {
  return `${ref.upstream}/${ref.name}${ref.reference.includes(':') ? '@' : ':'}${ref.reference}`
}
