// Writes a synthetic image as an OCI image layout directory (the input of
// `skopeo copy oci:DIR:TAG ...`): gzip'd tar layers of seeded random bytes, a
// config, a manifest per platform and, for more than one platform, an index.

import { mkdir, writeFile, rename, rm } from 'node:fs/promises'
import { createWriteStream } from 'node:fs'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { createGzip, constants as zlib } from 'node:zlib'
import { sha256, HashingStream } from './digest.js'
import { seededBytes } from './random.js'
import { tarChunks } from './tar.js'

export const mediaTypes = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json'
} as const

export interface Platform {
  readonly os: string
  readonly architecture: string
}

export interface Descriptor {
  readonly mediaType: string
  readonly digest: string
  readonly size: number
  readonly platform?: Platform
  readonly annotations?: Readonly<Record<string, string>>
}

export interface ImageSpec {
  readonly tag: string
  readonly seed: string
  /** More than one writes an index. */
  readonly platforms: readonly Platform[]
  /** Payload bytes of each layer (one random file per layer). */
  readonly layerSizes: readonly number[]
}

export interface PlatformImage {
  readonly platform: Platform
  readonly manifest: Descriptor
  readonly config: Descriptor
  readonly layers: readonly Descriptor[]
}

export interface OciLayout {
  readonly dir: string
  readonly tag: string
  /** What the tag points at: the index, or the only manifest. */
  readonly top: Descriptor
  readonly images: readonly PlatformImage[]
}

export const amd64: Platform = { os: 'linux', architecture: 'amd64' }
export const arm64: Platform = { os: 'linux', architecture: 'arm64' }

export async function writeOciLayout (dir: string, spec: ImageSpec): Promise<OciLayout> {
  if (spec.platforms.length === 0) throw new Error('an image needs at least one platform')
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true })
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }))
  const images: PlatformImage[] = []
  for (const platform of spec.platforms) {
    images.push(await writePlatformImage(dir, spec, platform))
  }
  let top: Descriptor
  const first = images[0]
  if (images.length === 1 && first !== undefined) {
    top = first.manifest
  } else {
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: mediaTypes.ociIndex,
      manifests: images.map(image => ({ ...image.manifest, platform: image.platform }))
    }))
    top = { mediaType: mediaTypes.ociIndex, digest: await putBlob(dir, index), size: index.length }
  }
  const ref = { ...top, annotations: { 'org.opencontainers.image.ref.name': spec.tag } }
  await writeFile(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [ref] }))
  return { dir, tag: spec.tag, top, images }
}

async function writePlatformImage (dir: string, spec: ImageSpec, platform: Platform): Promise<PlatformImage> {
  const layers: Descriptor[] = []
  const diffIds: string[] = []
  for (const [i, size] of spec.layerSizes.entries()) {
    const seed = `${spec.seed}/${platform.os}/${platform.architecture}/${i}`
    const { layer, diffId } = await writeLayer(dir, seed, `data/${platform.architecture}-${i}.bin`, size)
    layers.push(layer)
    diffIds.push(diffId)
  }
  const config = Buffer.from(JSON.stringify({
    created: '2026-01-01T00:00:00Z',
    architecture: platform.architecture,
    os: platform.os,
    config: { Cmd: ['/bin/true'], Labels: { 'e2e.seed': spec.seed } },
    rootfs: { type: 'layers', diff_ids: diffIds },
    history: diffIds.map(() => ({ created: '2026-01-01T00:00:00Z', created_by: 'registry-mirror e2e' }))
  }))
  const configDescriptor: Descriptor = { mediaType: mediaTypes.ociConfig, digest: await putBlob(dir, config), size: config.length }
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: mediaTypes.ociManifest,
    config: configDescriptor,
    layers
  }))
  const manifestDescriptor: Descriptor = { mediaType: mediaTypes.ociManifest, digest: await putBlob(dir, manifest), size: manifest.length }
  return { platform, manifest: manifestDescriptor, config: configDescriptor, layers }
}

async function writeLayer (dir: string, seed: string, name: string, size: number): Promise<{ layer: Descriptor, diffId: string }> {
  const tmp = join(dir, `layer-${process.pid}-${Date.now()}.tmp`)
  const tar = new HashingStream()
  const gzip = new HashingStream()
  try {
    await pipeline(
      Readable.from(tarChunks([
        { name: 'data', type: 'directory' },
        { name, type: 'file', size, content: seededBytes(seed, size) }
      ])),
      tar,
      createGzip({ level: zlib.Z_BEST_SPEED }),
      gzip,
      createWriteStream(tmp)
    )
    const digest = gzip.digest()
    await rename(tmp, blobPath(dir, digest))
    return { layer: { mediaType: mediaTypes.ociLayer, digest, size: gzip.size }, diffId: tar.digest() }
  } finally {
    await rm(tmp, { force: true })
  }
}

async function putBlob (dir: string, data: Buffer): Promise<string> {
  const digest = sha256(data)
  await writeFile(blobPath(dir, digest), data)
  return digest
}

function blobPath (dir: string, digest: string): string {
  return join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length))
}
