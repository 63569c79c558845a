import t from 'tap'
import { createHash } from 'node:crypto'
import { request } from 'undici'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage, makeIndex, MediaTypes } from './helpers/images.js'
import { startMirror, type Teardown } from './helpers/mirror.js'


const ALL = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ')

async function setup (t: Teardown, tagTtl = 300_000) {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  let clock = 1_000_000
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tagTtl, hooks: { now: () => clock } })
  const advance = (ms: number): void => { clock += ms }
  const get = async (path: string, accept = ALL, method = 'GET') => {
    const res = await request(mirror.url + path, { method, headers: { accept } })
    const body = Buffer.from(await res.body.arrayBuffer())
    return { status: res.statusCode, headers: res.headers, body }
  }
  return { fake, mirror, advance, get }
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

t.test('a manifest is served byte-exact with its media type, digest and length', async t => {
  const { fake, get } = await setup(t)
  const index = makeIndex(fake, 'library/app', 'v1', ['linux/amd64', 'linux/arm64'], 1000)
  const res = await get('/v2/library/app/manifests/v1')
  t.equal(res.status, 200)
  t.ok(res.body.equals(index.index), 'same bytes as upstream')
  t.equal(res.headers['content-type'], MediaTypes.ociIndex)
  t.equal(res.headers['docker-content-digest'], index.indexDigest)
  t.equal(res.headers['content-length'], String(index.index.length))
  const head = await get('/v2/library/app/manifests/v1', ALL, 'HEAD')
  t.equal(head.status, 200)
  t.equal(head.headers['docker-content-digest'], index.indexDigest)
  t.equal(head.headers['content-length'], String(index.index.length))
})

t.test('a one-part name on the default Docker Hub upstream means library/', async t => {
  const { fake, get } = await setup(t)
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const res = await get('/v2/app/manifests/v1')
  t.equal(res.headers['docker-content-digest'], image.manifestDigest)
  t.equal(fake.count('GET', '/v2/library/app/manifests/v1'), 1)
})

t.test('a fresh tag is answered from the cache without asking upstream', async t => {
  const { fake, get, advance } = await setup(t, 60_000)
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get('/v2/library/app/manifests/v1')
  advance(59_000)
  await get('/v2/library/app/manifests/v1')
  await get('/v2/library/app/manifests/v1', ALL, 'HEAD')
  t.equal(fake.count('*', '/manifests/'), 1, 'upstream asked once')
})

t.test('a stale tag is revalidated with a HEAD, not a GET', async t => {
  const { fake, get, advance, mirror } = await setup(t, 60_000)
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get('/v2/library/app/manifests/v1')
  advance(61_000)
  const res = await get('/v2/library/app/manifests/v1')
  t.equal(res.status, 200)
  t.equal(fake.count('GET', '/manifests/v1'), 1, 'one GET, the first')
  t.equal(fake.count('HEAD', '/manifests/v1'), 1, 'one HEAD to revalidate')
  t.same(mirror.logs.filter(l => l.msg === 'request').map(l => l.cache), ['miss', 'revalidated'])
  await get('/v2/library/app/manifests/v1')
  t.equal(fake.count('*', '/manifests/v1'), 2, 'fresh again after revalidation')
})

t.test('concurrent requests for a stale tag share one revalidation', async t => {
  const { fake, get, advance } = await setup(t, 60_000)
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get('/v2/library/app/manifests/v1')
  advance(61_000)
  await Promise.all(Array.from({ length: 10 }, async () => await get('/v2/library/app/manifests/v1')))
  t.equal(fake.count('HEAD', '/manifests/v1'), 1)
})

t.test('a tag that moved upstream is followed after the TTL', async t => {
  const { fake, get, advance } = await setup(t, 60_000)
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get('/v2/library/app/manifests/v1')
  const second = makeImage(fake, 'library/app', 'v1', { layers: [20] })
  const before = await get('/v2/library/app/manifests/v1')
  t.not(before.headers['docker-content-digest'], second.manifestDigest, 'still the cached answer within the TTL')
  advance(61_000)
  const after = await get('/v2/library/app/manifests/v1')
  t.equal(after.headers['docker-content-digest'], second.manifestDigest)
  t.ok(after.body.equals(second.manifest))
})

t.test('when upstream is down or failing, a stale tag is served from the cache', async t => {
  const { fake, get, advance, mirror } = await setup(t, 60_000)
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get('/v2/library/app/manifests/v1')
  advance(61_000)
  fake.setManifestFault('library/app', 'v1', { kind: 'status', status: 503 })
  const failing = await get('/v2/library/app/manifests/v1')
  t.equal(failing.status, 200)
  t.equal(failing.headers['docker-content-digest'], image.manifestDigest)
  fake.setManifestFault('library/app', 'v1', { kind: 'status', status: 429, headers: { 'retry-after': '10' } })
  advance(61_000)
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200, 'served stale on 429')
  await fake.stop()
  advance(61_000)
  const down = await get('/v2/library/app/manifests/v1')
  t.equal(down.status, 200)
  t.ok(down.body.equals(image.manifest))
  t.equal(down.headers['x-mirror-cache'], 'stale', 'and says so in a header')
  t.equal((await get(`/v2/library/app/manifests/${image.manifestDigest}`)).status, 200, 'and by digest')
  t.ok(mirror.logs.filter(l => l.msg === 'request').some(l => l.cache === 'stale'))
})

