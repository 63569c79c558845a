// A fleet (issue 17): three registry-mirror nodes, each with a cache of its
// own, behind the balancer configs the project ships (deploy/nginx,
// deploy/haproxy), run as they are by harness/fleet.ts, in front of
// distribution's reference registry. The hash key is a blob's digest, or a
// repository for its manifests and tags, so with no store shared between the
// nodes each blob still reaches upstream once, however many clients, images
// and repository names ask for it. What is checked, from each node's request
// log and the upstream's access log:
//
// - three skopeo clients copying three images that share layers, at once:
//   one upstream GET per distinct blob; every request for one digest (under
//   any repository) on one node, every manifest and tag request of one
//   repository on one node, whichever routing form (path prefix, ?ns=)
//   names it;
// - 200 requests at once from one client address (127.0.0.2): no 429, and
//   every node logs that address, never the balancer's 127.0.0.1;
// - upstream down: a node's 503 for what it lacks takes no node out of the
//   rotation, and everything cached is served by the node that holds it;
// - a node added (config rewritten, reloaded): keys move only to it, and it
//   fetches only the blobs it took over;
// - a node killed between pulls, and another during a burst: every pull and
//   request still succeeds, and only the dead node's blobs are fetched again,
//   once each.
// HAProxy: the routing, one-GET-per-blob, client address and killed-node
// checks.

import t, { type Test } from 'tap'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { requireTools } from '../../harness/tools.js'
import { ReferenceRegistry } from '../../harness/reference-registry.js'
import { Skopeo } from '../../harness/skopeo.js'
import { writeOciLayout, amd64, arm64, type OciLayout } from '../../harness/oci-layout.js'
import { getManifest } from '../../harness/registry-api.js'
import { freshSeed } from '../../harness/random.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { isBlobGet, type RegistryRequest } from '../../harness/access-log.js'
import { Fleet, type NodeRequest, type BalancerKind } from '../../harness/fleet.js'

const skip = requireTools(t, ['nginx', 'skopeo', 'docker-registry'])
const skipHaproxy = skip === false ? requireTools(t, ['haproxy']) : skip

const KiB = 1024
const MiB = 1024 * KiB
/** A client address other than the balancer's 127.0.0.1. */
const CLIENT = '127.0.0.2'

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
 * Three images from one seed, so that layer i of one size is the same blob in
 * each: alpha and beta share two layers (beta also has an arm64 image), all
 * three share the first.
 */
const plans = [
  { repository: 'library/alpha', platforms: [amd64], layerSizes: [2 * MiB, 512 * KiB] },
  { repository: 'library/beta', platforms: [amd64, arm64], layerSizes: [2 * MiB, 512 * KiB, 256 * KiB] },
  { repository: 'team/gamma', platforms: [amd64], layerSizes: [2 * MiB, 768 * KiB] }
] as const

function blobsOf (layout: OciLayout): string[] {
  return layout.images.flatMap(image => [image.config.digest, ...image.layers.map(layer => layer.digest)])
}

const blobPath = /\/blobs\/(sha256:[0-9a-f]{64})(?:\?|$)/
const repositoryPath = /^\/v2\/(?:docker\.io\/)?(.+)\/(?:manifests\/[^/?]+|tags\/list|referrers\/[^/?]+)(?:\?|$)/

function digestOf (path: string): string | undefined {
  return blobPath.exec(path)?.[1]
}

/** The repository a manifest, tag list or referrers path is about, in any routing form (a docker.io/ prefix, ?ns=). */
function repositoryOf (path: string): string | undefined {
  return repositoryPath.exec(path)?.[1]
}

/** key -> the nodes that served a request with that key. */
function nodesBy (requests: readonly NodeRequest[], key: (path: string) => string | undefined): Map<string, Set<string>> {
  const by = new Map<string, Set<string>>()
  for (const r of requests) {
    const k = key(r.path)
    if (k === undefined) continue
    const nodes = by.get(k) ?? new Set<string>()
    nodes.add(r.node)
    by.set(k, nodes)
  }
  return by
}

