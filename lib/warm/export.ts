// `registry-mirror export`: images from the cache as an OCI image layout in a
// tar (oci-layout, index.json naming each image in an
// org.opencontainers.image.ref.name annotation, blobs/<alg>/<hex> for every
// manifest, config and layer), which skopeo and other OCI tools read too.
// Images the cache lacks are fetched first (unless offline); the bundle is
// written only when every image is complete, streamed blob by blob, each
// checked against its digest on the way out, to a temp file renamed into
// place at the end: there is never a half-written bundle under its name.

import { createHash, randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import type { MirrorConfig } from '../config/types.js'
import { ExportFailedError } from '../errors.js'
import { MAX_CONFIG_BYTES } from '../oci/limits.js'
import { readLimited } from '../read-limited.js'
import { openCore, type MirrorCore } from '../core.js'
import { parseDigest } from '../oci/reference.js'
import { digestOf } from '../oci/digest-check.js'
import { MediaTypes } from '../oci/media-types.js'
import type { Route } from '../upstream/routing.js'
import type { RequestedImage } from './image-list.js'
import type { Progress, ProgressRow } from './progress.js'
import { coreSource } from './sources.js'
import { tarHeader, padding, END_OF_ARCHIVE } from './tar.js'
import { Warmer, type WarmedImage, type WarmResult } from './warmer.js'

export const REF_NAME = 'org.opencontainers.image.ref.name'
/**
 * Marks an OCI index that export adds for an image in Docker media types:
 * skopeo and containers/image select an image by name only among OCI-typed
 * descriptors, so a Docker manifest or list gets an OCI index naming it (or
 * its platforms) under the same name. Import skips these; the image itself
 * stays byte-exact under its own descriptor, listed first.
 */
export const WRAPPER_FOR = 'io.registry-mirror.wrapper-for'

export interface ExportOptions {
  readonly config: MirrorConfig
  readonly log: Logger
  readonly images: readonly RequestedImage[]
  /** The bundle's path. */
  readonly output: string
  readonly concurrency: number
  /** A progress display for each phase: "fetching" what is missing, then "writing". */
  readonly progress: (phase: 'fetching' | 'writing') => Progress
}

export interface ExportReport {
  readonly results: readonly WarmResult[]
  /** False when an image was missing or failed: no bundle was written. */
  readonly written: boolean
  readonly bytes: number
  readonly blobs: number
}

export async function exportBundle (options: ExportOptions): Promise<ExportReport> {
  const core = await openCore(options.config, options.log, { command: 'export' })
  try {
    const fetching = options.progress('fetching')
    let results: WarmResult[]
    try {
      const warmer = new Warmer({ source: coreSource(core), concurrency: options.concurrency, verifyCached: false, progress: fetching })
      results = await warmer.run(options.images)
    } finally {
      fetching.close()
    }
    const warmed = results.flatMap(r => r.ok ? [r.warmed] : [])
    if (warmed.length < results.length) return { results, written: false, bytes: 0, blobs: 0 }
    const writing = options.progress('writing')
    try {
      const { bytes, blobs } = await writeBundle(core, warmed, options.output, writing.row(basename(options.output)))
      return { results, written: true, bytes, blobs }
    } finally {
      writing.close()
    }
  } finally {
    await core.close()
  }
}

interface BundleBlob { readonly digest: string, readonly size: number, readonly route: Route }

async function writeBundle (core: MirrorCore, images: readonly WarmedImage[], output: string, row: ProgressRow): Promise<{ bytes: number, blobs: number }> {
  const manifests = new Map<string, Buffer>()
  const blobs = new Map<string, BundleBlob>()
  for (const image of images) {
    for (const m of image.manifests) manifests.set(m.digest, m.content)
    for (const b of image.blobs) if (!blobs.has(b.digest) && !manifests.has(b.digest)) blobs.set(b.digest, { digest: b.digest, size: b.size, route: image.image.ref })
  }
  const descriptors: object[] = []
  for (const image of images) {
    const top = { mediaType: image.top.mediaType, digest: image.top.digest, size: image.top.size }
    descriptors.push({ ...top, annotations: { [REF_NAME]: image.image.name } })
    const wrapper = await ociWrapper(core, image)
    if (wrapper === undefined) continue
    const digest = digestOf(wrapper)
    manifests.set(digest, wrapper)
    descriptors.push({ mediaType: MediaTypes.ociIndex, digest, size: wrapper.length, annotations: { [REF_NAME]: image.image.name, [WRAPPER_FOR]: image.top.digest } })
  }
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: descriptors }, null, 2))
  let payload = 0
  for (const m of manifests.values()) payload += m.length
  for (const b of blobs.values()) payload += b.size
  row.plan(manifests.size + blobs.size, payload)

  async function * entries (): AsyncGenerator<Buffer> {
    const small = function * (name: string, content: Buffer): Generator<Buffer> {
      yield tarHeader(name, content.length)
      yield content
      const pad = padding(content.length)
      if (pad.length > 0) yield pad
    }
    yield * small('oci-layout', Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' })))
    yield * small('index.json', index)
    yield tarHeader('blobs/', 0, 'directory')
    const algorithms = new Set([...manifests.keys(), ...blobs.keys()].map(d => parseDigest(d).algorithm))
    for (const algorithm of algorithms) yield tarHeader(`blobs/${algorithm}/`, 0, 'directory')
    for (const [digest, content] of manifests) {
      yield * small(blobName(digest), content)
      row.blobDone(digest, content.length, 'cached', 0)
    }
    for (const blob of blobs.values()) {
      yield tarHeader(blobName(blob.digest), blob.size)
      // Through the blob service, as a pull would read it: a row whose file vanished is a miss, never a 500.
      const answer = await core.blobs.get(blob.route, blob.digest, { method: 'GET', range: undefined })
      if (answer.body === undefined) throw new Error(`no body for blob ${blob.digest}`)
      const hash = createHash(parseDigest(blob.digest).algorithm)
      let written = 0
      for await (const chunk of answer.body) {
        const buf = chunk as Buffer
        written += buf.length
        if (written > blob.size) {
          answer.body.destroy()
          throw new Error(`blob ${blob.digest} in the cache is larger than its ${blob.size} bytes; run registry-mirror gc`)
        }
        hash.update(buf)
        row.advance(buf.length)
        if (buf.length > 0) yield buf
      }
      const actual = `${parseDigest(blob.digest).algorithm}:${hash.digest('hex')}`
      if (written !== blob.size || actual !== blob.digest) {
        throw new Error(`blob ${blob.digest} in the cache does not match its digest or size (${written} of ${blob.size} bytes, ${actual}); run registry-mirror gc`)
      }
      row.blobDone(blob.digest, blob.size, 'cached', blob.size)
      const pad = padding(blob.size)
      if (pad.length > 0) yield pad
    }
    yield END_OF_ARCHIVE
  }

  const temp = join(dirname(output), `.${basename(output)}.${randomBytes(4).toString('hex')}.part`)
  try {
    const file = createWriteStream(temp, { flags: 'wx' })
    await pipeline(Readable.from(entries(), { objectMode: false, highWaterMark: 1024 * 1024 }), file)
    await rename(temp, output)
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err)
    row.failed(message)
    throw new ExportFailedError(message)
  } finally {
    await rm(temp, { force: true })
  }
  row.done(`${images.length} images, ${manifests.size + blobs.size} blobs`)
  return { bytes: payload, blobs: manifests.size + blobs.size }
}

