// A fleet sharing a bucket (issue 17): three registry-mirror nodes with
// storage.s3 on one bucket of a real S3 server (Ceph's radosgw,
// harness/ceph-rgw.ts), each keeping its own storage.path for the index and
// staging, behind the shipped deploy/nginx/registry-mirror.conf run as it is
// (harness/fleet.ts), in front of distribution's reference registry, whose
// access log counts what reaches upstream. The nodes get the bucket's keys
// only in their environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as
// the SDK's default chain reads them; the config files name none. Checked:
//
// - three skopeo clients copying three images that share layers, at once,
//   through the balancer: one upstream GET per distinct blob for the whole
//   fleet, and every blob, manifest and link ends up in the bucket;
// - a node killed between pull rounds: three clients pull again, and the
//   dead node's digests are served by the next nodes on the ring from the
//   bucket, with no upstream GET (without a bucket they are fetched again);
// - a fourth node added (nginx reloaded), asked directly for every manifest
//   and blob of the images by digest: everything from the bucket, with no
//   request upstream at all;
// - 200 requests at once through the balancer from 127.0.0.2: no 429, and
//   every node logs 127.0.0.2;
// - the gateway stopped mid-run: cached blobs get a fast 503 UNAVAILABLE,
//   never a hang, while an image nobody pulled before is still pulled from
//   upstream; started again: everything serves from the same nodes, and the
//   uploads that failed meanwhile catch up (rows in the nodes' indexes,
//   objects in the bucket);
// - with redirect: true (a second fleet of three new nodes on the same
//   bucket): three skopeo clients pull while a node is killed, and every
//   pull succeeds (the nodes send 307s and manifests, no body a kill could
//   cut); then dockerd, containerd, podman and skopeo pull through the
//   balancer, following the 307s to presigned URLs, fetch the blob objects
//   from the gateway themselves (its log names them), and get the
//   upstream's digests, with no blob GET upstream.
// Each distinct blob is fetched from upstream once over the whole run.
// About 45 s; dockerd, containerd and podman need root, and skip (or, in CI,
// fail) without it.

import t, { type Test } from 'tap'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3'
import { Agent, request } from 'undici'
import { requireTools } from '../../harness/tools.js'
import { ReferenceRegistry } from '../../harness/reference-registry.js'
import { CephRgw, type GatewayRequest } from '../../harness/ceph-rgw.js'
import { Skopeo } from '../../harness/skopeo.js'
import { Dockerd } from '../../harness/dockerd.js'
import { Containerd } from '../../harness/containerd.js'
import { Podman } from '../../harness/podman.js'
import { writeOciLayout, amd64, arm64, mediaTypes, type OciLayout } from '../../harness/oci-layout.js'
import { getManifest } from '../../harness/registry-api.js'
import { sha256 } from '../../harness/digest.js'
import { freshSeed } from '../../harness/random.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { waitFor } from '../../harness/wait.js'
import { isBlobGet, type RegistryRequest } from '../../harness/access-log.js'
import { Fleet, type FleetNode, type NodeRequest } from '../../harness/fleet.js'
import type { MirrorS3 } from '../../harness/mirror-process.js'

const skip = requireTools(t, ['nginx', 'skopeo', 'docker-registry', 'ceph-mon', 'ceph-osd', 'radosgw', 'ceph', 'monmaptool', 'radosgw-admin'])
const skipClients = skip === false ? requireTools(t, ['containerd', 'ctr', 'dockerd', 'docker', 'podman'], { root: true }) : skip

const KiB = 1024
const MiB = 1024 * KiB
/** A client address other than the balancer's 127.0.0.1. */
const CLIENT = '127.0.0.2'
/** The nodes' storage.s3.timeout: a store that does not answer within it is a 503. */
const STORE_TIMEOUT_MS = 3000
const ACCEPT = [mediaTypes.ociIndex, mediaTypes.ociManifest, mediaTypes.dockerList, mediaTypes.dockerManifest].join(', ')

interface PushedImage {
  /** At the upstream (the default one, docker.io). */
  readonly repository: string
  /** What v1 resolves to upstream: the manifest or the index. */
  readonly digest: string
  /** Every platform manifest (and the index, for one). */
  readonly manifests: readonly string[]
  /** Configs and layers. */
  readonly blobs: readonly string[]
}

/**
 * From one seed, layer i of one size is the same blob in each image: alpha
 * and beta share two layers (beta also has an arm64 image), all three share
 * the first. delta, from a seed of its own, shares nothing: it is pulled for
 * the first time while the bucket is down.
 */
