import t from 'tap'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { makeImage, type BuiltImage } from './helpers/images.js'
import { startMirror, type TestMirror, type Teardown } from './helpers/mirror.js'
import type { MirrorConfig } from '../lib/config/types.js'

const KiB = 1024

interface Scene {
  fake: FakeRegistry
  mirror: TestMirror
  clock: { now: number }
  pull: (image: BuiltImage, repo?: string) => Promise<void>
  fetchBlob: (digest: string, repo?: string) => Promise<Buffer>
  hasBlob: (digest: string) => boolean
}

async function scene (t: Teardown, eviction: Partial<Omit<MirrorConfig['storage'], 'path'>>): Promise<Scene> {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const clock = { now: 1_700_000_000_000 }
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, eviction, hooks: { now: () => clock.now } })
  const fetchBlob = async (digest: string, repo = 'library/app'): Promise<Buffer> => {
    clock.now += 1000
    const res = await fetch(`${mirror.url}/v2/${repo}/blobs/${digest}`)
    if (res.status !== 200) throw new Error(`blob ${digest}: HTTP ${res.status}`)
    return Buffer.from(await res.arrayBuffer())
  }
  const pull = async (image: BuiltImage, repo = 'library/app'): Promise<void> => {
    clock.now += 1000
    const res = await fetch(`${mirror.url}/v2/${repo}/manifests/${image.manifestDigest}`)
    await res.arrayBuffer()
    for (const digest of image.blobDigests) await fetchBlob(digest, repo)
    mirror.flushAccess()
  }
  const hasBlob = (digest: string): boolean => mirror.index.getBlob(digest) !== undefined &&
    existsSync(join(mirror.storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7)))
  return { fake, mirror, clock, pull, fetchBlob, hasBlob }
}

/** Lets a background eviction triggered by the last download finish. */
async function settle (mirror: TestMirror): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, 50))
  await mirror.evictor.idle()
}

t.test('past the high watermark exactly the least recently used blobs go, down to the low watermark', async t => {
  const { fake, mirror, fetchBlob, hasBlob } = await scene(t, { maxSize: 1000 * KiB, highWatermark: 0.9, lowWatermark: 0.6 })
  const blobs = [0, 1, 2, 3, 4].map(() => fake.addBlob('library/app', randomBytes(200 * KiB)))
  const [a, b, c, d, e] = blobs as [string, string, string, string, string]
  for (const digest of [a, b, c, d]) await fetchBlob(digest)
  await fetchBlob(a) // a is now the most recently used of the four
  mirror.flushAccess()
  await settle(mirror)
  t.ok(blobs.slice(0, 4).every(hasBlob), '800 KiB is under the high watermark: nothing evicted')
  await fetchBlob(e) // 1000 KiB > 900 KiB
  await settle(mirror)
  t.notOk(hasBlob(b), 'b, least recently used, went')
  t.notOk(hasBlob(c), 'c, next, went')
  t.ok(hasBlob(d), 'd stayed: 600 KiB reached the low watermark')
  t.ok(hasBlob(a), 'a stayed: used recently')
  t.ok(hasBlob(e), 'e stayed: just fetched')
  const upstreamGets = fake.count('GET', `/blobs/${b}`)
  t.equal((await fetchBlob(b)).length, 200 * KiB, 'an evicted blob is simply fetched again')
  t.equal(fake.count('GET', `/blobs/${b}`), upstreamGets + 1)
})

t.test('a blob shared by two images survives while either is recent; pinned images stay', async t => {
  const { fake, mirror, pull, hasBlob, clock } = await scene(t, { maxSize: 1000 * KiB, highWatermark: 0.9, lowWatermark: 0.75 })
  const pinned = makeImage(fake, 'library/app', 'pinned', { layers: [150 * KiB] })
  const x = makeImage(fake, 'library/app', 'x', { layers: [150 * KiB, 300 * KiB] })
  const shared = x.layerDigests[0] ?? ''
  const sharedBytes = x.layers[0] ?? Buffer.alloc(0)
  fake.addBlob('library/app', sharedBytes)
  const y = makeImage(fake, 'library/app', 'y', { layers: [] })
  // y's manifest references x's first layer too, as images built FROM the same base do
  const yManifest = JSON.parse(y.manifest.toString()) as { layers: unknown[] }
  yManifest.layers = [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: shared, size: sharedBytes.length }]
  const yDigest = fake.addManifest('library/app', 'y', Buffer.from(JSON.stringify(yManifest)), y.mediaType)
  const yImage: BuiltImage = { ...y, manifestDigest: yDigest, blobDigests: [y.configDigest, shared] }

  await pull(pinned)
  await fetch(`${mirror.url}/v2/library/app/manifests/pinned`).then(async r => await r.arrayBuffer())
  mirror.index.addPin('docker.io/library/app', 'pinned')
  await pull(x)
  await pull(yImage) // touches the shared layer again
  clock.now += 1000
  // 150 pinned + 450 of x (150 shared with y) + 400 = 1000 KiB, past the 900 KiB mark; down to 750 KiB
  // means dropping the least recently used 250 KiB and more: x's manifest, config and own 300 KiB layer,
  // not the shared one, which y used after x.
  const filler = [0, 1].map(() => fake.addBlob('library/app', randomBytes(200 * KiB)))
  for (const digest of filler) {
    clock.now += 1000
    await (await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)).arrayBuffer()
  }
  mirror.flushAccess()
  await settle(mirror)
  t.notOk(hasBlob(x.layerDigests[1] ?? ''), "x's own layer, not used since, went")
  t.ok(hasBlob(shared), 'the layer x shares with y stayed: y used it recently')
  for (const digest of filler) t.ok(hasBlob(digest), 'newer blobs stayed')
  t.equal(mirror.index.getManifest(x.manifestDigest), undefined, "x's manifest went")
  for (const digest of pinned.blobDigests) t.ok(hasBlob(digest), `pinned blob ${digest.slice(0, 15)} stayed`)
  t.ok(mirror.index.getManifest(pinned.manifestDigest), 'pinned manifest stayed')
  t.equal(mirror.index.getTag('docker.io/library/app', 'pinned')?.digest, pinned.manifestDigest, 'and its tag')
})

