// The harness itself, proven against the reference registry with no mirror in
// between: if these fail, the other end-to-end failures say nothing about the
// mirror.

import t from 'tap'
import { join } from 'node:path'
import { readFile } from 'node:fs/promises'
import { createReadStream } from 'node:fs'
import { createGunzip } from 'node:zlib'
import { pipeline } from 'node:stream/promises'
import { Writable } from 'node:stream'
import { requireTools, findOnPath } from '../../harness/tools.js'
import { ReferenceRegistry } from '../../harness/reference-registry.js'
import { Skopeo } from '../../harness/skopeo.js'
import { Containerd } from '../../harness/containerd.js'
import { Dockerd } from '../../harness/dockerd.js'
import { writeOciLayout, amd64, arm64, type OciLayout } from '../../harness/oci-layout.js'
import { getManifest } from '../../harness/registry-api.js'
import { freshSeed } from '../../harness/random.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { run } from '../../harness/process.js'
import { HashingStream } from '../../harness/digest.js'
import { tarHeader } from '../../harness/tar.js'
import { TrafficRecorder } from '../../harness/traffic-recorder.js'
import { isBlobGet } from '../../harness/access-log.js'

const skip = requireTools(t, ['docker-registry', 'skopeo'])

t.test('a tar header has the ustar magic and a checksum GNU tar accepts', async t => {
  const header = tarHeader({ name: 'data/x.bin', type: 'file', size: 5 })
  t.equal(header.length, 512)
  t.equal(header.subarray(257, 263).toString('latin1'), 'ustar\0')
  let sum = 0
  for (const [i, byte] of header.entries()) sum += i >= 148 && i < 156 ? 32 : byte
  t.equal(parseInt(header.subarray(148, 154).toString('latin1'), 8), sum)
})

t.test('the reference registry serves what the image generator wrote', { skip }, async t => {
  const work = await makeTempDir('harness')
  t.teardown(() => removeTempDir(work))
  const registry = await ReferenceRegistry.start({ label: 'harness' })
  t.teardown(() => registry.close())
  const skopeo = new Skopeo(work)
  const seed = freshSeed()
  let layout: OciLayout | undefined

  await t.test('a layer is a gzip tar that GNU tar lists with its file and size', { skip: findOnPath('tar') === undefined ? 'no tar' : false }, async t => {
    layout = await writeOciLayout(join(work, 'multi'), { tag: 'v1', seed, platforms: [amd64, arm64], layerSizes: [3000, 70_000] })
    const image = layout.images[0]
    const layer = image?.layers[1]
    if (image === undefined || layer === undefined) throw new Error('no second layer')
    const blob = join(layout.dir, 'blobs', 'sha256', layer.digest.slice(7))
    const { stdout } = await run('tar', ['-tvzf', blob])
    t.match(stdout, /data\/amd64-1\.bin/)
    t.match(stdout, /\b70000\b/)
    const tar = new HashingStream()
    await pipeline(createReadStream(blob), createGunzip(), tar, new Writable({ write (_chunk, _encoding, callback) { callback() } }))
    const config: unknown = JSON.parse(await readFile(join(layout.dir, 'blobs', 'sha256', image.config.digest.slice(7)), 'utf8'))
    t.match(config, { rootfs: { diff_ids: [String, tar.digest()] } }, 'the config lists the uncompressed digest as diff_id')
  })

  await t.test('an index pushed with skopeo keeps its digest', async t => {
    if (layout === undefined) layout = await writeOciLayout(join(work, 'multi'), { tag: 'v1', seed, platforms: [amd64, arm64], layerSizes: [3000, 70_000] })
    await skopeo.push(layout.dir, 'v1', `${registry.host}/library/multi:v1`)
    const manifest = await getManifest(registry.url, 'library/multi', 'v1')
    t.equal(manifest.digest, layout.top.digest)
    t.equal(manifest.mediaType, 'application/vnd.oci.image.index.v1+json')
  })

  await t.test('the access log counts every blob GET of a pull', async t => {
    const mark = await registry.mark()
    await skopeo.pullToDir(`${registry.host}/library/multi:v1`, join(work, 'pulled'))
    const blobs = new Set(layout?.images.flatMap(image => [image.config.digest, ...image.layers.map(layer => layer.digest)]))
    const gets = await registry.blobGets(mark)
    t.same(new Set(gets.map(request => request.path.replace(/^.*\/blobs\//, ''))), blobs)
    t.equal(gets.length, blobs.size, 'each blob once')
  })

  await t.test('the traffic recorder relays a pull unchanged and notes its request lines', async t => {
    const recorder = await TrafficRecorder.start(registry.host)
    t.teardown(() => recorder.close())
    const mark = await registry.mark()
    const { digest } = await skopeo.pullToDir(`${recorder.host}/library/multi:v1`, join(work, 'relayed'))
    t.equal(digest, layout?.top.digest)
    const seen = recorder.requests()
    t.ok(seen.some(request => request.method === 'GET' && request.uri === '/v2/library/multi/manifests/v1'), 'the tag GET is on record')
    t.equal(seen.filter(isBlobGet).length, (await registry.blobGets(mark)).length, 'as many blob GETs as reached the registry')
  })

  await t.test('a registry restarted on the same port still serves its images', async t => {
    const port = registry.port
    await registry.stop()
    await t.rejects(fetch(`${registry.url}/v2/`), 'nothing answers while it is stopped')
    await registry.start()
    t.equal(registry.port, port)
    t.equal((await getManifest(registry.url, 'library/multi', 'v1')).digest, layout?.top.digest)
  })
})

const daemonSkip = skip !== false ? skip : requireTools(t, ['containerd', 'ctr', 'dockerd', 'docker'], { root: true })

t.test('containerd and dockerd pull straight from the reference registry', { skip: daemonSkip }, async t => {
  const work = await makeTempDir('harness')
  t.teardown(() => removeTempDir(work))
  const registry = await ReferenceRegistry.start({ label: 'direct' })
  t.teardown(() => registry.close())
  const layout = await writeOciLayout(join(work, 'multi'), { tag: 'v1', seed: freshSeed(), platforms: [amd64, arm64], layerSizes: [1 << 20] })
  await new Skopeo(work).push(layout.dir, 'v1', `${registry.host}/library/multi:v1`)

  await t.test('ctr pulls and unpacks the index via a hosts.toml naming the registry', async t => {
    const containerd = await Containerd.start()
    t.teardown(() => containerd.close())
    await containerd.addHost({ registry: 'docker.io', host: registry.url })
    const pulled = await containerd.pull('docker.io/library/multi:v1')
    t.equal(pulled.digest, layout.top.digest)
    const queries = (await registry.requests()).filter(request => request.userAgent.startsWith('containerd/')).map(request => request.uri)
    t.ok(queries.length > 0 && queries.every(uri => uri.endsWith('?ns=docker.io')), 'containerd sends ?ns=docker.io', { queries })
  })

  await t.test('dockerd pulls the index from an insecure registry', async t => {
    const dockerd = await Dockerd.start({ insecureRegistries: [registry.host] })
    t.teardown(() => dockerd.close())
    const reference = `${registry.host}/library/multi:v1`
    await dockerd.pull(reference)
    t.same(await dockerd.digestsOf(reference), [layout.top.digest])
    await dockerd.removeAll()
    t.same(await dockerd.imageIds(), [])
  })
})
