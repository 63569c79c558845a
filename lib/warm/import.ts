// `registry-mirror import bundle.tar`: an OCI image layout tar (as export
// writes it, or skopeo's oci-archive) into the cache. The tar is streamed:
// every blob is hashed as it is read and staged under tmp/import-*; only once
// the whole bundle has been read, every blob matched its digest, and every
// descriptor of every image (index, manifests, configs, layers) was found with
// the size it promises, do the blobs move into place and the manifests, blob
// rows and tags go into the index. A corrupt or truncated bundle is refused
// with the bad entry named, and the cache is left as it was.

import { createReadStream, createWriteStream } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import type { LocalCache } from '../cache/local-cache.js'
import { BundleInvalidError, DigestMismatchError, RegistryUnknownError, TarError } from '../errors.js'
import { formatImageReference, parseImageReference } from '../image-ref.js'
import { parseDigest } from '../oci/reference.js'
import { MediaTypes } from '../oci/media-types.js'
import type { Route, RoutingTable } from '../upstream/routing.js'
import { DigestCheck } from '../oci/digest-check.js'
import { MAX_INDEX_DEPTH, MAX_LAYOUT_FILE_BYTES, MAX_LAYOUT_INDEX_BYTES, MAX_MANIFEST_BYTES } from '../oci/limits.js'
import { parseManifestStrictly } from '../oci/manifest.js'
import { REF_NAME, WRAPPER_FOR } from './export.js'
import type { ProgressRow } from './progress.js'
import { readTar } from './tar.js'

export interface ImportOptions {
  readonly cache: LocalCache
  readonly routing: RoutingTable
  readonly log: Logger
  readonly bundle: string
  readonly progress: ProgressRow
}

export interface ImportedImage { readonly name: string, readonly digest: string, readonly tag: string | undefined }

export interface ImportReport {
  readonly images: readonly ImportedImage[]
  /** Blobs moved into the cache (not there before). */
  readonly blobsAdded: number
  readonly blobsPresent: number
  readonly manifests: number
  readonly bytesRead: number
}


interface Staged { readonly path: string, readonly size: number }
interface PlannedManifest { readonly digest: string, readonly mediaType: string, readonly content: Buffer, readonly repositories: Set<string> }
interface PlannedBlob { readonly digest: string, readonly size: number, readonly mediaType: string | null, readonly path: string, readonly repositories: Set<string> }

export async function importBundle (options: ImportOptions): Promise<ImportReport> {
  const { progress } = options
  const { cache } = options
  let total: number
  try {
    total = (await stat(options.bundle)).size
  } catch (err) {
    throw new BundleInvalidError(`cannot read ${options.bundle}: ${err instanceof Error ? err.message : String(err)}`)
  }
  progress.plan(undefined, total)
  const staging = await cache.createStagingDirectory('import')
  try {
    const read = await readBundle(options.bundle, staging, progress)
    const plan = await planImport(read, options.routing)
    return { ...await commit(options, plan), bytesRead: total }
  } catch (err) {
    if (err instanceof TarError) throw new BundleInvalidError(err.message)
    throw err
  } finally {
    await cache.discardTemp(staging)
  }
}

interface ReadBundle { layout: Buffer | undefined, index: Buffer | undefined, staged: Map<string, Staged> }