/** Keys served by more than one node, with those nodes: [] when the hash held. */
function split (by: ReadonlyMap<string, ReadonlySet<string>>): string[] {
  return [...by].filter(([, nodes]) => nodes.size !== 1).map(([key, nodes]) => `${key} on ${[...nodes].sort().join(', ')}`)
}

/** The one node that served each key. */
function homes (by: ReadonlyMap<string, ReadonlySet<string>>): Map<string, string> {
  return new Map([...by].flatMap(([key, nodes]) => nodes.size === 1 ? [[key, [...nodes][0] ?? '']] : []))
}

/** digest -> the nodes holding it in their caches: those that answered a GET for it. */
function cachedOn (requests: readonly NodeRequest[]): Map<string, Set<string>> {
  return nodesBy(requests.filter(r => r.method === 'GET' && r.status === 200), digestOf)
}

/**
 * The node holding the layer every image shares killed, then pulls: the dead node's keys go to the next node on the
 * ring (for a key it took over when it was added, the node it took it from,
 * which still has the blob). Each blob whose new node lacks it is fetched
 * from upstream once, no other is, and each digest is on one node.
 */
async function pullsAfterKill (t: Test, scene: Scene, fleet: Fleet, blobHomes: ReadonlyMap<string, string>, clients: number): Promise<Map<string, string>> {
  const home = blobHomes.get(scene.sharedLayer)
  if (home === undefined) {
    t.fail('the layer every image shares is on no one node (see above): no node to kill for it')
    return new Map()
  }
  const victim = fleet.node(home)
  const held = cachedOn(await fleet.requestsSince())
  const lost = sorted([...blobHomes].filter(([, node]) => node === victim.name).map(([digest]) => digest))
  await victim.kill()
  const upstreamMark = await scene.upstream.mark()
  const mark = await fleet.mark()
  if (clients === 1) await scene.pull(t, fleet, 1, 'plain')
  else await scene.pullAtOnce(t, fleet, clients)
  const byDigest = nodesBy(await fleet.requestsSince(mark), digestOf)
  t.same(split(byDigest), [], 'one node per digest still: the same next node for every request of a dead node\'s key')
  const now = homes(byDigest)
  t.same(sorted(new Set(lost.map(digest => now.get(digest) === victim.name))), lost.length === 0 ? [] : [false], `${victim.name}'s ${lost.length} blobs went elsewhere`)
  const missing = sorted([...now].filter(([digest, node]) => held.get(digest)?.has(node) !== true).map(([digest]) => digest))
  t.comment(`killed ${victim.name}, which held ${lost.length} of ${now.size} blobs; ${lost.length - missing.length} went back to a node that still had them, ${missing.length} to one that had not`)
  t.same(new Map(sorted(upstreamGets(await scene.upstream.requestsSince(upstreamMark)))), new Map(missing.map(digest => [digest, 1])), `upstream GETs: once each for the ${missing.length} blobs their new node lacked, and no other`)
  return now
}

/** Upstream blob GETs per digest. */
function upstreamGets (requests: readonly RegistryRequest[]): Map<string, number> {
  const counts = new Map<string, number>()
  for (const r of requests.filter(isBlobGet)) {
    const digest = digestOf(r.path)
    if (digest !== undefined) counts.set(digest, (counts.get(digest) ?? 0) + 1)
  }
  return counts
}

function sorted<T> (items: Iterable<T>): T[] {
  return [...items].sort()
}

class Scene {
  readonly upstream: ReferenceRegistry
  readonly images: readonly PushedImage[]
  readonly skopeo: Skopeo
  readonly work: string
  #copies = 0

  private constructor (upstream: ReferenceRegistry, images: readonly PushedImage[], skopeo: Skopeo, work: string) {
    this.upstream = upstream
    this.images = images
    this.skopeo = skopeo
    this.work = work
  }