const plans = [
  { repository: 'library/alpha', platforms: [amd64], layerSizes: [2 * MiB, 512 * KiB], own: false },
  { repository: 'library/beta', platforms: [amd64, arm64], layerSizes: [2 * MiB, 512 * KiB, 256 * KiB], own: false },
  { repository: 'team/gamma', platforms: [amd64], layerSizes: [2 * MiB, 768 * KiB], own: false },
  { repository: 'library/delta', platforms: [amd64], layerSizes: [1 * MiB, 300 * KiB], own: true }
] as const

function blobsOf (layout: OciLayout): string[] {
  return layout.images.flatMap(image => [image.config.digest, ...image.layers.map(layer => layer.digest)])
}

const blobPath = /\/blobs\/(sha256:[0-9a-f]{64})(?:\?|$)/

function digestOf (path: string): string | undefined {
  return blobPath.exec(path)?.[1]
}

function hexOf (digest: string): string {
  return digest.slice('sha256:'.length)
}

function sorted<T> (items: Iterable<T>): T[] {
  return [...items].sort()
}

/** digest -> the nodes that served a request for it. */
function nodesByDigest (requests: readonly NodeRequest[]): Map<string, Set<string>> {
  const by = new Map<string, Set<string>>()
  for (const r of requests) {
    const digest = digestOf(r.path)
    if (digest === undefined) continue
    const nodes = by.get(digest) ?? new Set<string>()
    nodes.add(r.node)
    by.set(digest, nodes)
  }
  return by
}

/** Digests served by more than one node: [] when the hash held. */
function split (by: ReadonlyMap<string, ReadonlySet<string>>): string[] {
  return [...by].filter(([, nodes]) => nodes.size !== 1).map(([key, nodes]) => `${key} on ${sorted(nodes).join(', ')}`)
}

/** The one node that served each digest. */
function homes (by: ReadonlyMap<string, ReadonlySet<string>>): Map<string, string> {
  return new Map([...by].flatMap(([key, nodes]) => nodes.size === 1 ? [[key, [...nodes][0] ?? '']] : []))
}

/** Upstream blob GETs per digest. */
function upstreamGets (requests: readonly RegistryRequest[]): Map<string, number> {
  const counts = new Map<string, number>()
  for (const r of requests.filter(isBlobGet)) {
    const digest = digestOf(r.path)
    if (digest !== undefined) counts.set(digest, (counts.get(digest) ?? 0) + 1)
  }
  return new Map(sorted(counts))
}

function describeRequests (requests: readonly RegistryRequest[]): string {
  return requests.length === 0 ? 'none' : requests.map(r => `${r.method} ${r.uri} -> ${r.status}`).join('; ')
}

function statusCounts (statuses: readonly number[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const status of statuses) counts[String(status)] = (counts[String(status)] ?? 0) + 1
  return counts
}

interface Fetched {
  readonly status: number
  /** sha256 of the body. */
  readonly digest: string
  readonly contentDigest: string | undefined
  readonly body: Buffer
  readonly ms: number
}

/** A GET or HEAD, the body read whole. */
async function fetchFrom (url: string, options: { method?: 'GET' | 'HEAD', dispatcher?: Agent } = {}): Promise<Fetched> {
  const started = Date.now()
  const response = await request(url, { method: options.method ?? 'GET', dispatcher: options.dispatcher, headers: { accept: ACCEPT } })
  const body = Buffer.from(await response.body.arrayBuffer())
  const header = response.headers['docker-content-digest']
  return { status: response.statusCode, digest: sha256(body), contentDigest: typeof header === 'string' ? header : undefined, body, ms: Date.now() - started }
}

/** Every key in the bucket under a prefix. */
async function bucketKeys (s3: S3Client, bucket: string, prefix: string): Promise<Set<string>> {
  const keys = new Set<string>()
  let token: string | undefined
  do {
    const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }))
    for (const object of page.Contents ?? []) if (object.Key !== undefined) keys.add(object.Key)
    token = page.IsTruncated === true ? page.NextContinuationToken : undefined
  } while (token !== undefined)
  return keys
}

class Scene {
  readonly upstream: ReferenceRegistry
  readonly rgw: CephRgw
  readonly bucket: string
  readonly admin: S3Client
  /** alpha, beta, gamma: pulled from the start. */
  readonly images: readonly PushedImage[]
  /** Pulled first while the bucket is down. */
  readonly delta: PushedImage
  readonly skopeo: Skopeo
  readonly work: string
  #copies = 0

