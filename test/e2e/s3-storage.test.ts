// storage.s3 against a real S3 server (Ceph's radosgw, harness/ceph-rgw.ts):
// blobs are verified on the mirror's disk, put into the bucket in the
// background, served from it by ranged reads (or a presigned redirect), found
// there by a node that never fetched them, and a store that is stopped,
// refuses the credentials or lacks the bucket is handled as the issue says.
// Credentials come from the environment, as the SDK's default chain reads
// them; this file's process sets them.

import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { DeleteObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3'
import { ConfigError } from '../../lib/errors.js'
import { requireTools } from '../../harness/tools.js'
import { CephRgw } from '../../harness/ceph-rgw.js'
import { startFakeRegistry, type FakeRegistry } from '../helpers/fake-registry.js'
import { makeImage } from '../helpers/images.js'
import { readBody, startMirror, type TestMirror } from '../helpers/mirror.js'
import { rejectedBy } from '../helpers/throws.js'
import type { YamlS3 } from '../helpers/config.js'

const skip = requireTools(t, ['ceph-mon', 'ceph-osd', 'radosgw', 'ceph', 'monmaptool', 'radosgw-admin'])

const MiB = 1024 * 1024
const hexOf = (digest: string): string => digest.slice('sha256:'.length)

async function waitUntil (what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const until = Date.now() + ms
  while (!await check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

t.test('blobs in a bucket', { skip }, async t => {
  const rgw = await CephRgw.start({ label: 'storage' })
  t.teardown(async () => await rgw.close())
  const bucket = await rgw.createBucket('blobs')
  process.env.AWS_ACCESS_KEY_ID = rgw.accessKeyId
  process.env.AWS_SECRET_ACCESS_KEY = rgw.secretAccessKey
  const admin = rgw.client()
  const s3: YamlS3 = { endpoint: rgw.endpoint, bucket, forcePathStyle: true, prefix: 'mirror/', timeout: '3s' }
  const fake: FakeRegistry = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const small = randomBytes(300_000)
  const large = randomBytes(12 * MiB) // a multipart upload: three parts of 5 MiB or less
  const smallDigest = fake.addBlob('library/app', small)
  const largeDigest = fake.addBlob('library/app', large)
  const inBucket = async (digest: string): Promise<number | undefined> =>
    await admin.send(new HeadObjectCommand({ Bucket: bucket, Key: `mirror/blobs/sha256/${hexOf(digest)}` })).then(r => r.ContentLength, () => undefined)
  const start = async (extra: Partial<YamlS3> = {}, storage?: string): Promise<TestMirror> =>
    await startMirror(t, { upstreams: { 'docker.io': fake.url }, s3: { ...s3, ...extra }, storage, hooks: { uploadRetryDelays: [200, 400, 800, 1600, 3200, 6400] } })

  const a = await start()
  const blobUrl = (m: TestMirror, digest: string): string => `${m.url}/v2/library/app/blobs/${digest}`

  await t.test('a cold blob is served while it arrives, then put into the bucket and indexed once it is there', async t => {
    for (const [digest, bytes] of [[smallDigest, small], [largeDigest, large]] as const) {
      const got = await readBody(await fetch(blobUrl(a, digest)))
      t.ok('bytes' in got && got.bytes.equals(bytes), 'the client gets every byte')
      await waitUntil('the row', () => a.index.getBlob(digest) !== undefined)
      t.equal(await inBucket(digest), bytes.length, 'the object is in the bucket, under the prefix')
      t.equal(fake.hits(`/blobs/${digest}`), 1, 'one upstream GET')
    }
    const uploads = (await rgw.requests()).filter(r => r.path.endsWith(`/blobs/sha256/${hexOf(largeDigest)}`) && r.method === 'PUT')
    t.ok(uploads.length >= 3, `the large blob went up in parts (${uploads.length} PUTs)`)
    t.same(await readdirOf(a.storage), [], 'nothing left in staging')
  })

  await t.test('a hit is a ranged read of the bucket; HEAD is answered by the mirror itself', async t => {
    const mark = await rgw.mark()
    const got = await readBody(await fetch(blobUrl(a, largeDigest)))
    t.ok('bytes' in got && got.bytes.equals(large), 'every byte')
    const ranged = await fetch(blobUrl(a, largeDigest), { headers: { range: 'bytes=5242870-5242899' } })
    t.equal(ranged.status, 206)
    t.ok(Buffer.from(await ranged.arrayBuffer()).equals(large.subarray(5242870, 5242900)), 'a range across a part boundary')
    const head = await fetch(blobUrl(a, largeDigest), { method: 'HEAD' })
    t.equal(head.status, 200)
    t.equal(head.headers.get('content-length'), String(large.length))
    const seen = (await rgw.requestsSince(mark)).filter(r => r.path.endsWith(`/blobs/sha256/${hexOf(largeDigest)}`))
    t.same(seen.map(r => r.method), ['GET', 'GET'], 'two GETs reached the bucket, the HEAD none')
    t.equal(fake.hits(`/blobs/${largeDigest}`), 1, 'and nothing reached upstream')
  })

  await t.test('a node that never fetched a blob finds it in the bucket before going upstream', async t => {
    const b = await start()
    const before = fake.hits(`/blobs/${smallDigest}`)
    const got = await readBody(await fetch(blobUrl(b, smallDigest)))
    t.ok('bytes' in got && got.bytes.equals(small), 'every byte')
    t.ok(fake.hits(`/blobs/${smallDigest}`) <= before + 1, 'at most one upstream request: the HEAD that confirms the repository has it, never a GET')
    t.ok(b.index.getBlob(smallDigest), 'and the node indexed it')
  })

  await t.test('a node that joins serves an image by digest from what another cached, with no upstream request at all', async t => {
    const image = makeImage(fake, 'library/shared', 'v1', { layers: [100_000, 200_000] })
    const first = await start()
    const manifestUrl = (m: TestMirror, ref: string): string => `${m.url}/v2/library/shared/manifests/${ref}`
    const pull = async (m: TestMirror, ref: string): Promise<void> => {
      const res = await fetch(manifestUrl(m, ref), { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
      t.equal(res.status, 200, `${ref}: manifest`)
      t.equal(res.headers.get('docker-content-digest'), image.manifestDigest)
      await res.arrayBuffer()
      for (const digest of [image.configDigest, ...image.layerDigests]) {
        const got = await readBody(await fetch(`${m.url}/v2/library/shared/blobs/${digest}`))
        t.ok('bytes' in got, `${digest.slice(0, 19)}: every byte`)
      }
    }
    await pull(first, 'v1')
    await waitUntil('the first node\'s uploads', () => [image.configDigest, ...image.layerDigests].every(d => first.index.getBlob(d) !== undefined))
    await first.close() // its puts to the bucket end before it does
    const before = fake.requests.length
    const joiner = await start()
    await pull(joiner, image.manifestDigest)
    t.same(fake.requests.slice(before).map(r => `${r.method} ${r.path}`), [], 'upstream was asked nothing: manifest, repository links and blobs came from the bucket')
    t.ok(joiner.index.manifestBelongsTo(image.manifestDigest, 'docker.io/library/shared'), 'the joiner has the manifest under the repository now')
  })

  await t.test('bytes in the bucket that are not what their names say (a hand, a bug, rot) are never served as them', async t => {
    const image = makeImage(fake, 'library/rot', 'v1', { layers: [300_000] })
    const [layer] = image.layerDigests
    if (layer === undefined) throw new Error('no layer')
    const first = await start()
    await (await fetch(`${first.url}/v2/library/rot/manifests/v1`)).arrayBuffer()
    for (const digest of [image.configDigest, layer]) await readBody(await fetch(`${first.url}/v2/library/rot/blobs/${digest}`))
    await waitUntil('the uploads', () => [image.configDigest, layer].every(d => first.index.getBlob(d) !== undefined))
    await first.close()
    const layerKey = `mirror/blobs/sha256/${hexOf(layer)}`
    await admin.send(new PutObjectCommand({ Bucket: bucket, Key: layerKey, Body: randomBytes(300_000) })) // the same size, other bytes
    await admin.send(new PutObjectCommand({ Bucket: bucket, Key: `mirror/manifests/sha256/${hexOf(image.manifestDigest)}`, Body: '{"schemaVersion":2}' }))

    const joiner = await start()
    const manifestHits = fake.hits(`/manifests/${image.manifestDigest}`)
    const res = await fetch(`${joiner.url}/v2/library/rot/manifests/${image.manifestDigest}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
    t.equal(res.status, 200)
    t.equal(res.headers.get('docker-content-digest'), image.manifestDigest)
    t.equal(createHash('sha256').update(Buffer.from(await res.arrayBuffer())).digest('hex'), hexOf(image.manifestDigest), 'the manifest\'s own bytes')
    t.equal(fake.hits(`/manifests/${image.manifestDigest}`), manifestHits + 1, 'from upstream: the bucket\'s copy did not match its digest')

    const layerGets = fake.hits(`/blobs/${layer}`)
    const cut = await readBody(await fetch(`${joiner.url}/v2/library/rot/blobs/${layer}`))
    t.ok('error' in cut, 'a read of the whole blob is cut before its last byte')
    await waitUntil('the object removed', async () => await inBucket(layer) === undefined)
    t.equal(joiner.index.getBlob(layer), undefined, 'and the row')
    const got = await readBody(await fetch(`${joiner.url}/v2/library/rot/blobs/${layer}`))
    t.ok('bytes' in got && createHash('sha256').update(got.bytes).digest('hex') === hexOf(layer), 'the next request gets the blob')
    t.ok(fake.hits(`/blobs/${layer}`) > layerGets, 'from upstream')
    await waitUntil('put back', async () => await inBucket(layer) === 300_000)
  })

  await t.test('a local disk in front of the bucket: hot blobs cost no bucket round trip, within its size', async t => {
    const first = randomBytes(600_000)
    const second = randomBytes(600_000)
    const firstDigest = fake.addBlob('library/app', first)
    const secondDigest = fake.addBlob('library/app', second)
    const hot = await start({ localCache: '1MiB' })
    const bucketGets = async (mark: number, digest: string): Promise<number> =>
      (await rgw.requestsSince(mark)).filter(r => r.method === 'GET' && r.path.endsWith(`/blobs/sha256/${hexOf(digest)}`)).length
    for (const [digest, bytes] of [[firstDigest, first], [secondDigest, second]] as const) {
      t.ok('bytes' in await readBody(await fetch(blobUrl(hot, digest))), 'fetched')
      await waitUntil('the upload', () => hot.index.getBlob(digest) !== undefined)
      const mark = await rgw.mark()
      const got = await readBody(await fetch(blobUrl(hot, digest)))
      t.ok('bytes' in got && got.bytes.equals(bytes), 'a hit')
      t.equal(await bucketGets(mark, digest), 0, 'served from the local copy the upload left')
    }
    const mark = await rgw.mark()
    const got = await readBody(await fetch(blobUrl(hot, firstDigest)))
    t.ok('bytes' in got && got.bytes.equals(first), 'the first again')
    t.ok(await bucketGets(mark, firstDigest) >= 1, 'from the bucket: 1 MiB held only the second')

    // A blob another node put in the bucket: read from it once, copied from the bytes sent, then local.
    const other = await start({ localCache: '10MiB' })
    const m1 = await rgw.mark()
    const first1 = await readBody(await fetch(blobUrl(other, smallDigest)))
    t.ok('bytes' in first1 && first1.bytes.equals(small), 'a blob this node never fetched')
    t.equal(await bucketGets(m1, smallDigest), 1, 'one bucket read: the copy was written from the bytes the client got')
    const m2 = await rgw.mark()
    const again = await readBody(await fetch(blobUrl(other, smallDigest)))
    t.ok('bytes' in again && again.bytes.equals(small), 'served again')
    t.equal(await bucketGets(m2, smallDigest), 0, 'from the copy it made')

    // Read from its middle (a resumed pull): the copy takes a read of its own, in the background.
    const third = randomBytes(200_000)
    const thirdDigest = fake.addBlob('library/app', third)
    t.ok('bytes' in await readBody(await fetch(blobUrl(a, thirdDigest))), 'put in the bucket by another node')
    await waitUntil('the upload', () => a.index.getBlob(thirdDigest) !== undefined)
    const m3 = await rgw.mark()
    const ranged = await fetch(blobUrl(other, thirdDigest), { headers: { range: 'bytes=100-199' } })
    t.equal(ranged.status, 206)
    t.ok(Buffer.from(await ranged.arrayBuffer()).equals(third.subarray(100, 200)), 'the range')
    await waitUntil('the copy', async () => (await bucketGets(m3, thirdDigest)) >= 2)
    await waitUntil('the copy kept', async () => {
      const m4 = await rgw.mark()
      const got = await readBody(await fetch(blobUrl(other, thirdDigest)))
      return 'bytes' in got && got.bytes.equals(third) && await bucketGets(m4, thirdDigest) === 0
    })
    t.pass('then served from the copy')
  })

  await t.test('with redirect: true, a hit is a 307 to a presigned URL sized to the blob; HEAD stays with the mirror', async t => {
    const r = await start({ redirect: true })
    const res = await fetch(blobUrl(r, largeDigest), { redirect: 'manual' })
    t.equal(res.status, 307)
    const location = res.headers.get('location') ?? ''
    t.match(location, new RegExp(`^${rgw.endpoint}/${bucket}/mirror/blobs/sha256/${hexOf(largeDigest)}\\?.*X-Amz-Signature=`), 'to the object, signed')
    const expires = Number(new URL(location).searchParams.get('X-Amz-Expires'))
    t.ok(expires >= 15 * 60 + 12 && expires <= 15 * 60 + 13, `valid for the slow client's time for 12 MiB (${expires} s)`)
    const followed = await readBody(await fetch(blobUrl(r, largeDigest)))
    t.ok('bytes' in followed && followed.bytes.equals(large), 'a client that follows gets every byte from the store')
    const ranged = await fetch(blobUrl(r, largeDigest), { headers: { range: 'bytes=10-19' } })
    t.equal(ranged.status, 206, 'a range follows the redirect')
    t.ok(Buffer.from(await ranged.arrayBuffer()).equals(large.subarray(10, 20)))
    t.equal((await fetch(blobUrl(r, largeDigest), { method: 'HEAD', redirect: 'manual' })).status, 200)
  })

  await t.test('eviction from the shared bucket: never what a node just handed out or streams, nor what a node pins; what the fleet left idle goes', async t => {
    const image = makeImage(fake, 'library/evict', 'v1', { layers: [6 * MiB] })
    const pinnedImage = makeImage(fake, 'library/pinned', 'v1', { layers: [100_000] })
    const [layer] = image.layerDigests
    const [pinnedLayer] = pinnedImage.layerDigests
    if (layer === undefined || pinnedLayer === undefined) throw new Error('no layer')
    const fetcher = await start()
    for (const [repo, img] of [['library/evict', image], ['library/pinned', pinnedImage]] as const) {
      await (await fetch(`${fetcher.url}/v2/${repo}/manifests/v1`)).arrayBuffer()
      for (const d of img.layerDigests) await readBody(await fetch(`${fetcher.url}/v2/${repo}/blobs/${d}`))
      await waitUntil('the uploads', () => img.layerDigests.every(d => fetcher.index.getBlob(d) !== undefined))
    }
    fetcher.cache.addPin('docker.io/library/pinned', 'v1')
    t.ok(await fetcher.cache.publishPins(), 'the pins are written into the bucket at once (as `registry-mirror pin` does), not at the next eviction pass')
    const pins = await admin.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: 'mirror/pins/' }))
    t.ok((pins.Contents ?? []).some(o => o.Key?.endsWith(`/sha256/${hexOf(pinnedLayer)}`) === true), 'the pinned layer among them')

    // Node B hands the layer out by redirect; node A, whose clock says now and whose maxAge is 1 s, evicts.
    const b = await start({ redirect: true })
    const redirected = await fetch(`${b.url}/v2/library/evict/blobs/${layer}`, { redirect: 'manual' })
    t.equal(redirected.status, 307)
    const a = await startMirror(t, { upstreams: { 'docker.io': fake.url }, s3, eviction: { maxAge: 1000 } })
    await new Promise(resolve => setTimeout(resolve, 1100))
    const now = await a.evictor.run()
    t.equal(now.bucket?.removed, 0, 'nothing the fleet touched within a presigned URL\'s life is evicted, whatever one node\'s maxAge')
    const followed = await readBody(await fetch(redirected.headers.get('location') ?? ''))
    t.ok('bytes' in followed && followed.bytes.equals(image.layers[0] ?? Buffer.alloc(0)), 'the client B redirected gets every byte')

    // Node C streams the layer to a client that reads slowly; node E, whose clock is two hours on, evicts meanwhile.
    const c = await start()
    const e = await startMirror(t, { upstreams: { 'docker.io': fake.url }, s3, eviction: { maxAge: 1000 }, hooks: { now: () => Date.now() + 2 * 3600_000 } })
    const slow = await fetch(`${c.url}/v2/library/evict/blobs/${layer}`)
    const reader = slow.body?.getReader()
    const first = await reader?.read()
    const evicted = await e.evictor.run()
    t.ok((evicted.bucket?.removed ?? 0) >= 1, `the idle blobs are evicted (${evicted.bucket?.removed ?? 0})`)
    t.equal(await inBucket(layer), undefined, 'the layer is gone from the bucket')
    t.equal(await inBucket(pinnedLayer), 100_000, 'what a node pins stays')
    const chunks: Uint8Array[] = first?.value === undefined ? [] : [first.value]
    for (;;) {
      const next = await reader?.read()
      if (next === undefined || next.done) break
      chunks.push(next.value)
      await new Promise(resolve => setTimeout(resolve, 5))
    }
    const streamed = Buffer.concat(chunks)
    t.ok(streamed.equals(image.layers[0] ?? Buffer.alloc(0)), `the client C was streaming to still gets every byte (${streamed.length})`)
    const gets = fake.hits(`/blobs/${layer}`)
    const refetched = await readBody(await fetch(`${c.url}/v2/library/evict/blobs/${layer}`))
    t.ok('bytes' in refetched && refetched.bytes.equals(image.layers[0] ?? Buffer.alloc(0)), 'asked again, C finds it gone: a miss, fetched again')
    t.equal(fake.hits(`/blobs/${layer}`), gets + 1, 'with one upstream GET')
  })

  await t.test('with redirect: true, a blob whose object went since this node last marked it is a miss, never a redirect to nothing', async t => {
    const bytes = randomBytes(150_000)
    const digest = fake.addBlob('library/app', bytes)
    let skew = 0
    const r = await startMirror(t, { upstreams: { 'docker.io': fake.url }, s3: { ...s3, redirect: true }, hooks: { now: () => Date.now() + skew } })
    t.ok('bytes' in await readBody(await fetch(blobUrl(r, digest))), 'fetched')
    await waitUntil('the upload', () => r.index.getBlob(digest) !== undefined)
    t.equal((await fetch(blobUrl(r, digest), { redirect: 'manual' })).status, 307, 'a hit is redirected (and marked)')
    await admin.send(new DeleteObjectCommand({ Bucket: bucket, Key: `mirror/blobs/sha256/${hexOf(digest)}` }))
    skew = 11 * 60_000 // past the mark interval: the next redirect marks it again, and looks
    const gets = fake.hits(`/blobs/${digest}`)
    const res = await fetch(blobUrl(r, digest), { redirect: 'manual' })
    t.equal(res.status, 200, 'not redirected to an object that is gone')
    const got = Buffer.from(await res.arrayBuffer())
    t.ok(got.equals(bytes), 'fetched again, every byte')
    t.equal(fake.hits(`/blobs/${digest}`), gets + 1, 'with one upstream GET')
  })

  await t.test('the store stopped: cached blobs get a fast 503, a cold one is served from upstream and put in the bucket once it is back', async t => {
    await rgw.stopGateway()
    const started = Date.now()
    const res = await fetch(blobUrl(a, largeDigest))
    t.equal(res.status, 503)
    t.match(await res.json(), { errors: [{ code: 'UNAVAILABLE' }] }, 'in the OCI envelope')
    t.ok(Date.now() - started < 3000, `within the store's timeout (${Date.now() - started} ms)`)
    t.ok(a.index.getBlob(largeDigest), 'the row is kept')

    const cold = randomBytes(200_000)
    const coldDigest = fake.addBlob('library/app', cold)
    const got = await readBody(await fetch(blobUrl(a, coldDigest)))
    t.ok('bytes' in got && got.bytes.equals(cold), 'a cold blob is served all the same')
    const again = await readBody(await fetch(blobUrl(a, coldDigest)))
    t.ok('bytes' in again && again.bytes.equals(cold), 'and again, from the mirror\'s disk while the upload waits')
    t.equal(fake.hits(`/blobs/${coldDigest}`), 1, 'with one upstream GET')
    t.equal(a.index.getBlob(coldDigest), undefined, 'not indexed: the bucket does not have it')
    await waitUntil('a failed upload try', () => a.logs.some(l => l.msg === 'could not put a verified blob into the store; trying again' && l.digest === coldDigest))

    await rgw.startGateway()
    await waitUntil('the upload to succeed on a later try', () => a.index.getBlob(coldDigest) !== undefined)
    t.equal(await inBucket(coldDigest), cold.length, 'the bucket has it')
    const served = await readBody(await fetch(blobUrl(a, largeDigest)))
    t.ok('bytes' in served && served.bytes.equals(large), 'and the cached blob is served again')
  })
})

t.test('a bucket that is missing, or refuses the credentials, stops the start naming the key at fault', { skip }, async t => {
  const rgw = await CephRgw.start({ label: 'setup' })
  t.teardown(async () => await rgw.close())
  const bucket = await rgw.createBucket('present')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  process.env.AWS_ACCESS_KEY_ID = rgw.accessKeyId
  process.env.AWS_SECRET_ACCESS_KEY = rgw.secretAccessKey
  t.match((await rejectedBy(t, startMirror(t, { upstreams: { 'docker.io': fake.url }, s3: { endpoint: rgw.endpoint, bucket: 'absent', forcePathStyle: true } }), ConfigError, 'a missing bucket'))?.message, /storage\.s3\.bucket: bucket "absent" does not exist at http:\/\/127\.0\.0\.1:\d+/)
  process.env.AWS_SECRET_ACCESS_KEY = 'x'.repeat(40)
  t.match((await rejectedBy(t, startMirror(t, { upstreams: { 'docker.io': fake.url }, s3: { endpoint: rgw.endpoint, bucket, forcePathStyle: true } }), ConfigError, 'a wrong secret'))?.message, /storage\.s3: the store at http:\/\/127\.0\.0\.1:\d+ refused the credentials for bucket "present"/)
  process.env.AWS_SECRET_ACCESS_KEY = rgw.secretAccessKey
  await rgw.stopGateway()
  t.match((await rejectedBy(t, startMirror(t, { upstreams: { 'docker.io': fake.url }, s3: { endpoint: rgw.endpoint, bucket, forcePathStyle: true, timeout: '1s' } }), ConfigError, 'a store that is down'))?.message, /storage\.s3\.endpoint: cannot reach bucket "present" at http:\/\/127\.0\.0\.1:\d+/)
})

async function readdirOf (storage: string): Promise<string[]> {
  return await readdir(join(storage, 'tmp'))
}