  static async create (t: Test): Promise<Scene> {
    const seed = freshSeed()
    t.comment(`image seed ${seed}`)
    const work = await makeTempDir('fleet')
    t.teardown(() => removeTempDir(work))
    const upstream = await ReferenceRegistry.start({ label: 'docker.io' })
    t.teardown(() => upstream.close())
    const skopeo = new Skopeo(work)
    const images: PushedImage[] = []
    for (const plan of plans) {
      const dir = join(work, plan.repository.replace('/', '-'))
      const layout = await writeOciLayout(dir, { tag: 'v1', seed, platforms: plan.platforms, layerSizes: plan.layerSizes })
      await skopeo.push(dir, 'v1', `${upstream.host}/${plan.repository}:v1`)
      await removeTempDir(dir)
      const top = await getManifest(upstream.url, plan.repository, 'v1')
      const manifests = layout.images.map(image => image.manifest.digest)
      if (!manifests.includes(top.digest)) manifests.push(top.digest)
      images.push({ repository: plan.repository, digest: top.digest, manifests, blobs: blobsOf(layout) })
    }
    return new Scene(upstream, images, skopeo, work)
  }

  /** Every distinct blob of every image. */
  get blobs (): string[] {
    return sorted(new Set(this.images.flatMap(image => image.blobs)))
  }

  image (repository: string): PushedImage {
    const found = this.images.find(image => image.repository === repository)
    if (found === undefined) throw new Error(`no image ${repository}`)
    return found
  }

  /** The first layer: in every image. */
  get sharedLayer (): string {
    const [alpha, beta, gamma] = this.images
    const shared = alpha?.blobs.find(blob => beta?.blobs.includes(blob) === true && gamma?.blobs.includes(blob) === true)
    if (shared === undefined) throw new Error('the images share no layer: the plans no longer make one')
    return shared
  }