t.test('a tag deleted upstream is gone from the mirror after the TTL', async t => {
  const { fake, get, advance } = await setup(t, 60_000)
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get('/v2/library/app/manifests/v1')
  fake.deleteTag('library/app', 'v1')
  advance(61_000)
  const res = await get('/v2/library/app/manifests/v1')
  t.equal(res.status, 404)
  t.equal((JSON.parse(res.body.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'MANIFEST_UNKNOWN')
})

t.test('a manifest by digest never goes upstream once cached', async t => {
  const { fake, get, advance } = await setup(t, 1)
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get(`/v2/library/app/manifests/${image.manifestDigest}`)
  advance(10_000_000)
  await get(`/v2/library/app/manifests/${image.manifestDigest}`)
  await get(`/v2/library/app/manifests/${image.manifestDigest}`, ALL, 'HEAD')
  t.equal(fake.count('*', '/manifests/'), 1)
})

t.test('a manifest fetched by digest is checked against that digest, and not cached when wrong', async t => {
  const { fake, get } = await setup(t)
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  fake.setManifestFault('library/app', image.manifestDigest, { kind: 'corrupt' })
  const res = await get(`/v2/library/app/manifests/${image.manifestDigest}`)
  t.equal(res.status, 400)
  t.equal((JSON.parse(res.body.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'MANIFEST_INVALID')
  fake.clearFaults()
  const ok = await get(`/v2/library/app/manifests/${image.manifestDigest}`)
  t.equal(ok.status, 200)
  t.equal(sha(ok.body), image.manifestDigest)
  t.equal(fake.count('GET', image.manifestDigest), 2, 'the bad answer was not cached')
})

t.test("the client's Accept is honoured: a client that takes no index is never sent one", async t => {
  const { fake, get } = await setup(t)
  fake.behaviour.strictAccept = false
  const index = makeIndex(fake, 'library/app', 'v1', ['linux/amd64'], 10)
  const first = await get('/v2/library/app/manifests/v1')
  t.equal(first.headers['content-type'], MediaTypes.ociIndex)
  // this upstream ignores Accept and sends the index anyway: the mirror must not pass it on
  const narrow = await get('/v2/library/app/manifests/v1', MediaTypes.ociManifest)
  t.equal(narrow.status, 404, 'never an index to a client that does not accept one')
  t.equal(fake.count('GET', '/manifests/v1'), 2, 'upstream was asked with the narrow Accept')
  t.equal(fake.lastRequest('GET', '/manifests/v1')?.headers.accept, MediaTypes.ociManifest)
  const again = await get('/v2/library/app/manifests/v1')
  t.equal(again.headers['docker-content-digest'], index.indexDigest, 'the tag still names the index')
})

t.test('an upstream rate limit with nothing cached is 429 TOOMANYREQUESTS, and rate-limit headers pass through', async t => {
  const { fake, get } = await setup(t)
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  makeImage(fake, 'library/app', 'v2', { layers: [10] })
  fake.behaviour.rateLimit = { remaining: 1, limit: 100 }
  const ok = await get('/v2/library/app/manifests/v1')
  t.equal(ok.status, 200)
  t.equal(ok.headers['ratelimit-limit'], '100;w=21600')
  t.equal(ok.headers['ratelimit-remaining'], '0;w=21600')
  const limited = await get('/v2/library/app/manifests/v2')
  t.equal(limited.status, 429)
  t.ok(limited.headers['retry-after'])
  t.equal((JSON.parse(limited.body.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'TOOMANYREQUESTS')
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200, 'the cached tag is still served')
})

t.test('an oversized manifest is refused with SIZE_INVALID and not cached', async t => {
  const { fake, get, mirror } = await setup(t)
  const huge = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociManifest, annotations: { pad: 'x'.repeat(5 * 1024 * 1024) } }))
  fake.addManifest('library/app', 'big', huge, MediaTypes.ociManifest)
  const res = await get('/v2/library/app/manifests/big')
  t.equal(res.status, 400)
  t.equal((JSON.parse(res.body.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'SIZE_INVALID')
  t.equal(mirror.index.getTag('docker.io/library/app', 'big'), undefined)
})

t.test('a tag is never resolved to a digest the mirror cannot then serve', async t => {
  const { fake, get, mirror } = await setup(t)
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  await get('/v2/library/app/manifests/v1')
  const tag = mirror.index.getTag('docker.io/library/app', 'v1')
  t.equal(tag?.digest, image.manifestDigest)
  t.ok(mirror.index.getManifest(image.manifestDigest)?.content.equals(image.manifest))
})
