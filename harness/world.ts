// The scene every end-to-end test starts from: two reference registries
// standing in for docker.io (the default upstream) and ghcr.io, test images
// pushed to them, and the mirror in front of both. Everything is created
// fresh (new seeds, new ports, new temp dirs) and closed in teardown.

import { join } from 'node:path'
import type { Test } from 'tap'
import { ReferenceRegistry } from './reference-registry.js'
import { Skopeo } from './skopeo.js'
import { writeOciLayout, amd64, arm64, type Platform } from './oci-layout.js'
import { getManifest } from './registry-api.js'
import { freshSeed } from './random.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { startMirror, type MirrorTls, type MirrorAuth, type MirrorAccess, type ObservedMirror } from './mirror.js'
import type { RegistryRequest } from './access-log.js'

export type Registry = 'docker.io' | 'ghcr.io'

export interface TestImage {
  readonly registry: Registry
  /** The repository at the upstream: library/multi, org/app. */
  readonly repository: string
  readonly tag: string
  /** What the upstream answers for the tag: the manifest or index digest. */
  readonly digest: string
  readonly mediaType: string
  /** For messages: "an OCI index (linux/amd64, linux/arm64)". */
  readonly kind: string
  /** registry/repository:tag, e.g. docker.io/library/multi:v1 */
  readonly byTag: string
  /** registry/repository@digest */
  readonly byDigest: string
}

interface ImagePlan {
  readonly registry: Registry
  readonly repository: string
  readonly kind: string
  readonly platforms: readonly Platform[]
  readonly layerSizes: readonly number[]
  readonly format?: 'v2s2'
}

const KiB = 1024
const MiB = 1024 * KiB

function plans (options: WorldOptions): ImagePlan[] {
  const list: ImagePlan[] = [
    { registry: 'docker.io', repository: 'library/multi', kind: 'an OCI index (linux/amd64, linux/arm64)', platforms: [amd64, arm64], layerSizes: [2 * MiB, 300 * KiB] },
    { registry: 'docker.io', repository: 'library/classic', kind: 'a Docker schema2 image', platforms: [amd64], layerSizes: [1 * MiB, 200 * KiB], format: 'v2s2' }
  ]
  if (options.big === true) {
    list.push({ registry: 'docker.io', repository: 'library/big', kind: 'an image with a 100 MiB layer', platforms: [amd64], layerSizes: [100 * MiB, 64 * KiB] })
  }
  if (options.ghcr !== false) {
    list.push(
      { registry: 'ghcr.io', repository: 'org/app', kind: 'an OCI index (linux/amd64, linux/arm64)', platforms: [amd64, arm64], layerSizes: [1 * MiB, 100 * KiB] },
      { registry: 'ghcr.io', repository: 'org/classic', kind: 'a Docker schema2 image', platforms: [amd64], layerSizes: [700 * KiB], format: 'v2s2' }
    )
  }
  return list
}

export interface WorldOptions {
  /** Also push library/big:v1, one layer of 100 MiB. */
  readonly big?: boolean
  /** Push images to the ghcr.io upstream too (default true). */
  readonly ghcr?: boolean
  /** Run the mirror with HTTPS only, reached directly: world.mirror.requests() is then unavailable. */
  readonly tls?: MirrorTls
  /** The address the mirror listens on (default 127.0.0.1). */
  readonly address?: string
  /** Clients log in with users from this htpasswd file; metrics are turned off. */
  readonly auth?: MirrorAuth
  readonly access?: MirrorAccess
  /** metrics.token: with auth, metrics (and the status page) are off without one. */
  readonly metricsToken?: string
}

export class World {
  readonly upstreams: ReadonlyMap<Registry, ReferenceRegistry>
  readonly mirror: ObservedMirror
  /** Only the images the mirror can serve (all, except ghcr.io ones with E2E_MIRROR=reference). */
  readonly images: readonly TestImage[]
  readonly seed: string

