// The images the benchmark pulls, generated fresh for every run (new seed, so
// no cache anywhere holds them) with the e2e harness's OCI layout writer and
// pushed to the upstream with skopeo. Layers are gzip'd random bytes, so the
// blob is as large as its payload.

import { join } from 'node:path'
import { writeOciLayout, amd64, type Descriptor } from '../harness/oci-layout.js'
import type { ReferenceRegistry } from '../harness/reference-registry.js'
import { getManifest } from '../harness/registry-api.js'
import type { Skopeo } from '../harness/skopeo.js'
import { removeTempDir } from '../harness/temp.js'

export interface ImagePlan {
  readonly repository: string
  /** Payload bytes of each layer. */
  readonly layerSizes: readonly number[]
  /** Keep the OCI layout after the push (nginx serves a blob out of it). */
  readonly keepLayout?: boolean
}

export interface BenchImage {
  readonly repository: string
  readonly tag: string
  readonly manifestDigest: string
  readonly mediaType: string
  readonly layers: readonly Descriptor[]
  /** Manifest, config and layers. */
  readonly totalBytes: number
  /** Set when the layout was kept. */
  readonly layoutDir: string | undefined
}

export const TAG = 'v1'

/** Generates and pushes the images, two at a time (one per core). */
export async function pushImages (plans: readonly ImagePlan[], options: { upstream: ReferenceRegistry, skopeo: Skopeo, workDir: string, seed: string }): Promise<Map<string, BenchImage>> {
  const images = new Map<string, BenchImage>()
  const queue = [...plans]
  const worker = async (): Promise<void> => {
    for (let plan = queue.shift(); plan !== undefined; plan = queue.shift()) {
      images.set(plan.repository, await pushImage(plan, options))
    }
  }
  await Promise.all([worker(), worker()])
  return images
}

async function pushImage (plan: ImagePlan, options: { upstream: ReferenceRegistry, skopeo: Skopeo, workDir: string, seed: string }): Promise<BenchImage> {
  const layoutDir = join(options.workDir, `layout-${plan.repository.replace(/\//g, '-')}`)
  const layout = await writeOciLayout(layoutDir, { tag: TAG, seed: `${options.seed}/${plan.repository}`, platforms: [amd64], layerSizes: plan.layerSizes })
  await options.skopeo.push(layoutDir, TAG, `${options.upstream.host}/${plan.repository}:${TAG}`)
  const image = layout.images[0]
  if (image === undefined) throw new Error(`no image in the layout of ${plan.repository}`)
  if (plan.keepLayout !== true) await removeTempDir(layoutDir)
  const manifest = await getManifest(options.upstream.url, plan.repository, TAG)
  const layerBytes = image.layers.reduce((sum, layer) => sum + layer.size, 0)
  return {
    repository: plan.repository,
    tag: TAG,
    manifestDigest: manifest.digest,
    mediaType: manifest.mediaType,
    layers: image.layers,
    totalBytes: manifest.body.length + image.config.size + layerBytes,
    layoutDir: plan.keepLayout === true ? layoutDir : undefined
  }
}

/** The path of a blob in a kept OCI layout. */
export function layoutBlobDir (image: BenchImage): string {
  if (image.layoutDir === undefined) throw new Error(`the layout of ${image.repository} was not kept`)
  return join(image.layoutDir, 'blobs', 'sha256')
}