/** For an image in Docker media types, an OCI index of its platform manifests (see WRAPPER_FOR); else undefined. */
async function ociWrapper (core: MirrorCore, image: WarmedImage): Promise<Buffer | undefined> {
  const top = image.manifests[0]
  if (top === undefined) return undefined
  let manifests: unknown[]
  if (image.top.mediaType === MediaTypes.dockerList) {
    const parsed = JSON.parse(top.content.toString('utf8')) as { manifests?: unknown[] }
    manifests = parsed.manifests ?? []
  } else if (image.top.mediaType === MediaTypes.dockerManifest) {
    const parsed = JSON.parse(top.content.toString('utf8')) as { config?: { digest?: unknown } }
    const configDigest = parsed.config?.digest
    const platform = typeof configDigest === 'string' ? await platformOfConfig(core, image, configDigest) : undefined
    manifests = [{ mediaType: image.top.mediaType, digest: image.top.digest, size: image.top.size, ...(platform === undefined ? {} : { platform }) }]
  } else {
    return undefined
  }
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests }))
}

/** os/architecture/variant from an image config in the cache, which clients choose a platform by. */
async function platformOfConfig (core: MirrorCore, image: WarmedImage, digest: string): Promise<Record<string, string> | undefined> {
  const answer = await core.blobs.get(image.image.ref, digest, { method: 'GET', range: undefined })
  if (answer.body === undefined) return undefined
  const bytes = await readLimited(answer.body, MAX_CONFIG_BYTES)
  if (bytes === undefined) return undefined
  try {
    const config = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>
    if (typeof config.os !== 'string' || typeof config.architecture !== 'string') return undefined
    return { architecture: config.architecture, os: config.os, ...(typeof config.variant === 'string' ? { variant: config.variant } : {}) }
  } catch {
    return undefined
  }
}

export function blobName (digest: string): string {
  const { algorithm, hex } = parseDigest(digest)
  return `blobs/${algorithm}/${hex}`
}