  private constructor (fields: { upstream: ReferenceRegistry, rgw: CephRgw, bucket: string, images: readonly PushedImage[], delta: PushedImage, skopeo: Skopeo, work: string }) {
    this.upstream = fields.upstream
    this.rgw = fields.rgw
    this.bucket = fields.bucket
    this.admin = fields.rgw.client()
    this.images = fields.images
    this.delta = fields.delta
    this.skopeo = fields.skopeo
    this.work = fields.work
  }

  static async create (t: Test): Promise<Scene> {
    const seed = freshSeed()
    t.comment(`image seed ${seed}`)
    const work = await makeTempDir('fleet-s3')
    t.teardown(() => removeTempDir(work))
    const [upstream, rgw] = await Promise.all([ReferenceRegistry.start({ label: 'docker.io' }), CephRgw.start({ label: 'fleet' })])
    t.teardown(() => upstream.close())
    t.teardown(() => rgw.close())
    const bucket = await rgw.createBucket('fleet')
    const skopeo = new Skopeo(work)
    const pushed: PushedImage[] = []
    for (const plan of plans) {
      const dir = join(work, plan.repository.replace('/', '-'))
      const layout = await writeOciLayout(dir, { tag: 'v1', seed: plan.own ? `${seed}/${plan.repository}` : seed, platforms: plan.platforms, layerSizes: plan.layerSizes })
      await skopeo.push(dir, 'v1', `${upstream.host}/${plan.repository}:v1`)
      await removeTempDir(dir)
      const top = await getManifest(upstream.url, plan.repository, 'v1')
      const manifests = layout.images.map(image => image.manifest.digest)
      if (!manifests.includes(top.digest)) manifests.push(top.digest)
      pushed.push({ repository: plan.repository, digest: top.digest, manifests, blobs: blobsOf(layout) })
    }
    const delta = pushed.find(image => image.repository === 'library/delta')
    if (delta === undefined) throw new Error('no delta image')
    const images = pushed.filter(image => image !== delta)
    if (delta.blobs.some(blob => images.some(image => image.blobs.includes(blob)))) throw new Error('delta shares a blob with the other images: the plans no longer keep it apart')
    return new Scene({ upstream, rgw, bucket, images, delta, skopeo, work })
  }

  /** Every distinct blob of alpha, beta and gamma. */
  get blobs (): string[] {
    return sorted(new Set(this.images.flatMap(image => image.blobs)))
  }

  /** The first layer: in every image but delta. */
  get sharedLayer (): string {
    const [alpha, beta, gamma] = this.images
    const shared = alpha?.blobs.find(blob => beta?.blobs.includes(blob) === true && gamma?.blobs.includes(blob) === true)
    if (shared === undefined) throw new Error('the images share no layer: the plans no longer make one')
    return shared
  }

  /** storage.s3 of the fleet's nodes: this bucket, path-style, the keys for their environment. */
  s3 (options: { redirect: boolean, bucket?: string }): MirrorS3 {
    return {
      endpoint: this.rgw.endpoint,
      bucket: options.bucket ?? this.bucket,
      region: this.rgw.region,
      forcePathStyle: true,
      redirect: options.redirect,
      timeout: `${STORE_TIMEOUT_MS}ms`,
      credentials: this.rgw.credentials
    }
  }

  async startFleet (t: Test, options: { redirect: boolean }): Promise<Fleet> {
    const fleet = await Fleet.start({ balancer: 'nginx', nodes: 3, upstreams: [{ name: 'docker.io', url: this.upstream.url, default: true }], s3: this.s3(options) })
    t.teardown(() => fleet.close())
    t.comment(`nginx at ${fleet.url}; ${fleet.nodes.map(node => `${node.name}=${node.host}`).join(', ')}; bucket ${this.bucket} at ${this.rgw.endpoint}${options.redirect ? ', redirect: true' : ''}; upstream ${this.upstream.url}`)
    return fleet
  }

  /**
   * skopeo copies the images through the balancer, in an order of its own
   * (rotated by client), naming them with a docker.io/ path prefix or none;
   * each copy must have the upstream's digest.
   */
  async pull (t: Test, fleet: Fleet, client: number, form: 'plain' | 'prefix', images: readonly PushedImage[] = this.images): Promise<void> {
    const order = [...images.slice(client % images.length), ...images.slice(0, client % images.length)]
    for (const image of order) {
      const reference = `${fleet.host}/${form === 'prefix' ? 'docker.io/' : ''}${image.repository}:v1`
      const dir = join(this.work, `copy-${++this.#copies}`)
      let digest: string
      try {
        digest = (await this.skopeo.pullToDir(reference, dir)).digest
      } catch (err) {
        if (err instanceof Error) err.message += `\n${fleet.diagnostics()}\n${this.rgw.tail(10)}`
        throw err
      }
      t.equal(digest, image.digest, `client ${client} copied ${reference} as the upstream's ${image.digest.slice(0, 19)}`)
      await removeTempDir(dir)
    }
  }

