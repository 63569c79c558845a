// Clients cannot grow the index or the catalog, nor read a layer through
// another repository's name: a repository is the cache's only once upstream
// has shown it has the content (a manifest fetched or confirmed there, a blob
// fetched there or named by such a manifest, or a HEAD saying so).

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { CacheIndex } from '../lib/db/cache-index.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { readBody, startMirror } from './helpers/mirror.js'
import { tempDir } from './helpers/temp-dir.js'

const blob = (repository: string, digest: string): string => `/v2/${repository}/blobs/${digest}`

t.test('a cached blob asked for under another repository is served only once upstream confirms that repository has it', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [4000] })
  const layer = image.layerDigests[0] ?? ''
  const first = await readBody(await fetch(mirror.url + blob('library/app', layer)))
  t.ok('bytes' in first)

  fake.reset()
  const refused = await fetch(mirror.url + blob('library/other', layer))
  t.equal(refused.status, 404, 'another repository that upstream says lacks it gets nothing')
  await refused.arrayBuffer()
  t.same(fake.requests.map(r => `${r.method} ${r.path}`), [`HEAD /v2/library/other/blobs/${layer}`], 'one HEAD asked, nothing fetched')

  fake.addBlob('library/other', image.layers[0] ?? Buffer.alloc(0))
  fake.reset()
  const confirmed = await fetch(mirror.url + blob('library/other', layer))
  t.equal(confirmed.status, 200)
  t.equal(confirmed.headers.get('x-mirror-cache'), 'hit', 'served from the cache once confirmed')
  t.ok(Buffer.from(await confirmed.arrayBuffer()).equals(image.layers[0] ?? Buffer.alloc(0)))
  const again = await fetch(mirror.url + blob('library/other', layer))
  await again.arrayBuffer()
  t.same(fake.requests.map(r => r.method), ['HEAD'], 'confirmed once, then known')
})

t.test('requests under random repository names add nothing to the index or the catalog', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [1000] })
  t.equal((await fetch(`${mirror.url}/v2/library/app/manifests/v1`)).status, 200)
  await (await fetch(mirror.url + blob('library/app', image.layerDigests[0] ?? ''))).arrayBuffer()
  for (let i = 0; i < 40; i++) {
    const name = `junk${randomBytes(4).toString('hex')}/x`
    for (const path of [blob(name, image.layerDigests[0] ?? ''), `/v2/${name}/manifests/${image.manifestDigest}`]) {
      const res = await fetch(mirror.url + path)
      t.equal(res.status, 404, path)
      await res.arrayBuffer()
    }
  }
  mirror.flushAccess()
  t.same(mirror.index.repositories(), ['docker.io/library/app'], 'the catalog holds only what upstream confirmed')
  const catalog = await (await fetch(`${mirror.url}/v2/_catalog`)).json() as { repositories: string[] }
  t.same(catalog.repositories, ['docker.io/library/app'])
})

t.test('a manifest cached for one repository is served by digest under another only once upstream confirms it', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  t.equal((await fetch(`${mirror.url}/v2/library/app/manifests/v1`)).status, 200)
  const path = `/v2/library/other/manifests/${image.manifestDigest}`
  fake.reset()
  t.equal((await fetch(mirror.url + path)).status, 404)
  t.same(fake.requests.map(r => r.method), ['HEAD'])
  fake.addManifest('library/other', undefined, image.manifest, image.mediaType)
  const res = await fetch(mirror.url + path)
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-mirror-cache'), 'hit')
  t.ok(Buffer.from(await res.arrayBuffer()).equals(image.manifest))
  t.equal(fake.count('GET', '/manifests/'), 0, 'the bytes came from the cache')
})

t.test('with the upstream down, every image whose manifests are cached is still served, shared layers included', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const a = makeImage(fake, 'library/a', 'v1', { layers: [3000] })
  // b shares a's layer; only b's manifest is pulled through the mirror, and its layer came via a.
  const shared = a.layers[0] ?? Buffer.alloc(0)
  fake.addBlob('library/b', shared)
  const bManifest = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: a.configDigest, size: a.config.length }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: a.layerDigests[0], size: shared.length }] }
  fake.addBlob('library/b', a.config)
  fake.addManifest('library/b', 'v1', bManifest, 'application/vnd.oci.image.manifest.v1+json')
  for (const path of ['/v2/library/a/manifests/v1', blob('library/a', a.layerDigests[0] ?? ''), '/v2/library/b/manifests/v1']) {
    const res = await fetch(mirror.url + path)
    t.equal(res.status, 200, path)
    await res.arrayBuffer()
  }
  await fake.stop()
  const viaB = await fetch(mirror.url + blob('library/b', a.layerDigests[0] ?? ''))
  t.equal(viaB.status, 200, 'the layer belongs to b: a cached manifest of b names it')
  t.ok(Buffer.from(await viaB.arrayBuffer()).equals(shared))
  const stranger = await fetch(mirror.url + blob('library/c', a.layerDigests[0] ?? ''))
  t.equal(stranger.status, 503, 'a repository with no cached manifest naming it is not served with the upstream down')
  await stranger.arrayBuffer()
})

