// The air-gapped site, end to end with real parts: a connected mirror is
// warmed from the reference registries and exports a bundle; a second mirror,
// offline, whose upstreams do not exist, imports it (after refusing a
// corrupted and a truncated copy without a trace), and dockerd, containerd
// and podman pull every image from it with the upstream's digests.

import t from 'tap'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { requireTools } from '../../harness/tools.js'
import { World } from '../../harness/world.js'
import { MirrorSite } from '../../harness/mirror-site.js'
import { Dockerd } from '../../harness/dockerd.js'
import { Containerd } from '../../harness/containerd.js'
import { Podman } from '../../harness/podman.js'
import { Skopeo } from '../../harness/skopeo.js'
import { sha256 } from '../../harness/digest.js'
import { isBlobGet } from '../../harness/access-log.js'
import { getManifest } from '../../harness/registry-api.js'

const skip = requireTools(t, ['docker-registry', 'skopeo', 'containerd', 'ctr', 'dockerd', 'docker', 'podman'], { root: true })

/** What a data directory holds: the counts stats reports and every file under blobs/ and tmp/. */
async function cacheState (site: MirrorSite): Promise<unknown> {
  const { stdout } = await site.cli(['stats', '--json'])
  const stats = (JSON.parse(stdout) as { cache: Record<string, unknown> }).cache
  const files: string[] = []
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name)
      if (statSync(path).isDirectory()) walk(path)
      else files.push(`${relative(site.dataDir, path)} ${statSync(path).size}`)
    }
  }
  walk(join(site.dataDir, 'blobs'))
  walk(join(site.dataDir, 'tmp'))
  return { blobs: stats.blobs, blobBytes: stats.blobBytes, manifests: stats.manifests, tags: stats.tags, repositories: stats.repositories, files: files.sort() }
}

/** Offsets of each entry's data in a tar (ustar, names under 100 bytes as export writes them). */
function entries (tar: Buffer): Array<{ name: string, data: number, size: number }> {
  const out: Array<{ name: string, data: number, size: number }> = []
  let at = 0
  while (at + 512 <= tar.length && tar[at] !== 0) {
    const name = tar.subarray(at, at + 100).toString('utf8').replace(/\0.*$/s, '')
    const size = parseInt(tar.subarray(at + 124, at + 136).toString('ascii').replace(/\0.*$/s, ''), 8)
    out.push({ name, data: at + 512, size })
    at += 512 + Math.ceil(size / 512) * 512
  }
  return out
}