/** Streams the tar: small files kept, every blob hashed into a staging file. Throws on the first bad entry. */
async function readBundle (bundle: string, staging: string, progress: ProgressRow): Promise<ReadBundle> {
  const out: ReadBundle = { layout: undefined, index: undefined, staged: new Map() }
  const source = createReadStream(bundle, { highWaterMark: 1024 * 1024 })
  for await (const entry of readTar(source)) {
    if (entry.type === 'directory') continue
    const name = entry.name
    if (name === 'oci-layout' || name === 'index.json') {
      const limit = name === 'index.json' ? MAX_LAYOUT_INDEX_BYTES : MAX_LAYOUT_FILE_BYTES
      if (entry.size > limit) throw new BundleInvalidError(`entry ${name} is ${entry.size} bytes, more than an ${name} may be (${limit})`)
      const chunks: Buffer[] = []
      for await (const chunk of entry.body) chunks.push(chunk)
      progress.advance(entry.size)
      if (name === 'oci-layout') out.layout = Buffer.concat(chunks)
      else out.index = Buffer.concat(chunks)
      continue
    }
    const m = /^blobs\/([a-z0-9]+)\/([a-f0-9]+)$/.exec(name)
    if (m === null || entry.type !== 'file') continue // anything else in a layout is not ours to read
    let digest: string
    try {
      digest = parseDigest(`${m[1] ?? ''}:${m[2] ?? ''}`).digest
    } catch {
      throw new BundleInvalidError(`entry ${name} is not named after a digest this mirror can verify`)
    }
    if (out.staged.has(digest)) {
      for await (const _ of entry.body) { /* a repeat: the first copy was verified */ }
      continue
    }
    const path = join(staging, `${m[1] ?? ''}-${m[2] ?? ''}`)
    const check = new DigestCheck(digest, entry.size, { what: `entry ${name}`, onBytes: n => progress.advance(n) })
    try {
      await pipeline(entry.body, check, createWriteStream(path, { flags: 'wx' }))
    } catch (err) {
      if (err instanceof TarError) throw err
      if (err instanceof DigestMismatchError) {
        throw new BundleInvalidError(`bundle is corrupt: ${err.message}`)
      }
      throw err
    }
    out.staged.set(digest, { path, size: entry.size })
    progress.blobDone(digest, entry.size, 'fetched', entry.size)
  }
  return out
}

interface Plan {
  readonly images: ImportedImage[]
  readonly tags: Array<{ repository: string, tag: string, digest: string }>
  /** Children before the manifests and indexes that name them. */
  readonly manifests: Map<string, PlannedManifest>
  readonly blobs: Map<string, PlannedBlob>
}

