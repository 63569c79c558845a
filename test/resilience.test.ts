import t from 'tap'
import { createServer } from 'node:net'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeIndex } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'
import { tempDir } from './helpers/temp-dir.js'

/** A loopback port nothing listens on. */
async function deadPort (): Promise<number> {
  const server = createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  await new Promise(resolve => server.close(resolve))
  return port
}

t.test('the mirror starts with no upstream reachable and serves what it has cached, by tag and by digest', async t => {
  const storage = await tempDir(t, 'mirror-resilience')
  const fake = await startFakeRegistry()
  const index = makeIndex(fake, 'library/app', 'v1', ['linux/amd64', 'linux/arm64'], 20_000)
  const first = await startMirror({ teardown: () => {} }, { upstreams: { 'docker.io': fake.url }, storage })
  await (await fetch(`${first.url}/v2/app/manifests/v1`)).arrayBuffer()
  for (const image of index.images) {
    await (await fetch(`${first.url}/v2/app/manifests/${image.manifestDigest}`)).arrayBuffer()
    for (const digest of image.blobDigests) await (await fetch(`${first.url}/v2/app/blobs/${digest}`)).arrayBuffer()
  }
  await first.close()
  await fake.close()

  // The same cache, an upstream that is not there, and every tag already stale.
  const mirror = await startMirror(t, { upstreams: { 'docker.io': `http://127.0.0.1:${await deadPort()}` }, storage, tagTtl: 1 })
  const byTag = await fetch(`${mirror.url}/v2/app/manifests/v1`)
  t.equal(byTag.status, 200, 'by tag')
  t.equal(byTag.headers.get('docker-content-digest'), index.indexDigest)
  t.equal(byTag.headers.get('x-mirror-cache'), 'stale')
  t.ok(Buffer.from(await byTag.arrayBuffer()).equals(index.index), 'byte-exact')
  for (const image of index.images) {
    const manifest = await fetch(`${mirror.url}/v2/app/manifests/${image.manifestDigest}`)
    t.equal(manifest.status, 200, 'by digest')
    await manifest.arrayBuffer()
    for (const digest of image.blobDigests) {
      const blob = await fetch(`${mirror.url}/v2/app/blobs/${digest}`)
      t.equal(blob.status, 200)
      await blob.arrayBuffer()
    }
  }
  const missing = await fetch(`${mirror.url}/v2/app/manifests/v2`)
  t.equal(missing.status, 503, 'what it lacks is UNAVAILABLE while upstream is unreachable')
  t.equal(((await missing.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'UNAVAILABLE')
})
