import t from 'tap'
import { randomBytes } from 'node:crypto'
import { request } from 'undici'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { readBody, startMirror, type Teardown } from './helpers/mirror.js'
import { existsSync, readdirSync } from 'node:fs'
import { rm, truncate } from 'node:fs/promises'
import { join } from 'node:path'


async function setup (t: Teardown, options: { redirectBlobs?: boolean } = {}): Promise<{ fake: FakeRegistry, url: string, storage: string, mirror: Awaited<ReturnType<typeof startMirror>> }> {
  const fake = await startFakeRegistry(options)
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  return { fake, url: mirror.url, storage: mirror.storage, mirror }
}


const blobPath = (digest: string): string => `/v2/library/app/blobs/${digest}`

t.test('eight concurrent requests for one uncached blob make exactly one upstream GET', async t => {
  const { fake, url } = await setup(t)
  const bytes = randomBytes(3 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  const gate = fake.gateBlob(digest, 64 * 1024)
  const responses = Array.from({ length: 8 }, async () => await fetch(url + blobPath(digest)))
  await gate.reached
  // let every client arrive while the download is held half-way
  await new Promise(resolve => setTimeout(resolve, 100))
  gate.release()
  const bodies = await Promise.all(responses.map(async r => await readBody(await r)))
  for (const b of bodies) {
    t.ok('bytes' in b && b.bytes.equals(bytes), 'every client gets the whole blob')
  }
  t.equal(fake.count('GET', `/blobs/${digest}`), 1, 'one upstream GET')
})

t.test('a client that joins mid-download streams from the same download', async t => {
  const { fake, url, mirror } = await setup(t)
  const bytes = randomBytes(2 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  const gate = fake.gateBlob(digest, 512 * 1024)
  const first = fetch(url + blobPath(digest))
  await gate.reached
  const second = fetch(url + blobPath(digest))
  await new Promise(resolve => setTimeout(resolve, 50))
  gate.release()
  const [a, b] = await Promise.all([readBody(await first), readBody(await second)])
  t.ok('bytes' in a && a.bytes.equals(bytes))
  t.ok('bytes' in b && b.bytes.equals(bytes))
  t.equal(fake.count('GET', `/blobs/${digest}`), 1)
  const outcomes = mirror.logs.filter(l => l.msg === 'request').map(l => l.cache).sort()
  t.same(outcomes, ['joined', 'miss'])
})

t.test('a cached blob is served from disk without asking upstream, even when upstream is down', async t => {
  const { fake, url } = await setup(t)
  const bytes = randomBytes(100_000)
  const digest = fake.addBlob('library/app', bytes)
  const first = await fetch(url + blobPath(digest))
  t.equal(first.status, 200)
  t.ok(Buffer.from(await first.arrayBuffer()).equals(bytes))
  await fake.stop()
  const second = await fetch(url + blobPath(digest))
  t.equal(second.status, 200)
  t.equal(second.headers.get('docker-content-digest'), digest)
  t.equal(second.headers.get('content-length'), String(bytes.length))
  t.ok(Buffer.from(await second.arrayBuffer()).equals(bytes))
  await fake.start()
  t.equal(fake.count('GET', `/blobs/${digest}`), 1, 'only the first request reached upstream')
})

t.test('a cached blob is read into reused buffers: the next response allocates none', async t => {
  const { fake, url, mirror } = await setup(t)
  const bytes = randomBytes(3 * 1024 * 1024 + 12_345) // several read chunks and a short last one
  const digest = fake.addBlob('library/app', bytes)
  await (await fetch(url + blobPath(digest))).arrayBuffer() // cached now
  const pool = mirror.readBuffers
  const first = await fetch(url + blobPath(digest))
  t.equal(first.headers.get('x-mirror-cache'), 'hit')
  t.ok(Buffer.from(await first.arrayBuffer()).equals(bytes), 'first hit intact')
  const allocated = pool.allocated
  t.ok(pool.free > 0, 'buffers came back once sent')
  for (let i = 0; i < 3; i++) {
    const again = await fetch(url + blobPath(digest))
    t.ok(Buffer.from(await again.arrayBuffer()).equals(bytes), `hit ${i + 2} intact`)
  }
  t.equal(pool.allocated, allocated, 'later hits reused the buffers')
  const ranged = await fetch(url + blobPath(digest), { headers: { Range: 'bytes=1048570-2097160' } })
  t.equal(ranged.status, 206)
  t.ok(Buffer.from(await ranged.arrayBuffer()).equals(bytes.subarray(1048570, 2097161)), 'a range across a chunk edge is intact')
})

t.test('a cached blob whose file is shorter than indexed cuts the connection, never a short 200 body that looks whole, and is fetched again next time', async t => {
  const { fake, url, storage, mirror } = await setup(t)
  const bytes = randomBytes(2 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  await (await fetch(url + blobPath(digest))).arrayBuffer()
  const file = join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))
  await truncate(file, 1024 * 1024 + 10)
  // Left waiting for the missing bytes, a client would only give up on its own timeout.
  const res = await fetch(url + blobPath(digest), { signal: AbortSignal.timeout(20_000) })
  t.equal(res.headers.get('content-length'), String(bytes.length), 'the indexed length was announced')
  const body = await readBody(res)
  t.ok('error' in body, 'the client sees the body cut')
  if ('error' in body) t.not(body.error.name, 'TimeoutError', 'cut by the mirror, not left hanging')
  const later = await fetch(url + '/v2/')
  t.equal(later.status, 200, 'the mirror goes on serving')
  for (let i = 0; i < 50 && mirror.index.getBlob(digest) !== undefined; i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.equal(mirror.index.getBlob(digest), undefined, 'the row is dropped at once')
  const again = await fetch(url + blobPath(digest))
  t.equal(again.headers.get('x-mirror-cache'), 'miss', 'so the next request fetches it again')
  t.ok(Buffer.from(await again.arrayBuffer()).equals(bytes), 'whole')
})

t.test('a download reads its socket into the pool\'s buffers and gives them back: the next downloads allocate none', async t => {
  const { fake, url, mirror } = await setup(t)
  const blobs = [1, 2, 3].map(() => randomBytes(6 * 1024 * 1024 + 999))
  const digests = blobs.map(b => fake.addBlob('library/app', b))
  const pool = mirror.readBuffers
  const before = pool.allocated
  // Two clients each: one streams from memory as bytes arrive, both give their chunks back once sent.
  const pull = async (i: number): Promise<void> => {
    const [a, b] = await Promise.all([fetch(url + blobPath(digests[i] ?? '')), fetch(url + blobPath(digests[i] ?? ''))])
    t.ok(Buffer.from(await a.arrayBuffer()).equals(blobs[i] ?? Buffer.alloc(0)), `download ${i}, one client`)
    t.ok(Buffer.from(await b.arrayBuffer()).equals(blobs[i] ?? Buffer.alloc(0)), `download ${i}, the other`)
  }
  await pull(0)
  const first = pool.allocated - before
  t.ok(first > 0 && first <= 64, `the first download took ${first} buffers`)
  await pull(1)
  await pull(2)
  t.ok(pool.allocated - before - first <= 4, `the next two took ${pool.allocated - before - first} more`)
})

t.test('clients leaving a cached blob mid-body leave the mirror serving it whole to the next', async t => {
  const { fake, url, mirror } = await setup(t)
  const bytes = randomBytes(8 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  await (await fetch(url + blobPath(digest))).arrayBuffer()
  const afterDownload = mirror.readBuffers.allocated
  for (let i = 0; i < 5; i++) {
    const controller = new AbortController()
    const res = await fetch(url + blobPath(digest), { signal: controller.signal })
    await res.body?.getReader().read()
    controller.abort()
  }
  const whole = await fetch(url + blobPath(digest))
  t.ok(Buffer.from(await whole.arrayBuffer()).equals(bytes))
  const more = mirror.readBuffers.allocated - afterDownload
  t.ok(more <= 16, `read buffers stay few (${more} more than the download's)`)
})

t.test('a storage directory emptied under a running mirror: the next blob is fetched and cached again, not a 500', async t => {
  const { fake, url, storage } = await setup(t)
  const first = randomBytes(50_000)
  const firstDigest = fake.addBlob('library/app', first)
  await (await fetch(url + blobPath(firstDigest))).arrayBuffer()
  await rm(join(storage, 'tmp'), { recursive: true })
  await rm(join(storage, 'blobs'), { recursive: true })
  const second = randomBytes(60_000)
  const secondDigest = fake.addBlob('library/app', second)
  const res = await fetch(url + blobPath(secondDigest))
  t.equal(res.status, 200)
  t.ok(Buffer.from(await res.arrayBuffer()).equals(second))
  const again = await fetch(url + blobPath(secondDigest))
  t.equal(again.headers.get('x-mirror-cache'), 'hit', 'cached again')
  const lost = await fetch(url + blobPath(firstDigest))
  t.equal(lost.status, 200, 'a blob whose file went with the directory is fetched again')
  t.ok(Buffer.from(await lost.arrayBuffer()).equals(first))
  t.equal(fake.count('GET', `/blobs/${firstDigest}`), 2)
})

t.test('the same blob under another repository of the same upstream is a hit', async t => {
  const { fake, url } = await setup(t)
  const bytes = randomBytes(10_000)
  const digest = fake.addBlob('library/app', bytes)
  fake.addBlob('library/other', bytes)
  await (await fetch(url + blobPath(digest))).arrayBuffer()
  const res = await fetch(`${url}/v2/library/other/blobs/${digest}`)
  t.ok(Buffer.from(await res.arrayBuffer()).equals(bytes))
  t.equal(fake.count('GET', '/blobs/'), 1)
})

t.test('a client that disconnects does not cancel the download: the cache still fills', async t => {
  const { fake, url, storage } = await setup(t)
  const bytes = randomBytes(4 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  fake.setBlobFault(digest, { kind: 'slow', bytesPerChunk: 512 * 1024, intervalMs: 20 })
  const controller = new AbortController()
  const res = await fetch(url + blobPath(digest), { signal: controller.signal })
  const reader = res.body?.getReader()
  await reader?.read()
  controller.abort()
  const file = join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))
  for (let i = 0; i < 100 && !existsSync(file); i++) await new Promise(resolve => setTimeout(resolve, 50))
  t.ok(existsSync(file), 'the blob was committed after the client left')
  fake.clearFaults()
  const again = await fetch(url + blobPath(digest))
  t.ok(Buffer.from(await again.arrayBuffer()).equals(bytes))
  t.equal(fake.count('GET', `/blobs/${digest}`), 1)
})

t.test('bytes that do not match the digest: every client is cut off, nothing is cached, and it is logged', async t => {
  const { fake, url, storage, mirror } = await setup(t)
  const bytes = randomBytes(1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  fake.setBlobFault(digest, { kind: 'corrupt' })
  const bodies = await Promise.all([0, 1, 2].map(async () => await readBody(await fetch(url + blobPath(digest)))))
  for (const b of bodies) t.ok('error' in b, 'the response was aborted, never completed')
  t.equal(fake.count('GET', `/blobs/${digest}`), 1)
  t.notOk(existsSync(join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))), 'nothing cached')
  t.same(readdirSync(join(storage, 'tmp')), [], 'no temp file left')
  const logged = (): boolean => mirror.logs.some(l => typeof l.msg === 'string' && l.msg.includes('failed verification'))
  for (let i = 0; i < 50 && !logged(); i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.ok(logged(), 'logged')
  fake.clearFaults()
  const retry = await fetch(url + blobPath(digest))
  t.ok(Buffer.from(await retry.arrayBuffer()).equals(bytes), 'the next request fetches it again, correctly')
})

t.test('a connection cut mid-blob aborts the client and caches nothing', async t => {
  const { fake, url, storage } = await setup(t)
  const bytes = randomBytes(1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  fake.setBlobFault(digest, { kind: 'truncate', after: 300_000 })
  // Cut before the mirror's answer has begun (all of the upstream's bytes came in one read) or after.
  const body = await fetch(url + blobPath(digest)).then(readBody, (err: Error) => ({ error: err }))
  t.ok('error' in body)
  t.notOk(existsSync(join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))))
  t.same(readdirSync(join(storage, 'tmp')), [])
})

t.test('Range on a cached blob answers 206 with the slice', async t => {
  const { fake, url } = await setup(t)
  const bytes = randomBytes(50_000)
  const digest = fake.addBlob('library/app', bytes)
  await (await fetch(url + blobPath(digest))).arrayBuffer()
  const res = await request(url + blobPath(digest), { headers: { range: 'bytes=100-199' } })
  t.equal(res.statusCode, 206)
  t.equal(res.headers['content-range'], `bytes 100-199/${bytes.length}`)
  t.ok(Buffer.from(await res.body.arrayBuffer()).equals(bytes.subarray(100, 200)))
  const tail = await request(url + blobPath(digest), { headers: { range: 'bytes=-10' } })
  t.ok(Buffer.from(await tail.body.arrayBuffer()).equals(bytes.subarray(bytes.length - 10)))
  const bad = await request(url + blobPath(digest), { headers: { range: `bytes=${bytes.length + 5}-` } })
  t.equal(bad.statusCode, 416)
  t.equal(bad.headers['content-range'], `bytes */${bytes.length}`)
  await bad.body.dump()
})

t.test('Range on a blob still downloading answers 206 from the growing file', async t => {
  const { fake, url } = await setup(t)
  const bytes = randomBytes(1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  const gate = fake.gateBlob(digest, 100_000)
  const first = fetch(url + blobPath(digest))
  await gate.reached
  const ranged = request(url + blobPath(digest), { headers: { range: 'bytes=500000-500099' } })
  await new Promise(resolve => setTimeout(resolve, 50))
  gate.release()
  const res = await ranged
  t.equal(res.statusCode, 206)
  t.ok(Buffer.from(await res.body.arrayBuffer()).equals(bytes.subarray(500000, 500100)))
  await (await first).arrayBuffer()
  t.equal(fake.count('GET', `/blobs/${digest}`), 1)
})

t.test('HEAD of an uncached blob asks upstream with a HEAD and downloads nothing', async t => {
  const { fake, url } = await setup(t)
  const bytes = randomBytes(20_000)
  const digest = fake.addBlob('library/app', bytes)
  const res = await fetch(url + blobPath(digest), { method: 'HEAD' })
  t.equal(res.status, 200)
  t.equal(res.headers.get('content-length'), String(bytes.length))
  t.equal(fake.count('HEAD', `/blobs/${digest}`), 1)
  t.equal(fake.count('GET', `/blobs/${digest}`), 0)
})

t.test('HEAD of a cached blob is answered from the cache; once its file is gone, the row goes and upstream answers', async t => {
  const { fake, url, storage, mirror } = await setup(t)
  const bytes = randomBytes(20_000)
  const digest = fake.addBlob('library/app', bytes)
  await (await fetch(url + blobPath(digest))).arrayBuffer()
  const hit = await fetch(url + blobPath(digest), { method: 'HEAD' })
  t.equal(hit.status, 200)
  t.equal(hit.headers.get('x-mirror-cache'), 'hit')
  t.equal(hit.headers.get('content-length'), String(bytes.length))
  t.equal(fake.count('HEAD', `/blobs/${digest}`), 0, 'upstream not asked')

  await rm(join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7)))
  const lost = await fetch(url + blobPath(digest), { method: 'HEAD' })
  t.equal(lost.status, 200)
  t.equal(lost.headers.get('x-mirror-cache'), 'miss', 'a row without a file is a miss, never a 500')
  t.equal(fake.count('HEAD', `/blobs/${digest}`), 1, 'upstream answered the HEAD')
  t.equal(mirror.index.getBlob(digest), undefined, 'the row was dropped')
})

