// Realistic content for tests: images whose manifests, configs and layers all
// exist in a FakeRegistry with the digests and media types real registries
// use, so the mirror is exercised on the shapes it will meet in production.

import { randomBytes } from 'node:crypto'
import type { FakeRegistry } from './fake-registry.js'

export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip'
} as const

/** What the helpers need of a registry: a FakeRegistry, or anything that stores content the same way. */
export type ContentSink = Pick<FakeRegistry, 'addBlob' | 'addManifest'>

export interface Platform {
  os: string
  architecture: string
  variant?: string
}

export interface Descriptor {
  mediaType: string
  digest: string
  size: number
  platform?: Platform
  artifactType?: string
  annotations?: Record<string, string>
}

export interface ImageOptions {
  /** Size in bytes of each layer, in order; each is random bytes. */
  layers: number[]
  mediaType?: 'oci' | 'docker'
  platform?: Platform
  annotations?: Record<string, string>
}

export interface BuiltImage {
  manifestDigest: string
  /** The manifest's bytes, exactly as served. */
  manifest: Buffer
  mediaType: string
  /** Descriptor of the manifest, as an index or a subject field would carry it. */
  descriptor: Descriptor
  configDigest: string
  config: Buffer
  layerDigests: string[]
  layers: Buffer[]
  /** Config and layers: every blob a pull of this image fetches. */
  blobDigests: string[]
  platform: Platform
}

/** Adds layers, a config and a manifest to `repo`; tags it when `tag` is given. */
export function makeImage (fake: ContentSink, repo: string, tag: string | undefined, options: ImageOptions): BuiltImage {
  const docker = options.mediaType === 'docker'
  const platform = options.platform ?? { os: 'linux', architecture: 'amd64' }
  const layers = options.layers.map(size => randomBytes(size))
  const layerDigests = layers.map(bytes => fake.addBlob(repo, bytes))
  const layerType = docker ? MediaTypes.dockerLayer : MediaTypes.ociLayer

  const config = Buffer.from(JSON.stringify({
    created: new Date().toISOString(),
    architecture: platform.architecture,
    ...(platform.variant === undefined ? {} : { variant: platform.variant }),
    os: platform.os,
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
    // Real diff_ids are digests of the uncompressed layers; random bytes have no "uncompressed", so the layer digests stand in.
    rootfs: { type: 'layers', diff_ids: layerDigests },
    history: layerDigests.map((_, i) => ({ created_by: `fake layer ${i}` }))
  }))
  const configDigest = fake.addBlob(repo, config)
  const configType = docker ? MediaTypes.dockerConfig : MediaTypes.ociConfig
  const mediaType = docker ? MediaTypes.dockerManifest : MediaTypes.ociManifest

  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType,
    config: { mediaType: configType, digest: configDigest, size: config.length },
    layers: layers.map((bytes, i) => ({ mediaType: layerType, digest: layerDigests[i], size: bytes.length })),
    ...(options.annotations === undefined ? {} : { annotations: options.annotations })
  }))
  const manifestDigest = fake.addManifest(repo, tag, manifest, mediaType)
  return {
    manifestDigest,
    manifest,
    mediaType,
    descriptor: { mediaType, digest: manifestDigest, size: manifest.length },
    configDigest,
    config,
    layerDigests,
    layers,
    blobDigests: [configDigest, ...layerDigests],
    platform
  }
}

/** "linux/arm64/v8" → { os: 'linux', architecture: 'arm64', variant: 'v8' } */
export function parsePlatform (spec: string): Platform {
  const [os, architecture, variant] = spec.split('/')
  if (os === undefined || os === '' || architecture === undefined || architecture === '') {
    throw new Error(`parsePlatform: expected os/architecture[/variant], got ${JSON.stringify(spec)}`)
  }
  return variant === undefined ? { os, architecture } : { os, architecture, variant }
}

export interface BuiltIndex {
  indexDigest: string
  index: Buffer
  mediaType: string
  descriptor: Descriptor
  /** One per platform, in the order given. */
  images: BuiltImage[]
  manifestDigests: string[]
  /** Every config and layer of every platform. */
  blobDigests: string[]
  platforms: Platform[]
}

/**
 * A multi-platform image: one single-layer image per platform (untagged, as
 * in real registries) and an index naming them, tagged `tag`. OCI image index
 * by default; `{ mediaType: 'docker' }` makes a Docker manifest list of Docker
 * manifests.
 */
export function makeIndex (fake: ContentSink, repo: string, tag: string | undefined, platforms: string[], layerSize: number, options: { mediaType?: 'oci' | 'docker' } = {}): BuiltIndex {
  const docker = options.mediaType === 'docker'
  const parsed = platforms.map(parsePlatform)
  const images = parsed.map(platform => makeImage(fake, repo, undefined, { layers: [layerSize], mediaType: docker ? 'docker' : 'oci', platform }))
  const mediaType = docker ? MediaTypes.dockerManifestList : MediaTypes.ociIndex
  const index = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType,
    manifests: images.map(image => ({ ...image.descriptor, platform: image.platform }))
  }))
  const indexDigest = fake.addManifest(repo, tag, index, mediaType)
  return {
    indexDigest,
    index,
    mediaType,
    descriptor: { mediaType, digest: indexDigest, size: index.length },
    images,
    manifestDigests: images.map(image => image.manifestDigest),
    blobDigests: images.flatMap(image => image.blobDigests),
    platforms: parsed
  }
}

export interface BuiltReferrer {
  digest: string
  manifest: Buffer
  mediaType: string
  artifactType: string
  descriptor: Descriptor
  /** The empty config and the payload layer. */
  blobDigests: string[]
}

/**
 * An OCI 1.1 artifact (a signature, an SBOM) whose `subject` is `subject`,
 * stored untagged unless `tag` is given, so the referrers API lists it.
 */
export function makeReferrer (fake: ContentSink, repo: string, subject: Descriptor, artifactType: string, options: { tag?: string, annotations?: Record<string, string>, payload?: Buffer } = {}): BuiltReferrer {
  const empty = Buffer.from('{}')
  const emptyDigest = fake.addBlob(repo, empty)
  const payload = options.payload ?? Buffer.from(JSON.stringify({ artifactType, nonce: randomBytes(8).toString('hex') }))
  const payloadDigest = fake.addBlob(repo, payload)
  const mediaType = MediaTypes.ociManifest
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType,
    artifactType,
    config: { mediaType: MediaTypes.ociEmpty, digest: emptyDigest, size: empty.length },
    layers: [{ mediaType: 'application/json', digest: payloadDigest, size: payload.length }],
    subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
    ...(options.annotations === undefined ? {} : { annotations: options.annotations })
  }))
  const digest = fake.addManifest(repo, options.tag, manifest, mediaType)
  return {
    digest,
    manifest,
    mediaType,
    artifactType,
    descriptor: { mediaType, digest, size: manifest.length, artifactType },
    blobDigests: [emptyDigest, payloadDigest]
  }
}