  /** Clients 1..n pull at once; client 1 names the images with a docker.io/ path prefix. */
  async pullAtOnce (t: Test, fleet: Fleet, clients: number): Promise<void> {
    await Promise.all(Array.from({ length: clients }, async (_, i) => await this.pull(t, fleet, i + 1, i === 0 ? 'prefix' : 'plain')))
  }

  /** The bucket's keys for what the fleet shares: blobs, manifests and each repository's manifest links. */
  expectedKeys (images: readonly PushedImage[]): string[] {
    return sorted(new Set(images.flatMap(image => [
      ...image.blobs.map(blob => `blobs/sha256/${hexOf(blob)}`),
      ...image.manifests.map(digest => `manifests/sha256/${hexOf(digest)}`),
      ...image.manifests.map(digest => `links/docker.io/${image.repository}/sha256/${hexOf(digest)}`)
    ])))
  }

  /** The expected keys that are not in the bucket (yet). */
  async missingKeys (images: readonly PushedImage[]): Promise<string[]> {
    const present = await bucketKeys(this.admin, this.bucket, '')
    return this.expectedKeys(images).filter(key => !present.has(key))
  }

  /** Until every blob, manifest and manifest link of the images is in the bucket: the uploads, off the clients' path, are done. */
  async waitForBucket (images: readonly PushedImage[], fleet: Fleet): Promise<void> {
    let missing: string[] = []
    await waitFor('the uploads to the bucket', async () => {
      missing = await this.missingKeys(images)
      return missing.length === 0
    }, { timeoutMs: 60_000, intervalMs: 200, describe: () => `missing: ${missing.join(' ')}\n${fleet.diagnostics()}` })
  }
}