t.test('an unknown blob is BLOB_UNKNOWN', async t => {
  const { url } = await setup(t)
  const res = await fetch(url + blobPath(`sha256:${'0'.repeat(64)}`))
  t.equal(res.status, 404)
  t.same(await res.json(), { errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to upstream', detail: { digest: `sha256:${'0'.repeat(64)}`, upstream: 'docker.io' } }] })
})

t.test('blobs redirected to a CDN are followed without sending credentials to it', async t => {
  const fake = await startFakeRegistry({ redirectBlobs: true, auth: { username: 'u', password: 'p' } })
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: fake.url, username: 'u', password: 'p' } } })
  const bytes = randomBytes(30_000)
  const digest = fake.addBlob('library/app', bytes)
  const res = await fetch(mirror.url + blobPath(digest))
  t.equal(res.status, 200)
  t.ok(Buffer.from(await res.arrayBuffer()).equals(bytes))
  t.equal(fake.cdnRequests.length, 1, 'the CDN was asked')
  t.equal(fake.cdnRequests[0]?.headers.authorization, undefined, 'without the Authorization header')
  t.notOk(mirror.logText().includes('Bearer '), 'tokens never reach the log')
})

t.test('an upstream that is down gives 503 UNAVAILABLE for an uncached blob', async t => {
  const { fake, url } = await setup(t)
  const digest = fake.addBlob('library/app', randomBytes(100))
  await fake.stop()
  const res = await fetch(url + blobPath(digest))
  t.equal(res.status, 503)
  const body = await res.json() as { errors: Array<{ code: string }> }
  t.equal(body.errors[0]?.code, 'UNAVAILABLE')
})