  /**
   * skopeo copies every image through the balancer, in an order of its own
   * (rotated by client), naming them with a docker.io/ path prefix or none;
   * each copy must have the upstream's digest.
   */
  async pull (t: Test, fleet: Fleet, client: number, form: 'plain' | 'prefix'): Promise<void> {
    const order = [...this.images.slice(client % this.images.length), ...this.images.slice(0, client % this.images.length)]
    for (const image of order) {
      const reference = `${fleet.host}/${form === 'prefix' ? 'docker.io/' : ''}${image.repository}:v1`
      const dir = join(this.work, `copy-${++this.#copies}`)
      let digest: string
      try {
        digest = (await this.skopeo.pullToDir(reference, dir)).digest
      } catch (err) {
        if (err instanceof Error) err.message += `\n${fleet.diagnostics()}`
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
}

/** GET (or HEAD) through the balancer, the body read; the status. */
async function fetchStatus (url: string, options: { method?: 'GET' | 'HEAD', dispatcher?: Agent } = {}): Promise<number> {
  const response = await request(url, { method: options.method ?? 'GET', dispatcher: options.dispatcher, headers: { accept: 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' } })
  await response.body.arrayBuffer()
  return response.statusCode
}

function statusCounts (statuses: readonly number[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const status of statuses) counts[String(status)] = (counts[String(status)] ?? 0) + 1
  return counts
}

async function startFleet (t: Test, scene: Scene, balancer: BalancerKind): Promise<Fleet> {
  const fleet = await Fleet.start({ balancer, nodes: 3, upstreams: [{ name: 'docker.io', url: scene.upstream.url, default: true }] })
  t.teardown(() => fleet.close())
  t.comment(`${balancer} at ${fleet.url}; ${fleet.nodes.map(node => `${node.name}=${node.host}`).join(', ')}; upstream ${scene.upstream.url}`)
  return fleet
}

/**
 * The concurrent pulls and what the logs must show after them: one upstream
 * GET per blob, one node per digest and per repository. Returns each blob's
 * node.
 */
async function pullsShareNothingButTheHash (t: Test, scene: Scene, fleet: Fleet): Promise<Map<string, string>> {
  const upstreamMark = await scene.upstream.mark()
  const started = Date.now()
  await scene.pullAtOnce(t, fleet, 3)
  t.comment(`3 clients x ${scene.images.length} images in ${Date.now() - started} ms`)

  const gets = upstreamGets(await scene.upstream.requestsSince(upstreamMark))
  const expected = new Map(scene.blobs.map(blob => [blob, 1]))
  t.comment(`upstream blob GETs: ${[...gets.values()].reduce((a, b) => a + b, 0)} for ${gets.size} distinct blobs (the images have ${scene.blobs.length})`)
  t.same(new Map(sorted(gets)), new Map(sorted(expected)), 'each distinct blob was fetched from upstream exactly once, with no store shared between the nodes')

  const served = await fleet.requestsSince()
  const byDigest = nodesBy(served, digestOf)
  t.same(split(byDigest), [], 'every request for one digest, under whichever repository, went to one node')
  const layer = scene.sharedLayer
  const layerRequests = served.filter(r => digestOf(r.path) === layer)
  t.ok(layerRequests.length >= 3, `the layer all three images share was asked for ${layerRequests.length} times, under ${sorted(new Set(layerRequests.map(r => r.path.split('/blobs/')[0]))).join(', ')}`)
  const byRepository = nodesBy(served.filter(r => r.path !== '/v2/'), repositoryOf)
  t.same(sorted(byRepository.keys()), sorted(scene.images.map(image => image.repository)), 'manifests of each image were asked for')
  t.same(split(byRepository), [], 'every manifest request of one repository went to one node, with a docker.io/ prefix or without')
  const spread = homes(byDigest)
  t.comment(`blobs per node: ${fleet.nodes.map(node => `${node.name} ${[...spread.values()].filter(n => n === node.name).length}`).join(', ')}; repositories: ${[...homes(byRepository)].map(([repo, node]) => `${repo} on ${node}`).join(', ')}`)
  return spread
}

t.test('a fleet of mirrors behind the shipped consistent-hash balancer configs', { skip }, async t => {
  const scene = await Scene.create(t)
  t.comment(`${scene.blobs.length} distinct blobs in ${scene.images.length} images: ${scene.images.map(image => `${image.repository} ${image.blobs.length}`).join(', ')}`)

  await t.test('nginx (deploy/nginx/registry-mirror.conf)', async t => {
    const fleet = await startFleet(t, scene, 'nginx')
    let blobHomes = new Map<string, string>()

    await t.test('three skopeo clients at once: one upstream GET per blob, one node per digest and per repository', async t => {
      blobHomes = await pullsShareNothingButTheHash(t, scene, fleet)
    })

    await t.test('a blob asked for under every repository and routing form lands on one node, every time', async t => {
      const layer = scene.sharedLayer
      const mark = await fleet.mark()
      const paths = [
        `/v2/library/alpha/blobs/${layer}`,
        `/v2/library/beta/blobs/${layer}`,
        `/v2/team/gamma/blobs/${layer}`,
        `/v2/docker.io/library/alpha/blobs/${layer}`,
        `/v2/library/beta/blobs/${layer}?ns=docker.io`
      ]
      const statuses: number[] = []
      for (let round = 0; round < 2; round++) {
        for (const path of paths) statuses.push(await fetchStatus(fleet.url + path, { method: round === 0 ? 'GET' : 'HEAD' }))
      }
      t.same(statusCounts(statuses), { 200: paths.length * 2 })
      const served = (await fleet.requestsSince(mark)).filter(r => digestOf(r.path) === layer)
      t.equal(served.length, paths.length * 2, 'each request reached a node once')
      t.same(sorted(new Set(served.map(r => r.node))), [blobHomes.get(layer)], 'all of them the node that served the pulls')
    })

    await t.test('every manifest, tag list and referrers request of one repository, in every routing form, lands on one node', async t => {
      const beta = scene.image('library/beta')
      const mark = await fleet.mark()
      const forms = ['/v2/library/beta', '/v2/docker.io/library/beta']
      const paths: string[] = []
      for (const form of forms) {
        paths.push(`${form}/manifests/v1`, `${form}/tags/list`, `${form}/tags/list?n=1`, `${form}/referrers/${beta.digest}`)
        for (const digest of beta.manifests) paths.push(`${form}/manifests/${digest}`)
      }
      paths.push('/v2/library/beta/manifests/v1?ns=docker.io', '/v2/library/beta/tags/list?ns=docker.io')
      for (const path of paths) await fetchStatus(fleet.url + path)
      const served = (await fleet.requestsSince(mark)).filter(r => repositoryOf(r.path) === 'library/beta')
      t.equal(served.length, paths.length, `${paths.length} requests, each logged by a node once`)
      const nodes = sorted(new Set(served.map(r => r.node)))
      t.equal(nodes.length, 1, `all on one node (${nodes.join(', ')})`)
      t.same(served.filter(r => r.path.includes('/manifests/')).map(r => r.status), paths.filter(p => p.includes('/manifests/')).map(() => 200), 'and every manifest answered 200')
    })

    await t.test(`200 requests at once from ${CLIENT}: no 429, and each node logs ${CLIENT}, not the balancer`, async t => {
      const agent = new Agent({ localAddress: CLIENT, connections: 200 })
      t.teardown(() => agent.close())
      const targets = scene.images.flatMap(image => [
        ...image.blobs.map(blob => `/v2/${image.repository}/blobs/${blob}`),
        ...image.manifests.map(digest => `/v2/${image.repository}/manifests/${digest}`)
      ])
      const mark = await fleet.mark()
      const upstreamMark = await scene.upstream.mark()
      const paths = Array.from({ length: 200 }, (_, i) => targets[i % targets.length] ?? '/v2/')
      const statuses = await Promise.all(paths.map(async path => await fetchStatus(fleet.url + path, { dispatcher: agent })))
      t.same(statusCounts(statuses), { 200: 200 }, 'all 200 answered 200')
      const served = (await fleet.requestsSince(mark)).filter(r => r.path !== '/v2/')
      t.equal(served.length, 200, 'the nodes logged 200 requests')
      t.same(sorted(new Set(served.map(r => r.client))), [CLIENT], `every line names ${CLIENT}`)
      t.comment(`per node: ${fleet.nodes.map(node => `${node.name} ${served.filter(r => r.node === node.name).length}`).join(', ')}`)
      t.same(upstreamGets(await scene.upstream.requestsSince(upstreamMark)), new Map(), 'and no blob GET reached upstream: each went to the node holding it')
    })

    await t.test('upstream down: a node\'s 503 for what it lacks takes no node out, and what is cached is served where it is', async t => {
      await scene.upstream.stop()
      t.teardown(() => scene.upstream.start())
      t.equal(await fetchStatus(`${fleet.url}/v2/library/absent/manifests/v1`), 503, 'a manifest no node has: 503')
      const mark = await fleet.mark()
      const statuses: number[] = []
      for (const image of scene.images) {
        statuses.push(await fetchStatus(`${fleet.url}/v2/${image.repository}/manifests/v1`))
        for (const blob of image.blobs) statuses.push(await fetchStatus(`${fleet.url}/v2/${image.repository}/blobs/${blob}`))
      }
      t.same(statusCounts(statuses), { 200: statuses.length }, 'every cached manifest and blob still answered 200')
      const served = (await fleet.requestsSince(mark)).filter(r => digestOf(r.path) !== undefined)
      const moved = served.filter(r => blobHomes.get(digestOf(r.path) ?? '') !== r.node).map(r => `${r.path} on ${r.node}`)
      t.same(moved, [], 'each blob from the node that fetched it')
      t.same(sorted(new Set(served.map(r => r.cache))), ['hit'], 'from its cache')
    })

    await t.test('a node added: keys move only to it, and it fetches only the blobs it took over', async t => {
      const probes = Array.from({ length: 64 }, (_, i) => `/v2/library/probe/blobs/probe-${i}`)
      // Not digests: a node answers them 400 without asking upstream, and the balancer hashes them all the same.
      const ask = async (): Promise<Map<string, string>> => {
        const mark = await fleet.mark()
        for (const path of probes) await fetchStatus(fleet.url + path)
        return new Map((await fleet.requestsSince(mark)).filter(r => probes.includes(r.path)).map(r => [r.path, r.node]))
      }
      const before = await ask()
      t.equal(before.size, probes.length)
      const added = await fleet.addNode()
      t.comment(`added ${added.name} at ${added.host}`)
      const after = await ask()
      const moved = probes.filter(path => before.get(path) !== after.get(path))
      t.same(sorted(new Set(moved.map(path => after.get(path)))), [added.name], `the ${moved.length} of ${probes.length} keys that moved all moved to ${added.name}`)
      t.ok(moved.length > 0 && moved.length <= probes.length / 2, `a share of the keys moved, not most (${moved.length} of ${probes.length})`)

      const upstreamMark = await scene.upstream.mark()
      const mark = await fleet.mark()
      await scene.pull(t, fleet, 1, 'plain')
      const byDigest = nodesBy(await fleet.requestsSince(mark), digestOf)
      const taken = sorted([...byDigest].filter(([, nodes]) => nodes.has(added.name)).map(([digest]) => digest))
      t.same(split(byDigest), [], 'one node per digest still')
      t.same(new Map(sorted(upstreamGets(await scene.upstream.requestsSince(upstreamMark)))), new Map(taken.map(digest => [digest, 1])), `upstream GETs: once each for the ${taken.length} blobs ${added.name} took over, and no other`)
      t.same([...byDigest].filter(([digest, nodes]) => !nodes.has(added.name) && !nodes.has(blobHomes.get(digest) ?? '')).map(([digest]) => digest), [], 'every other blob stayed on its node')
      blobHomes = homes(byDigest)
    })

    await t.test('a node killed between pulls: three clients still pull, and what the dead node held is fetched again, once each', async t => {
      blobHomes = await pullsAfterKill(t, scene, fleet, blobHomes, 3)
    })

    await t.test('a node killed during a burst of requests: every request is answered', async t => {
      const mark = await fleet.mark()
      // The node holding beta's manifests now; its keys must move mid-burst.
      const warm = await fetchStatus(`${fleet.url}/v2/library/beta/manifests/v1`)
      t.equal(warm, 200)
      const home = (await fleet.requestsSince(mark)).find(r => repositoryOf(r.path) === 'library/beta')?.node ?? ''
      const victim = fleet.node(home)
      const paths = scene.images.flatMap(image => [`/v2/${image.repository}/manifests/v1`, ...image.manifests.map(digest => `/v2/${image.repository}/manifests/${digest}`)])
      const statuses: number[] = []
      let killedAt = 0
      const deadline = Date.now() + 2000
      const killer = (async () => {
        await new Promise(resolve => setTimeout(resolve, 500))
        killedAt = statuses.length
        await victim.kill()
      })()
      await Promise.all(Array.from({ length: 4 }, async (_, loop) => {
        for (let i = loop; Date.now() < deadline; i++) statuses.push(await fetchStatus(fleet.url + (paths[i % paths.length] ?? '/v2/')))
      }))
      await killer
      t.comment(`killed ${victim.name} after ${killedAt} of ${statuses.length} requests`)
      t.ok(killedAt > 0 && statuses.length > killedAt, 'requests ran before and after the kill')
      t.same(statusCounts(statuses), { 200: statuses.length }, 'every one answered 200')
    })
  })

  await t.test('HAProxy (deploy/haproxy/registry-mirror.cfg)', { skip: skipHaproxy }, async t => {
    const fleet = await startFleet(t, scene, 'haproxy')
    let blobHomes = new Map<string, string>()

    await t.test('three skopeo clients at once: one upstream GET per blob, one node per digest and per repository', async t => {
      blobHomes = await pullsShareNothingButTheHash(t, scene, fleet)
    })

    await t.test(`requests from ${CLIENT}: each node logs ${CLIENT}, not the balancer`, async t => {
      const agent = new Agent({ localAddress: CLIENT })
      t.teardown(() => agent.close())
      const mark = await fleet.mark()
      const paths = scene.images.flatMap(image => image.blobs.map(blob => `/v2/${image.repository}/blobs/${blob}`))
      const statuses = await Promise.all(paths.map(async path => await fetchStatus(fleet.url + path, { method: 'HEAD', dispatcher: agent })))
      t.same(statusCounts(statuses), { 200: paths.length })
      const served = (await fleet.requestsSince(mark)).filter(r => digestOf(r.path) !== undefined)
      t.equal(served.length, paths.length)
      t.same(sorted(new Set(served.map(r => r.client))), [CLIENT], `every line names ${CLIENT}`)
    })

    await t.test('a node killed between pulls: a client still pulls, and what the dead node held is fetched again, once each', async t => {
      await pullsAfterKill(t, scene, fleet, blobHomes, 1)
    })
  })
})