t.test('a fleet of mirrors on one bucket, behind the shipped nginx config', { skip }, async t => {
  const started = Date.now()
  const scene = await Scene.create(t)
  t.comment(`${scene.blobs.length} distinct blobs in ${scene.images.length} images (${scene.images.map(image => `${image.repository} ${image.blobs.length}`).join(', ')}), and ${scene.delta.repository} with ${scene.delta.blobs.length} of its own; set up in ${Date.now() - started} ms`)
  const fleet = await scene.startFleet(t, { redirect: false })
  const runMark = await scene.upstream.mark()
  let blobHomes = new Map<string, string>()

  await t.test('the nodes\' configs name the bucket but no credentials: those are in their environment only', async t => {
    for (const node of fleet.nodes) {
      const config = await readFile(node.mirror.configPath, 'utf8')
      t.match(config, new RegExp(`\\n  s3:\\n    endpoint: ${scene.rgw.endpoint.replace(/[.]/g, '\\.')}\\n    bucket: ${scene.bucket}\\n`), `${node.name}: storage.s3 names the bucket`)
      t.notOk(config.includes(scene.rgw.accessKeyId) || config.includes(scene.rgw.secretAccessKey), `${node.name}: no key in its config file`)
    }
  })

  await t.test('three skopeo clients at once: each distinct blob reaches upstream once for the whole fleet, then everything is in the bucket', async t => {
    const upstreamMark = await scene.upstream.mark()
    const pullStarted = Date.now()
    await scene.pullAtOnce(t, fleet, 3)
    t.comment(`3 clients x ${scene.images.length} images in ${Date.now() - pullStarted} ms`)
    const gets = upstreamGets(await scene.upstream.requestsSince(upstreamMark))
    t.comment(`upstream blob GETs: ${[...gets.values()].reduce((a, b) => a + b, 0)} for ${gets.size} distinct blobs (the images have ${scene.blobs.length})`)
    t.same(gets, new Map(scene.blobs.map(blob => [blob, 1])), 'each distinct blob was fetched from upstream exactly once')
    const byDigest = nodesByDigest(await fleet.requestsSince())
    t.same(split(byDigest), [], 'every request for one digest went to one node')
    blobHomes = homes(byDigest)
    t.comment(`blobs per node: ${fleet.nodes.map(node => `${node.name} ${[...blobHomes.values()].filter(n => n === node.name).length}`).join(', ')}`)

    const uploadsStarted = Date.now()
    await scene.waitForBucket(scene.images, fleet)
    t.comment(`every blob, manifest and manifest link in the bucket ${Date.now() - uploadsStarted} ms after the pulls`)
    const blobKeys = await bucketKeys(scene.admin, scene.bucket, 'blobs/')
    t.same(sorted(blobKeys), scene.blobs.map(blob => `blobs/sha256/${hexOf(blob)}`), 'the bucket holds each blob once, under its digest, and nothing else')
    for (const node of fleet.nodes) {
      const held = sorted([...blobHomes].filter(([, home]) => home === node.name).map(([digest]) => digest))
      await waitFor(`${node.name}'s rows`, () => held.every(digest => node.indexedBlobs().includes(digest)), { timeoutMs: 10_000, intervalMs: 100 })
      t.same(node.indexedBlobs(), held, `${node.name} indexed the ${held.length} blobs it fetched, each once the bucket had it, and no other`)
    }
  })

  await t.test('a node killed between pull rounds: three clients pull again, and its blobs are served from the bucket by the next nodes, with no upstream GET', async t => {
    const home = blobHomes.get(scene.sharedLayer)
    if (home === undefined) {
      t.fail('the layer every image shares is on no one node: no node to kill for it')
      return
    }
    const victim = fleet.node(home)
    const lost = sorted([...blobHomes].filter(([, node]) => node === victim.name).map(([digest]) => digest))
    await victim.kill()
    const upstreamMark = await scene.upstream.mark()
    const mark = await fleet.mark()
    await scene.pullAtOnce(t, fleet, 3)
    const served = await fleet.requestsSince(mark)
    const byDigest = nodesByDigest(served)
    t.same(split(byDigest), [], 'one node per digest still')
    const now = homes(byDigest)
    t.same(sorted(new Set(lost.map(digest => now.get(digest) === victim.name))), [false], `${victim.name}'s ${lost.length} blobs went to other nodes`)
    const upstream = await scene.upstream.requestsSince(upstreamMark)
    t.same(upstreamGets(upstream), new Map(), `no blob GET upstream: the nodes that took over ${lost.length} blobs found them in the bucket`)
    t.comment(`killed ${victim.name}, which held ${lost.length} of ${blobHomes.size} blobs; upstream requests during the round: ${describeRequests(upstream)}`)
    const adopted = served.filter(r => lost.includes(digestOf(r.path) ?? '') && r.method === 'GET')
    t.ok(adopted.length >= lost.length && adopted.every(r => r.status === 200), `the dead node's blobs were served (${adopted.length} GETs, all 200)`)
    blobHomes = now
  })

  await t.test('a fourth node added: asked directly, it serves every manifest and blob of the images by digest with no request upstream', async t => {
    const added = await fleet.addNode()
    t.comment(`added ${added.name} at ${added.host}; nginx reloaded`)
    const upstreamMark = await scene.upstream.mark()
    const mark = await fleet.mark()
    const answers: string[] = []
    for (const image of scene.images) {
      // Manifests first, as a client asks: the node then knows which blobs each repository's images name.
      for (const digest of image.manifests) {
        const got = await fetchFrom(`${added.url}/v2/${image.repository}/manifests/${digest}`)
        answers.push(`manifest ${image.repository}@${digest.slice(0, 19)}: ${got.status}${got.status === 200 && got.digest === digest && got.contentDigest === digest ? '' : ` (body ${got.digest.slice(0, 19)}, header ${String(got.contentDigest).slice(0, 19)})`}`)
      }
      for (const blob of image.blobs) {
        const got = await fetchFrom(`${added.url}/v2/${image.repository}/blobs/${blob}`)
        answers.push(`blob ${image.repository}@${blob.slice(0, 19)}: ${got.status}${got.status === 200 && got.digest === blob ? '' : ` (body ${got.digest.slice(0, 19)})`}`)
      }
    }
    t.same(answers.filter(a => !/: 200$/.test(a)), [], `all ${answers.length} answers are 200 with the right bytes`)
    const upstream = await scene.upstream.requestsSince(upstreamMark)
    t.same(upstreamGets(upstream), new Map(), 'no blob GET reached upstream')
    t.comment(`requests of any kind that reached upstream: ${upstream.length} (${describeRequests(upstream)})`)
    t.same(upstream.map(r => `${r.method} ${r.uri}`), [], 'nor any other request: manifests, repository links and blobs all came from the bucket')
    const served = (await fleet.requestsSince(mark)).filter(r => r.node === added.name && r.path !== '/v2/')
    t.equal(served.length, answers.length, `${added.name} logged the ${answers.length} requests itself`)
    t.ok(added.indexedBlobs().length >= scene.blobs.length, `${added.name} indexed the ${scene.blobs.length} blobs it found in the bucket`)
  })

  await t.test(`200 requests at once through the balancer from ${CLIENT}: no 429, and the nodes log ${CLIENT}`, async t => {
    const agent = new Agent({ localAddress: CLIENT, connections: 200 })
    t.teardown(() => agent.close())
    const targets = scene.images.flatMap(image => [
      ...image.blobs.map(blob => `/v2/${image.repository}/blobs/${blob}`),
      ...image.manifests.map(digest => `/v2/${image.repository}/manifests/${digest}`)
    ])
    const mark = await fleet.mark()
    const upstreamMark = await scene.upstream.mark()
    const paths = Array.from({ length: 200 }, (_, i) => targets[i % targets.length] ?? '/v2/')
    const got = await Promise.all(paths.map(async path => await fetchFrom(fleet.url + path, { dispatcher: agent })))
    t.same(statusCounts(got.map(g => g.status)), { 200: 200 }, 'all 200 answered 200')
    t.same(paths.filter((path, i) => got[i]?.digest !== (digestOf(path) ?? /manifests\/(sha256:[0-9a-f]{64})$/.exec(path)?.[1])), [], 'each with the bytes of its digest')
    const served = (await fleet.requestsSince(mark)).filter(r => r.path !== '/v2/')
    t.equal(served.length, 200, 'the nodes logged 200 requests')
    t.same(sorted(new Set(served.map(r => r.client))), [CLIENT], `every line names ${CLIENT}`)
    t.comment(`per node: ${fleet.nodes.map(node => `${node.name} ${served.filter(r => r.node === node.name).length}`).join(', ')}`)
    const byDigest = nodesByDigest(served)
    t.same(split(byDigest), [], 'one node per digest, the added one included')
    blobHomes = homes(byDigest)
    t.same(upstreamGets(await scene.upstream.requestsSince(upstreamMark)), new Map(), 'and no blob GET reached upstream')
  })

  await t.test('the gateway stopped mid-run: a fast 503 for cached blobs, uncached images still pulled; started again: all served, and the uploads catch up', async t => {
    const { rgw } = scene
    const cached = sorted(new Set(scene.images.flatMap(image => image.blobs.map(blob => `/v2/${image.repository}/blobs/${blob}`))))
    await rgw.stopGateway()
    t.teardown(async () => { if (!rgw.gatewayRunning) await rgw.startGateway() })
    const mark = await fleet.mark()
    const down = await Promise.all(cached.map(async path => await fetchFrom(fleet.url + path)))
    t.same(statusCounts(down.map(d => d.status)), { 503: cached.length }, `every cached blob GET through the balancer: 503 (${cached.length})`)
    const codes = new Set(down.map(d => {
      try {
        const body: unknown = JSON.parse(d.body.toString('utf8'))
        return typeof body === 'object' && body !== null && 'errors' in body && Array.isArray(body.errors) ? String((body.errors[0] as { code?: unknown } | undefined)?.code) : 'not an OCI error'
      } catch {
        return 'not JSON'
      }
    }))
    t.same(sorted(codes), ['UNAVAILABLE'], 'in the OCI envelope: UNAVAILABLE')
    const slowest = Math.max(...down.map(d => d.ms))
    t.ok(slowest < STORE_TIMEOUT_MS, `each within the store's timeout: the slowest took ${slowest} ms`)
    const answered = nodesByDigest((await fleet.requestsSince(mark)).filter(r => r.status === 503))
    t.same([...answered].filter(([digest, nodes]) => !nodes.has(blobHomes.get(digest) ?? '')).map(([digest]) => digest), [], 'each 503 from the node holding the blob: nginx passed it on and retried no other node')

    const upstreamMark = await scene.upstream.mark()
    const pullMark = await fleet.mark()
    await scene.pull(t, fleet, 1, 'plain', [scene.delta])
    t.same(upstreamGets(await scene.upstream.requestsSince(upstreamMark)), new Map(scene.delta.blobs.map(blob => [blob, 1])), `${scene.delta.repository}, never pulled before, came from upstream: one GET per blob`)
    const deltaHomes = homes(nodesByDigest((await fleet.requestsSince(pullMark)).filter(r => scene.delta.blobs.includes(digestOf(r.path) ?? ''))))
    for (const [digest, home] of deltaHomes) {
      const node = fleet.node(home)
      await waitFor(`${home} to log a failed upload of ${digest}`, async () => (await readLog(node.mirror.logPath)).some(line => line.msg === 'could not put a verified blob into the store; trying again' && line.digest === digest), { timeoutMs: 10_000, intervalMs: 100 })
      t.notOk(node.indexedBlobs().includes(digest), `${home} has no row for ${digest.slice(0, 19)} while the bucket lacks it`)
    }
    t.equal(deltaHomes.size, scene.delta.blobs.length, `the ${scene.delta.blobs.length} uploads failed and wait for their next try`)

    const downFor = Date.now()
    await rgw.startGateway()
    t.comment(`the gateway was down for ${Date.now() - downFor} ms after the pull`)
    const back = await Promise.all(cached.map(async path => await fetchFrom(fleet.url + path)))
    t.same(back.map((b, i) => b.status === 200 && b.digest === digestOf(cached[i] ?? '') ? 'ok' : `${cached[i] ?? ''}: ${b.status}`).filter(s => s !== 'ok'), [], 'every cached blob served again, its bytes intact')
    const catchUp = Date.now()
    await waitFor('the failed uploads to catch up', async () => {
      const keys = await bucketKeys(scene.admin, scene.bucket, 'blobs/')
      return scene.delta.blobs.every(blob => keys.has(`blobs/sha256/${hexOf(blob)}`) && fleet.node(deltaHomes.get(blob) ?? '').indexedBlobs().includes(blob))
    }, { timeoutMs: 60_000, intervalMs: 200, describe: () => fleet.diagnostics() })
    t.comment(`the uploads caught up ${Date.now() - catchUp} ms after the gateway was back`)
    t.pass(`${scene.delta.blobs.length} blobs of ${scene.delta.repository}: objects in the bucket, and rows on the nodes that fetched them`)
    // Manifests and links put while the gateway was down are tried again (5 s, then longer): the fleet learns of them too.
    const told = Date.now()
    await waitFor('the manifests and links put during the outage to reach the bucket', async () => (await scene.missingKeys([scene.delta])).length === 0,
      { timeoutMs: 60_000, intervalMs: 500, describe: () => fleet.diagnostics() })
    t.pass(`${scene.delta.repository}'s manifests and links reached the bucket ${Date.now() - told} ms after the uploads`)
    const againMark = await scene.upstream.mark()
    await scene.pull(t, fleet, 2, 'plain', [...scene.images, scene.delta])
    t.same(upstreamGets(await scene.upstream.requestsSince(againMark)), new Map(), 'every image pulls again with no blob GET upstream')
  })

  await t.test('over the whole run, each distinct blob reached upstream once', async t => {
    const all = [...scene.blobs, ...scene.delta.blobs]
    t.same(upstreamGets(await scene.upstream.requestsSince(runMark)), new Map(sorted(all).map(blob => [blob, 1])), `${all.length} blobs, one GET each`)
  })

  await t.test('redirect: true, a fleet of three new nodes on the same bucket: blobs go to the clients from the gateway', async t => {
    await fleet.close()
    const redirecting = await scene.startFleet(t, { redirect: true })
    const { rgw } = scene
    const upstreamMark = await scene.upstream.mark()

    await t.test('three skopeo clients pull twice over while a node is killed: every pull succeeds', async t => {
      // The nodes send only 307s and manifests, each in one write: a node killed between two of them cuts no
      // body, and nginx sends what it had not answered to the next node. (A node that streams blobs cannot be
      // killed mid-pull without cutting the client that was reading from it: skopeo does not retry that.)
      const mark = await redirecting.mark()
      let pullsDone = false
      const pulls = Promise.all(Array.from({ length: 3 }, async (_, i) => {
        for (let round = 0; round < 2; round++) await scene.pull(t, redirecting, i + 1, i === 0 ? 'prefix' : 'plain')
      })).finally(() => { pullsDone = true })
      let victim: FleetNode | undefined
      await waitFor('a node to serve a blob', async () => {
        if (pullsDone) return true
        const first = (await redirecting.requestsSince(mark)).find(r => digestOf(r.path) !== undefined && r.status === 307)
        victim = first === undefined ? undefined : redirecting.node(first.node)
        return victim !== undefined
      }, { timeoutMs: 30_000, intervalMs: 20 })
      const during = !pullsDone
      const servedBefore = victim === undefined ? [] : await victim.requests()
      await victim?.kill()
      await pulls
      t.ok(victim !== undefined && during, `${victim?.name ?? 'no node'} was killed while the pulls ran, after it had answered ${servedBefore.length} requests`)
      const after = await redirecting.requestsSince(mark)
      const victimsDigests = new Set(servedBefore.flatMap(r => digestOf(r.path) ?? []))
      const movedOn = new Set(after.filter(r => r.node !== victim?.name && victimsDigests.has(digestOf(r.path) ?? '')).map(r => digestOf(r.path)))
      t.ok(movedOn.size > 0, `then ${movedOn.size} of the ${victimsDigests.size} digests it had served were asked of the next nodes`)
      t.same(sorted(new Set(after.filter(r => r.method === 'GET' && digestOf(r.path) !== undefined).map(r => r.status))), [307], 'every blob GET answered 307')
    })

    await t.test('dockerd, containerd, podman and skopeo follow the 307s to presigned URLs and get the upstream\'s digests', { skip: skipClients }, async t => {
      const byTag = (image: PushedImage): string => `docker.io/${image.repository}:v1`
      const dockerd = await Dockerd.start({ mirrors: [redirecting.url] })
      t.teardown(() => dockerd.close())
      const containerd = await Containerd.start()
      t.teardown(() => containerd.close())
      await containerd.addHost({ registry: 'docker.io', host: redirecting.url })
      const podman = await Podman.create([{ registry: 'docker.io', location: `${redirecting.host}/docker.io` }])
      t.teardown(() => podman.close())
      const clients: Array<{ name: string, userAgent: RegExp, pull: (image: PushedImage) => Promise<string[]> }> = [
        {
          name: 'dockerd',
          userAgent: /^docker\//,
          pull: async image => {
            const reference = image.repository.replace(/^library\//, '') + ':v1'
            await dockerd.pull(reference)
            return await dockerd.digestsOf(reference)
          }
        },
        {
          name: 'containerd',
          userAgent: /^containerd\//,
          pull: async image => [(await containerd.pull(byTag(image))).digest]
        },
        {
          name: 'podman',
          userAgent: /^containers\//,
          pull: async image => {
            await podman.pull(byTag(image))
            return await podman.digestsOf(byTag(image))
          }
        },
        {
          name: 'skopeo',
          userAgent: /^skopeo\//,
          pull: async image => {
            const dir = join(scene.work, `redirect-${image.repository.replace('/', '-')}`)
            const { digest } = await scene.skopeo.pullToDir(`${redirecting.host}/${image.repository}:v1`, dir)
            await removeTempDir(dir)
            return [digest]
          }
        }
      ]
      for (const client of clients) {
        const gatewayMark = await rgw.mark()
        const mark = await redirecting.mark()
        const clientStarted = Date.now()
        for (const image of scene.images) {
          let digests: string[]
          try {
            digests = await client.pull(image)
          } catch (err) {
            if (err instanceof Error) err.message += `\n${redirecting.diagnostics()}\n${rgw.tail(10)}`
            throw err
          }
          t.ok(digests.includes(image.digest), `${client.name} pulled ${image.repository}:v1 as ${image.digest.slice(0, 19)}`, { found: digests })
        }
        const blobGets = (await redirecting.requestsSince(mark)).filter(r => r.method === 'GET' && digestOf(r.path) !== undefined)
        const redirected = sorted(new Set(blobGets.filter(r => r.status === 307).map(r => digestOf(r.path) ?? '')))
        t.ok(redirected.length > 0, `${client.name}: the nodes answered ${redirected.length} blobs with 307`)
        t.same(blobGets.filter(r => r.status !== 307).map(r => `${r.path} -> ${r.status}`), [], `${client.name}: no blob GET was streamed through a node`)
        const fetched = (await rgw.requestsSince(gatewayMark)).filter((r: GatewayRequest) => r.method === 'GET' && r.path.startsWith(`/${scene.bucket}/blobs/sha256/`) && (r.status === 200 || r.status === 206))
        const byClient = fetched.filter(r => client.userAgent.test(r.userAgent))
        const objects = new Set(byClient.map(r => `sha256:${r.path.slice(r.path.lastIndexOf('/') + 1)}`))
        t.same(redirected.filter(digest => !objects.has(digest)), [], `${client.name}: the gateway's log shows the client's GET of every redirected blob's object (${objects.size} objects, user agent ${sorted(new Set(byClient.map(r => r.userAgent.split(' ')[0] ?? ''))).join(', ')})`)
        t.comment(`${client.name}: ${scene.images.length} images in ${Date.now() - clientStarted} ms`)
      }
    })

    t.same(upstreamGets(await scene.upstream.requestsSince(upstreamMark)), new Map(), 'no blob GET reached upstream: the new nodes found every blob in the bucket')
  })

  t.comment(`whole file: ${Math.round((Date.now() - started) / 1000)} s`)
})

interface LogLine { readonly msg?: unknown, readonly digest?: unknown }

async function readLog (path: string): Promise<LogLine[]> {
  return (await readFile(path, 'utf8').catch(() => '')).split('\n').flatMap(line => {
    if (!line.startsWith('{')) return []
    try {
      const parsed: unknown = JSON.parse(line)
      return typeof parsed === 'object' && parsed !== null ? [parsed as LogLine] : []
    } catch {
      return []
    }
  })
}