t.test('a download under way is joined from another repository only once upstream confirms it', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const bytes = randomBytes(512 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  const gate = fake.gateBlob(digest, 64 * 1024)
  const first = fetch(mirror.url + blob('library/app', digest))
  await gate.reached
  const other = await fetch(mirror.url + blob('library/other', digest))
  t.equal(other.status, 404, 'not joined: upstream says library/other has no such blob')
  await other.arrayBuffer()
  gate.release()
  const body = await readBody(await first)
  t.ok('bytes' in body && body.bytes.equals(bytes))
})

t.test('referrers answers are bounded, and go with their subject', async t => {
  const dir = await tempDir(t, 'mirror-referrers')
  const index = new CacheIndex({ path: join(dir, 'index.db') })
  t.teardown(() => index.close())
  const subject = (i: number): string => `sha256:${i.toString(16).padStart(64, '0')}`
  index.transaction(() => {
    for (let i = 0; i < 30; i++) index.putReferrers('docker.io/library/app', subject(i), '', Buffer.from('{}'), 20)
  })
  const db = new Database(join(dir, 'index.db'), { readonly: true })
  t.teardown(() => db.close())
  const count = (): number => (db.prepare('SELECT count(*) AS n FROM referrers').get() as { n: number }).n
  t.equal(count(), 20, 'never more than the bound')
  t.equal(index.getReferrers('docker.io/library/app', subject(0), ''), undefined, 'the oldest went first')
  t.ok(index.getReferrers('docker.io/library/app', subject(29), ''))
  index.putManifest('docker.io/library/app', { digest: subject(29), mediaType: 'application/vnd.oci.image.manifest.v1+json', content: Buffer.from('{}') })
  index.deleteManifest(subject(29))
  t.equal(index.getReferrers('docker.io/library/app', subject(29), ''), undefined, 'evicting a manifest takes its referrers along')
})

t.test('opening an index of the previous schema fills in which blobs each cached manifest names', async t => {
  const dir = await tempDir(t, 'mirror-migrate')
  const path = join(dir, 'index.db')
  const layer = `sha256:${'1'.repeat(64)}`
  const config = `sha256:${'2'.repeat(64)}`
  const artifactBlob = `sha256:${'3'.repeat(64)}`
  const old = `sha256:${'4'.repeat(64)}`
  {
    const index = new CacheIndex({ path })
    index.putManifest('docker.io/library/app', { digest: `sha256:${'a'.repeat(64)}`, mediaType: 'application/vnd.oci.image.manifest.v1+json', content: Buffer.from(JSON.stringify({ config: { digest: config }, layers: [{ digest: layer }] })) })
    index.putManifest('docker.io/library/app', { digest: `sha256:${'b'.repeat(64)}`, mediaType: 'application/vnd.oci.image.manifest.v1+json', content: Buffer.from(JSON.stringify({ blobs: [{ digest: artifactBlob }], layers: 'nope' })) })
    index.putManifest('docker.io/library/app', { digest: `sha256:${'c'.repeat(64)}`, mediaType: 'application/vnd.docker.distribution.manifest.v1+json', content: Buffer.from(JSON.stringify({ fsLayers: [{ blobSum: old }] })) })
    index.putManifest('docker.io/library/app', { digest: `sha256:${'d'.repeat(64)}`, mediaType: 'x', content: Buffer.from('not json') })
    index.close()
  }
  {
    const db = new Database(path)
    db.exec('DELETE FROM manifest_blobs')
    db.pragma('user_version = 2')
    db.close()
  }
  const index = new CacheIndex({ path })
  t.teardown(() => index.close())
  for (const digest of [layer, config, artifactBlob, old]) t.ok(index.blobBelongsTo(digest, 'docker.io/library/app'), `${digest.slice(0, 12)} belongs to the repository again`)
  t.notOk(index.blobBelongsTo(layer, 'docker.io/library/other'))
})