  private constructor (upstreams: ReadonlyMap<Registry, ReferenceRegistry>, mirror: ObservedMirror, images: readonly TestImage[], seed: string) {
    this.upstreams = upstreams
    this.mirror = mirror
    this.images = images
    this.seed = seed
  }

  /** Builds the scene; everything it starts is closed in t's teardown. */
  static async create (t: Test, options: WorldOptions = {}): Promise<World> {
    const seed = freshSeed()
    t.comment(`image seed ${seed}`)
    const work = await makeTempDir('images')
    t.teardown(() => removeTempDir(work))
    const upstreams = new Map<Registry, ReferenceRegistry>()
    for (const registry of ['docker.io', 'ghcr.io'] as const) {
      const upstream = await ReferenceRegistry.start({ label: registry })
      t.teardown(() => upstream.close())
      upstreams.set(registry, upstream)
    }

    const skopeo = new Skopeo(work)
    const images: TestImage[] = []
    for (const plan of plans(options)) {
      const upstream = upstreams.get(plan.registry)
      if (upstream === undefined) throw new Error(`no upstream for ${plan.registry}`)
      const tag = 'v1'
      const layoutDir = join(work, plan.repository.replace('/', '-'))
      await writeOciLayout(layoutDir, { tag, seed: `${seed}/${plan.registry}/${plan.repository}`, platforms: plan.platforms, layerSizes: plan.layerSizes })
      await skopeo.push(layoutDir, tag, `${upstream.host}/${plan.repository}:${tag}`, plan.format === undefined ? {} : { format: plan.format })
      await removeTempDir(layoutDir)
      const manifest = await getManifest(upstream.url, plan.repository, tag)
      images.push({
        registry: plan.registry,
        repository: plan.repository,
        tag,
        digest: manifest.digest,
        mediaType: manifest.mediaType,
        kind: plan.kind,
        byTag: `${plan.registry}/${plan.repository}:${tag}`,
        byDigest: `${plan.registry}/${plan.repository}@${manifest.digest}`
      })
    }

    const entries = [...upstreams].map(([name, upstream]) => ({ name, url: upstream.url, default: name === 'docker.io' }))
    const mirror = await startMirror(entries, { tls: options.tls, address: options.address, auth: options.auth, access: options.access, metricsToken: options.metricsToken })
    t.teardown(() => mirror.close())
    t.comment(`mirror at ${mirror.url}; upstreams ${[...upstreams].map(([name, upstream]) => `${name}=${upstream.url}`).join(', ')}`)
    return new World(upstreams, mirror, images.filter(image => mirror.registries.includes(image.registry)), seed)
  }

  image (registry: Registry, repository: string): TestImage {
    const found = this.images.find(image => image.registry === registry && image.repository === repository)
    if (found === undefined) throw new Error(`no test image ${registry}/${repository}`)
    return found
  }

  imagesOf (registry: Registry): TestImage[] {
    return this.images.filter(image => image.registry === registry)
  }

  /** Positions in each upstream's request log, for requestsSince(). */
  async markUpstreams (): Promise<Map<Registry, number>> {
    const marks = new Map<Registry, number>()
    for (const [registry, upstream] of this.upstreams) marks.set(registry, await upstream.mark())
    return marks
  }

  /** Every request that reached any upstream since the marks, as "registry METHOD uri". */
  async upstreamRequestsSince (marks: ReadonlyMap<Registry, number>, filter: (request: RegistryRequest) => boolean = () => true): Promise<string[]> {
    const seen: string[] = []
    for (const [registry, upstream] of this.upstreams) {
      for (const request of await upstream.requestsSince(marks.get(registry) ?? 0)) {
        if (filter(request)) seen.push(`${registry} ${request.method} ${request.uri} -> ${request.status}`)
      }
    }
    return seen
  }

  async stopUpstreams (): Promise<void> {
    for (const upstream of this.upstreams.values()) await upstream.stop()
  }

  /** Mirror and upstream logs, to attach to a failure. */
  diagnostics (): string {
    return [this.mirror.tail(), ...[...this.upstreams.values()].map(upstream => upstream.tail())].join('\n')
  }
}