t.test('an air-gapped mirror serves dockerd, containerd and podman from an imported bundle, with the upstream digests', { skip }, async t => {
  const world = await World.create(t)
  const images = world.images
  const upstreams = [...world.upstreams].map(([name, upstream]) => ({ name, url: upstream.url, default: name === 'docker.io' }))
  const connected = await MirrorSite.create({ label: 'connected', upstreams })
  t.teardown(() => connected.close())
  // Port 9 (discard) on loopback: nothing listens there, so any contact would fail loudly.
  const nowhere = upstreams.map(u => ({ ...u, url: 'http://127.0.0.1:9' }))
  const airgapped = await MirrorSite.create({ label: 'airgapped', upstreams: nowhere, offline: true })
  t.teardown(() => airgapped.close())
  const bundle = join(connected.dir, 'bundle.tar')
  const names = images.map(image => image.byTag)

  await t.test('warm fills the connected mirror from the reference registries; a second warm fetches no blob', async t => {
    const marks = await world.markUpstreams()
    const first = await connected.cli(['warm', ...names])
    t.match(first.stdout, new RegExp(`warmed ${images.length} of ${images.length} images`))
    t.ok((await world.upstreamRequestsSince(marks, isBlobGet)).length > 0, 'blobs came from the upstreams')
    const again = await world.markUpstreams()
    const second = await connected.cli(['warm', ...names])
    t.match(second.stdout, /\(0 fetched, 0 B;/)
    t.same(await world.upstreamRequestsSince(again, isBlobGet), [], 'no blob GET reached an upstream the second time')
  })

  await t.test('export --offline writes every image from the cache, and skopeo reads the bundle by image name', async t => {
    const marks = await world.markUpstreams()
    const r = await connected.cli(['export', '--offline', ...names, '-o', bundle])
    t.match(r.stdout, new RegExp(`exported ${images.length} images`))
    t.same(await world.upstreamRequestsSince(marks), [], 'export --offline asked no upstream anything')
    const skopeo = new Skopeo(connected.dir)
    for (const image of images) {
      const out = join(connected.dir, `skopeo-${image.registry}-${image.repository.replace('/', '-')}`)
      // An index with every platform; a single manifest (a Docker-typed one is reached through the OCI index
      // export adds for skopeo's sake) for this machine's platform.
      const all = image.mediaType.includes('index') || image.mediaType.includes('list') ? ['--all'] : []
      await skopeo.run(['copy', ...all, `oci-archive:${bundle}:${image.byTag}`, `dir:${out}`])
      t.equal(sha256(readFileSync(join(out, 'manifest.json'))), image.digest, `skopeo copies ${image.byTag}, ${image.kind}, digest unchanged`)
    }
  })

  await t.test('import into the offline mirror; a flipped byte and a truncated bundle are refused and leave its cache unchanged', async t => {
    const r = await airgapped.cli(['import', bundle])
    t.match(r.stdout, new RegExp(`imported ${images.length} images`))
    const before = await cacheState(airgapped)

    const tar = readFileSync(bundle)
    const layer = entries(tar).filter(e => e.name.startsWith('blobs/')).reduce((a, e) => e.size > a.size ? e : a)
    const flipped = Buffer.from(tar)
    const at = layer.data + Math.floor(layer.size / 2)
    flipped[at] = (flipped[at] ?? 0) ^ 0x10
    const flippedPath = join(airgapped.dir, 'flipped.tar')
    writeFileSync(flippedPath, flipped)
    const bad = await airgapped.cliStatus(['import', flippedPath])
    t.equal(bad.code, 1)
    t.match(bad.stderr, new RegExp(`refused, nothing imported: bundle is corrupt: entry ${layer.name} does not match its digest`))
    t.same(await cacheState(airgapped), before, 'the cache is unchanged')

    const truncatedPath = join(airgapped.dir, 'truncated.tar')
    writeFileSync(truncatedPath, tar.subarray(0, Math.floor(tar.length * 0.6)))
    const cut = await airgapped.cliStatus(['import', truncatedPath])
    t.equal(cut.code, 1)
    t.match(cut.stderr, /refused, nothing imported: bundle is truncated: /)
    t.same(await cacheState(airgapped), before, 'the cache is unchanged')
  })

  await airgapped.serve()
  // The clients must get everything from the air-gapped mirror: the real upstreams go away.
  await world.stopUpstreams()

  await t.test('the offline mirror answers each tag with the upstream digest, multi-platform indexes byte-identical', async t => {
    for (const image of images) {
      const served = await getManifest(airgapped.url, `${image.registry}/${image.repository}`, image.tag)
      t.equal(served.digest, image.digest, `${image.byTag}: ${image.kind}`)
    }
  })

  await t.test('dockerd pulls every image: Docker Hub ones through registry-mirrors, the others naming the mirror', async t => {
    const dockerd = await Dockerd.start({ mirrors: [airgapped.url] })
    t.teardown(() => dockerd.close())
    for (const image of images) {
      const reference = image.registry === 'docker.io'
        ? `${image.repository.replace(/^library\//, '')}:${image.tag}`
        : `${airgapped.host}/${image.registry}/${image.repository}:${image.tag}`
      await pullOrExplain(() => dockerd.pull(reference), airgapped)
      t.ok((await dockerd.digestsOf(reference)).includes(image.digest), `dockerd pulled ${reference} as ${image.digest}`)
    }
  })

  await t.test('containerd pulls every image by tag and by digest', async t => {
    const containerd = await Containerd.start()
    t.teardown(() => containerd.close())
    for (const registry of airgapped.registries) await containerd.addHost({ registry, host: airgapped.url })
    for (const image of images) {
      await pullOrExplain(() => containerd.pull(image.byTag), airgapped)
      t.equal((await containerd.image(image.byTag)).digest, image.digest, `ctr pulled ${image.byTag}`)
      await pullOrExplain(() => containerd.pull(image.byDigest), airgapped)
    }
  })

  await t.test('podman pulls every image through mirror locations with a path prefix', async t => {
    const podman = await Podman.create(airgapped.registries.map(registry => ({ registry, location: airgapped.locationFor(registry) })))
    t.teardown(() => podman.close())
    for (const image of images) {
      await pullOrExplain(() => podman.pull(image.byTag), airgapped)
      t.ok((await podman.digestsOf(image.byTag)).includes(image.digest), `podman pulled ${image.byTag} as ${image.digest}`)
    }
  })

  t.notMatch(readFileSync(airgapped.logPath, 'utf8'), /127\.0\.0\.1:9\b/, 'the offline mirror never tried its (nonexistent) upstreams')
})

async function pullOrExplain (pull: () => Promise<unknown>, site: MirrorSite): Promise<void> {
  try {
    await pull()
  } catch (err) {
    if (err instanceof Error) err.message += `\n${site.tail()}`
    throw err
  }
}