t.test('anything not accessed within maxAge goes, measured from last access; its tags go with it', async t => {
  const day = 24 * 3600 * 1000
  const { fake, mirror, pull, hasBlob, clock } = await scene(t, { maxAge: 2 * day })
  const old = makeImage(fake, 'library/app', 'old', { layers: [10 * KiB] })
  const used = makeImage(fake, 'library/app', 'used', { layers: [10 * KiB] })
  await fetch(`${mirror.url}/v2/library/app/manifests/old`).then(async r => await r.arrayBuffer())
  await pull(old)
  await fetch(`${mirror.url}/v2/library/app/manifests/used`).then(async r => await r.arrayBuffer())
  await pull(used)
  clock.now += day + 3600_000
  await pull(used) // first pulled as long ago as `old`, but accessed again since
  clock.now += day
  const result = await mirror.evictor.run()
  t.equal(result.byReason.age.count, old.blobDigests.length + 1, "old's manifest and blobs went")
  for (const digest of old.blobDigests) t.notOk(hasBlob(digest))
  for (const digest of used.blobDigests) t.ok(hasBlob(digest), 'accessed within maxAge: kept')
  t.equal(mirror.index.getManifest(old.manifestDigest), undefined)
  t.equal(mirror.index.getTag('docker.io/library/app', 'old'), undefined, 'no tag left pointing at an evicted manifest')
  const again = await fetch(`${mirror.url}/v2/library/app/manifests/old`)
  t.equal(again.status, 200, 'an evicted tag is fetched again from upstream')
  t.equal(again.headers.get('docker-content-digest'), old.manifestDigest)
})

t.test('evicting a blob never breaks a response already streaming it', async t => {
  const { fake, mirror, fetchBlob, hasBlob } = await scene(t, { maxSize: 10 * 1024 * KiB, highWatermark: 0.9, lowWatermark: 0.5 })
  const bytes = randomBytes(8 * 1024 * KiB)
  const digest = fake.addBlob('library/app', bytes)
  await fetchBlob(digest)
  const res = await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)
  const reader = res.body?.getReader()
  const first = await reader?.read()
  const received = [Buffer.from(first?.value ?? new Uint8Array())]
  // Size bound dropped to force it out while the response is mid-way.
  await mirror.evictor.run({ needBytes: 100 * 1024 * KiB })
  t.notOk(hasBlob(digest), 'evicted')
  for (;;) {
    const chunk = await reader?.read()
    if (chunk === undefined || chunk.done) break
    received.push(Buffer.from(chunk.value))
  }
  t.ok(Buffer.concat(received).equals(bytes), 'the response that was streaming completed with the right bytes')
})

t.test('when pins alone exceed maxSize, the log says so and nothing pinned goes', async t => {
  const { fake, mirror, pull, hasBlob } = await scene(t, { maxSize: 100 * KiB, highWatermark: 0.9, lowWatermark: 0.5 })
  const image = makeImage(fake, 'library/app', 'big', { layers: [150 * KiB] })
  mirror.index.addPin('docker.io/library/app', 'big')
  await fetch(`${mirror.url}/v2/library/app/manifests/big`).then(async r => await r.arrayBuffer())
  await pull(image)
  await settle(mirror)
  await mirror.evictor.run()
  for (const digest of image.blobDigests) t.ok(hasBlob(digest))
  t.ok(mirror.logs.some(l => typeof l.msg === 'string' && l.msg.includes('pinned images alone')), 'logged')
})

t.test('eviction also runs on its schedule, without any request or call to trigger it', async t => {
  const day = 24 * 3600 * 1000
  // 1s is the shortest storage.evictionInterval the config accepts.
  const { fake, mirror, fetchBlob, hasBlob, clock } = await scene(t, { maxAge: day, evictionInterval: 1000 })
  const digest = fake.addBlob('library/app', randomBytes(10 * KiB))
  await fetchBlob(digest)
  mirror.flushAccess()
  t.ok(hasBlob(digest))
  clock.now += 2 * day
  const logged = (): boolean => mirror.logs.some(l => l.msg === 'evicting' && l.reason === 'age' && l.digest === digest)
  for (let i = 0; i < 250 && (hasBlob(digest) || !logged()); i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.notOk(hasBlob(digest), 'the scheduled pass removed the blob idle past maxAge')
  t.ok(logged(), 'and logged it with its reason')
})