t.test('an upstream 429 with nothing cached gives 429 TOOMANYREQUESTS with Retry-After', async t => {
  const { fake, url } = await setup(t)
  const digest = fake.addBlob('library/app', randomBytes(100))
  fake.setBlobFault(digest, { kind: 'status', status: 429, headers: { 'retry-after': '42', 'ratelimit-remaining': '0;w=21600' } })
  const res = await fetch(url + blobPath(digest))
  t.equal(res.status, 429)
  t.equal(res.headers.get('retry-after'), '42')
  t.equal(res.headers.get('ratelimit-remaining'), '0;w=21600')
  const body = await res.json() as { errors: Array<{ code: string }> }
  t.equal(body.errors[0]?.code, 'TOOMANYREQUESTS')
})

t.test('the request log keeps the query of the distribution API and redacts every other value', async t => {
  const { fake, url, mirror } = await setup(t)
  const digest = fake.addBlob('library/app', randomBytes(1000))
  await (await fetch(`${url}${blobPath(digest)}?ns=docker.io&token=s3cret&X-Amz-Signature=s3cret2`)).arrayBuffer()
  const line = mirror.logs.find(l => l.msg === 'request' && typeof l.path === 'string' && l.path.startsWith(blobPath(digest)))
  t.equal(line?.path, `${blobPath(digest)}?ns=docker.io&token=%5Bredacted%5D&X-Amz-Signature=%5Bredacted%5D`)
  t.notMatch(mirror.logText(), /s3cret/, 'no query secret anywhere in the log')
})