/** Checks that every image the index names is whole in the bundle, and works out what goes where. */
async function planImport (read: ReadBundle, routing: RoutingTable): Promise<Plan> {
  if (read.layout === undefined) throw new BundleInvalidError('bundle has no oci-layout file: it is not an OCI image layout')
  const layout = jsonEntry(read.layout, 'oci-layout')
  if (typeof layout !== 'object' || layout === null || !('imageLayoutVersion' in layout) || typeof layout.imageLayoutVersion !== 'string') {
    throw new BundleInvalidError('entry oci-layout has no imageLayoutVersion')
  }
  if (read.index === undefined) throw new BundleInvalidError('bundle has no index.json')
  const index = jsonEntry(read.index, 'index.json')
  if (typeof index !== 'object' || index === null || !('manifests' in index) || !Array.isArray(index.manifests)) {
    throw new BundleInvalidError('entry index.json has no manifests list')
  }

  const plan: Plan = { images: [], tags: [], manifests: new Map(), blobs: new Map() }
  const staged = (digest: string, size: number | undefined, what: string): Staged => {
    const s = read.staged.get(digest)
    if (s === undefined) throw new BundleInvalidError(`${what} ${digest} is not in the bundle (no entry ${blobPath(digest)})`)
    if (size !== undefined && s.size !== size) throw new BundleInvalidError(`entry ${blobPath(digest)} has ${s.size} bytes, but ${what} says ${size}`)
    return s
  }
  const visit = async (digest: string, size: number | undefined, mediaType: string | undefined, route: Route, what: string, depth: number): Promise<void> => {
    const known = plan.manifests.get(digest)
    if (known !== undefined) {
      known.repositories.add(route.repository)
      return
    }
    const s = staged(digest, size, what)
    if (s.size > MAX_MANIFEST_BYTES) throw new BundleInvalidError(`entry ${blobPath(digest)} (${what}) is larger than a manifest may be`)
    const content = await readFile(s.path)
    let parsed
    try {
      parsed = parseManifestStrictly(content)
    } catch (err) {
      throw new BundleInvalidError(`entry ${blobPath(digest)} (${what}): ${err instanceof Error ? err.message : String(err)}`)
    }
    if (parsed.isIndex && depth >= MAX_INDEX_DEPTH) throw new BundleInvalidError(`entry ${blobPath(digest)} nests indexes more than ${MAX_INDEX_DEPTH} deep`)
    for (const child of parsed.children) {
      if (child.kind === 'manifest') {
        await visit(child.digest, child.size, child.mediaType, route, `manifest named by ${digest}`, depth + 1)
        continue
      }
      const b = staged(child.digest, child.size, `${child.kind} of ${digest}`)
      const planned = plan.blobs.get(child.digest)
      if (planned !== undefined) planned.repositories.add(route.repository)
      else plan.blobs.set(child.digest, { digest: child.digest, size: b.size, mediaType: child.mediaType ?? null, path: b.path, repositories: new Set([route.repository]) })
    }
    const type = mediaType ?? parsed.mediaType ?? (parsed.isIndex ? MediaTypes.ociIndex : MediaTypes.ociManifest)
    // Inserted after its children: the order commit() writes them in.
    plan.manifests.set(digest, { digest, mediaType: type, content, repositories: new Set([route.repository]) })
  }

  for (const [i, raw] of index.manifests.entries()) {
    const where = `index.json manifests[${i}]`
    if (typeof raw !== 'object' || raw === null) throw new BundleInvalidError(`${where} is not a descriptor`)
    const d = raw as Record<string, unknown>
    if (typeof d.digest !== 'string') throw new BundleInvalidError(`${where} has no digest`)
    let digest: string
    try {
      digest = parseDigest(d.digest).digest
    } catch {
      throw new BundleInvalidError(`${where} has an invalid digest "${d.digest}"`)
    }
    const annotations = typeof d.annotations === 'object' && d.annotations !== null ? d.annotations as Record<string, unknown> : {}
    // An index export added only so that skopeo can name a Docker-typed image: not part of the image.
    if (annotations[WRAPPER_FOR] !== undefined) continue
    const refName = annotations[REF_NAME]
    if (typeof refName !== 'string' || refName === '') {
      throw new BundleInvalidError(`${where} has no ${REF_NAME} annotation: without an image name there is no repository to import it into`)
    }
    let ref
    try {
      ref = parseImageReference(refName, routing)
    } catch (err) {
      throw new BundleInvalidError(`${where}: image ${refName}: ${err instanceof Error ? err.message : String(err)}${
        err instanceof RegistryUnknownError ? ` (configured: ${[...routing.upstreams].join(', ')})` : ''}`)
    }
    if (ref.digest !== undefined && ref.digest !== digest) throw new BundleInvalidError(`${where}: image ${refName} names digest ${ref.digest}, but the descriptor is ${digest}`)
    const size = typeof d.size === 'number' ? d.size : undefined
    await visit(digest, size, typeof d.mediaType === 'string' ? d.mediaType : undefined, ref, `image ${refName}`, 0)
    // A reference without a tag (by digest) adds content, not a tag; parseImageReference makes "latest" only when neither is given.
    const tag = ref.digest === undefined ? ref.tag : undefined
    if (tag !== undefined) plan.tags.push({ repository: ref.repository, tag, digest })
    plan.images.push({ name: formatImageReference({ upstream: ref.upstream, name: ref.name, reference: tag ?? digest }), digest, tag })
  }
  if (plan.images.length === 0) throw new BundleInvalidError('index.json names no images')
  return plan
}

/**
 * Moves the blobs into place, then writes rows: blobs, manifests (children
 * first), tags last, so that at no moment does a tag name a manifest, or a
 * manifest a blob, that the cache does not have.
 */
async function commit (options: ImportOptions, plan: Plan): Promise<Omit<ImportReport, 'bytesRead'>> {
  const tags = plan.tags.flatMap(({ repository, tag, digest }) => {
    const manifest = plan.manifests.get(digest)
    return manifest === undefined ? [] : [{ repository, tag, manifest }]
  })
  const { added: blobsAdded, present: blobsPresent } = await options.cache.addVerified(plan.blobs.values(), plan.manifests.values(), tags)
  options.log.info({ bundle: options.bundle, images: plan.images.length, blobsAdded, blobsPresent, manifests: plan.manifests.size }, 'bundle imported')
  return { images: plan.images, blobsAdded, blobsPresent, manifests: plan.manifests.size }
}

function jsonEntry (bytes: Buffer, name: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new BundleInvalidError(`entry ${name} is not JSON`)
  }
}

function blobPath (digest: string): string {
  const { algorithm, hex } = parseDigest(digest)
  return `blobs/${algorithm}/${hex}`
}
