// Validation of the pieces of a distribution URL: repository names, tags and
// digests, by the grammar of the OCI distribution spec. Everything here is
// checked before anything touches the cache or an upstream.

import { DigestInvalidError, ManifestInvalidError, NameInvalidError } from '../errors.js'

const NAME_COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/
const DIGEST = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/
const MAX_NAME_LENGTH = 255

/** Digest algorithms the mirror can verify, with the length of their hex encoding. */
export const DIGEST_ALGORITHMS: ReadonlyMap<string, number> = new Map([['sha256', 64], ['sha512', 128]])

export function isValidName (name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) return false
  return name.split('/').every(c => NAME_COMPONENT.test(c))
}

export function assertName (name: string): string {
  if (!isValidName(name)) {
    throw new NameInvalidError('invalid repository name', { name })
  }
  return name
}

export function isTag (reference: string): boolean {
  return TAG.test(reference)
}

export interface ParsedDigest { readonly algorithm: string, readonly hex: string, readonly digest: string }

export function parseDigest (digest: string): ParsedDigest {
  const m = DIGEST.exec(digest)
  if (m === null) throw new DigestInvalidError('invalid digest', { digest })
  const [, algorithm = '', hex = ''] = m
  const length = DIGEST_ALGORITHMS.get(algorithm)
  if (length === undefined) {
    throw new DigestInvalidError(`unsupported digest algorithm "${algorithm}"`, { digest, supported: [...DIGEST_ALGORITHMS.keys()] })
  }
  if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) {
    throw new DigestInvalidError(`invalid ${algorithm} digest`, { digest })
  }
  return { algorithm, hex, digest }
}

export function isDigest (s: string): boolean {
  try {
    parseDigest(s)
    return true
  } catch {
    return false
  }
}

export type ManifestReference =
  | { readonly kind: 'tag', readonly tag: string }
  | { readonly kind: 'digest', readonly digest: string }

/** A manifest reference is a digest when it has an algorithm prefix, else it must be a tag. */
export function parseManifestReference (reference: string): ManifestReference {
  if (reference.includes(':')) return { kind: 'digest', digest: parseDigest(reference).digest }
  if (!isTag(reference)) throw new ManifestInvalidError('invalid tag', { tag: reference })
  return { kind: 'tag', tag: reference }
}

/**
 * The tag a registry without the referrers API keeps a digest's referrers under (the
 * spec's referrers tag schema): the algorithm cut to 32 characters, `-`, the encoded part
 * cut to 64, anything a tag may not hold replaced with `-`.
 */
export function referrersTag (digest: string): string {
  const colon = digest.indexOf(':')
  const tag = `${digest.slice(0, colon).slice(0, 32)}-${digest.slice(colon + 1).slice(0, 64)}`
  return tag.replace(/[^a-zA-Z0-9._-]/g, '-')
}
