import t from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { startFakeRegistry, startFakeTokenServer, type FakeRegistry, type FakeRegistryOptions, type RecordedRequest } from './helpers/fake-registry.js'
import { makeImage, MediaTypes } from './helpers/images.js'
import { startMirror, type TestMirror, type Teardown } from './helpers/mirror.js'

const ALL = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ')
const basic = (username: string, password: string): string => `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`

interface Answer { status: number, headers: IncomingHttpHeaders, body: Buffer }

interface Setup {
  fake: FakeRegistry
  mirror: TestMirror
  advance: (ms: number) => void
  get: (path: string) => Promise<Answer>
}

async function setup (t: Teardown, fakeOptions: FakeRegistryOptions, credentials?: { username: string, password: string, authHosts?: string[] }): Promise<Setup> {
  const fake = await startFakeRegistry(fakeOptions)
  t.teardown(async () => await fake.close())
  let clock = 1_000_000
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: fake.url, ...credentials } }, hooks: { now: () => clock } })
  return {
    fake,
    mirror,
    advance: ms => { clock += ms },
    get: async path => {
      const res = await request(mirror.url + path, { headers: { accept: ALL } })
      return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) }
    }
  }
}

/** What upstream saw, as "METHOD path -> status [auth scheme]", from entry `from` on. */
function sequence (requests: RecordedRequest[], from = 0): string[] {
  return requests.slice(from).map(r => {
    const scheme = /^(\w+)\s/.exec(r.headers.authorization ?? '')?.[1] ?? 'none'
    return `${r.method} ${r.path.split('?')[0] ?? ''} -> ${String(r.status)} [${scheme}]`
  })
}

function errorOf (answer: Answer): { code: string, message: string } | undefined {
  const body = JSON.parse(answer.body.toString('utf8')) as { errors?: Array<{ code: string, message: string }> }
  return body.errors?.[0]
}

t.test('an anonymous pull follows the token flow: 401, a token for the repository, then the retry with it', async t => {
  const { fake, get } = await setup(t, { auth: {} })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const res = await get('/v2/library/app/manifests/v1')
  t.equal(res.status, 200)
  t.equal(res.headers['docker-content-digest'], image.manifestDigest)
  t.equal(fake.tokenRequests, 1)
  t.same(sequence(fake.requests), [
    'GET /v2/library/app/manifests/v1 -> 401 [none]',
    'GET /token -> 200 [none]',
    'GET /v2/library/app/manifests/v1 -> 200 [Bearer]'
  ])
  const token = new URL(fake.requests[1]?.path ?? '/', 'http://x').searchParams
  t.equal(token.get('service'), 'fake-registry', 'the service from the challenge')
  t.same(token.getAll('scope'), ['repository:library/app:pull'], 'the scope from the challenge')
})

t.test('the token is reused for later requests of the same repository', async t => {
  const { fake, get } = await setup(t, { auth: {} })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10, 20] })
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200)
  const before = fake.requests.length
  for (const digest of image.blobDigests) t.equal((await get(`/v2/library/app/blobs/${digest}`)).status, 200)
  t.equal((await get('/v2/library/app/tags/list')).status, 200)
  t.equal(fake.tokenRequests, 1, 'no second token fetch')
  t.same(sequence(fake.requests, before), [
    `GET /v2/library/app/blobs/${image.blobDigests[0] ?? ''} -> 200 [Bearer]`,
    `GET /v2/library/app/blobs/${image.blobDigests[1] ?? ''} -> 200 [Bearer]`,
    `GET /v2/library/app/blobs/${image.blobDigests[2] ?? ''} -> 200 [Bearer]`,
    'GET /v2/library/app/tags/list -> 200 [Bearer]'
  ], 'each sent with the token at once, no 401')
  const sent = new Set(fake.requests.slice(before).map(r => r.headers.authorization))
  t.equal(sent.size, 1, 'the same token each time')
})

t.test('another repository gets its own token', async t => {
  const { fake, get } = await setup(t, { auth: {} })
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  makeImage(fake, 'library/other', 'v1', { layers: [10] })
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200)
  t.equal((await get('/v2/library/other/manifests/v1')).status, 200)
  t.equal(fake.tokenRequests, 2)
  const scopes = fake.requests.filter(r => r.path.startsWith('/token')).map(r => new URL(r.path, 'http://x').searchParams.get('scope'))
  t.same(scopes, ['repository:library/app:pull', 'repository:library/other:pull'])
})

t.test('concurrent first requests for one repository share one token fetch', async t => {
  const { fake, get } = await setup(t, { auth: {}, latencyMs: 80 })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10, 10, 10, 10, 10] })
  const answers = await Promise.all(image.blobDigests.map(async d => await get(`/v2/library/app/blobs/${d}`)))
  t.same(answers.map(a => a.status), image.blobDigests.map(() => 200))
  t.equal(fake.tokenRequests, 1)
})

t.test('credentials go as Basic to the token endpoint and nowhere else', async t => {
  const { fake, get } = await setup(t, { auth: { username: 'alice', password: 's3cret' } }, { username: 'alice', password: 's3cret' })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200)
  t.equal((await get(`/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`)).status, 200)
  t.equal(fake.tokenRequests, 1)
  const tokenRequests = fake.requests.filter(r => r.path.startsWith('/token'))
  t.equal(tokenRequests.length, 1)
  t.equal(tokenRequests[0]?.headers.authorization, basic('alice', 's3cret'))
  const registryRequests = fake.requests.filter(r => r.path.startsWith('/v2'))
  t.ok(registryRequests.length >= 3)
  for (const r of registryRequests) {
    t.notOk(r.headers.authorization?.startsWith('Basic') === true, `${r.method} ${r.path}: no Basic credentials`)
  }
})

t.test('wrong credentials give the client 403 DENIED saying the credentials were refused, and nothing is cached', async t => {
  const { fake, mirror, get } = await setup(t, { auth: { username: 'alice', password: 'right' } }, { username: 'alice', password: 'wr0ng-pa55' })
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const res = await get('/v2/library/app/manifests/v1')
  t.equal(res.status, 403)
  const error = errorOf(res)
  t.equal(error?.code, 'DENIED')
  t.match(error?.message, /credentials/)
  t.equal(fake.tokenRequests, 1)
  t.equal(fake.requests.filter(r => r.path.startsWith('/v2') && r.status === 200).length, 0, 'no registry request succeeded')
  t.same(mirror.index.repositories(), [])
  t.notOk(mirror.logText().includes('wr0ng-pa55'), 'the password is not logged')
})

t.test('a mirror without credentials for an upstream that demands them gives 403 DENIED', async t => {
  const { fake, get } = await setup(t, { auth: { username: 'alice', password: 'right' } })
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const res = await get('/v2/library/app/manifests/v1')
  t.equal(res.status, 403)
  t.equal(errorOf(res)?.code, 'DENIED')
  t.equal(fake.tokenRequests, 1)
  t.equal(fake.requests.find(r => r.path.startsWith('/token'))?.headers.authorization, undefined, 'no credentials were invented')
})

t.test('a token that upstream has expired is refreshed transparently', async t => {
  const { fake, get } = await setup(t, { auth: {} })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200)
  fake.expireTokens()
  const before = fake.requests.length
  const res = await get(`/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`)
  t.equal(res.status, 200, 'the client never sees the 401')
  t.ok(res.body.equals(image.layers[0] ?? Buffer.alloc(0)))
  t.equal(fake.tokenRequests, 2)
  t.same(sequence(fake.requests, before), [
    `GET /v2/library/app/blobs/${image.layerDigests[0] ?? ''} -> 401 [Bearer]`,
    'GET /token -> 200 [none]',
    `GET /v2/library/app/blobs/${image.layerDigests[0] ?? ''} -> 200 [Bearer]`
  ])
  const old = fake.requests[before]?.headers.authorization
  const fresh = fake.requests[before + 2]?.headers.authorization
  t.not(fresh, old, 'the retry carries the new token')
  const after = fake.requests.length
  t.equal((await get(`/v2/library/app/blobs/${image.configDigest}`)).status, 200)
  t.same(sequence(fake.requests, after), [`GET /v2/library/app/blobs/${image.configDigest} -> 200 [Bearer]`], 'the new token is kept')
})

t.test('a token is used until shortly before its lifetime ends by the mirror clock, then dropped', async t => {
  const { fake, advance, get } = await setup(t, { auth: {}, tokenTtlSeconds: 60 })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10, 10] })
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200)
  advance(40_000)
  let before = fake.requests.length
  t.equal((await get(`/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`)).status, 200)
  t.same(sequence(fake.requests, before), [`GET /v2/library/app/blobs/${image.layerDigests[0] ?? ''} -> 200 [Bearer]`], 'still good at 40s')
  advance(15_000)
  before = fake.requests.length
  t.equal((await get(`/v2/library/app/blobs/${image.layerDigests[1] ?? ''}`)).status, 200)
  t.same(sequence(fake.requests, before), [
    `GET /v2/library/app/blobs/${image.layerDigests[1] ?? ''} -> 401 [none]`,
    'GET /token -> 200 [none]',
    `GET /v2/library/app/blobs/${image.layerDigests[1] ?? ''} -> 200 [Bearer]`
  ], 'at 55s of 60 the old token is not sent again')
  t.equal(fake.tokenRequests, 2)
})

t.test('a separate token server named as realm is used, with the credentials, and the registry never sees them', async t => {
  const tokens = await startFakeTokenServer({ username: 'bob', password: 'pw' })
  t.teardown(async () => await tokens.close())
  const { fake, get } = await setup(t, { auth: { realmHost: tokens } }, { username: 'bob', password: 'pw', authHosts: [tokens.host] })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  t.equal((await get('/v2/library/app/manifests/v1')).status, 200)
  t.equal((await get(`/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`)).status, 200)
  t.equal(tokens.tokenRequests, 1)
  t.equal(tokens.requests[0]?.headers.authorization, basic('bob', 'pw'))
  t.equal(new URL(tokens.requests[0]?.path ?? '/', 'http://x').searchParams.get('scope'), 'repository:library/app:pull')
  t.equal(fake.count('*', '/token'), 0, 'the registry was not asked for a token')
  t.same(sequence(fake.requests), [
    'GET /v2/library/app/manifests/v1 -> 401 [none]',
    'GET /v2/library/app/manifests/v1 -> 200 [Bearer]',
    `GET /v2/library/app/blobs/${image.layerDigests[0] ?? ''} -> 200 [Bearer]`
  ])
  tokens.expireTokens()
  t.equal((await get(`/v2/library/app/blobs/${image.configDigest}`)).status, 200, 'an expired token of the token server is refreshed')
  t.equal(tokens.tokenRequests, 2)
})

t.test('blobs redirected to a CDN: the registry gets the token, the CDN never gets an Authorization header', async t => {
  const { fake, get } = await setup(t, { auth: { username: 'alice', password: 's3cret' }, redirectBlobs: true }, { username: 'alice', password: 's3cret' })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [5000, 7000] })
  for (const [i, digest] of image.layerDigests.entries()) {
    const res = await get(`/v2/library/app/blobs/${digest}`)
    t.equal(res.status, 200)
    t.ok(res.body.equals(image.layers[i] ?? Buffer.alloc(0)), 'the bytes from the CDN')
  }
  t.equal(fake.cdnRequests.length, 2, 'both blobs came from the CDN')
  for (const r of fake.cdnRequests) t.equal(r.headers.authorization, undefined, `${r.path}: no Authorization`)
  const redirected = fake.requests.filter(r => r.path.includes('/blobs/') && r.status === 307)
  t.equal(redirected.length, 2)
  for (const r of redirected) t.match(r.headers.authorization, /^Bearer /, 'the registry request carried the token')
})

t.test("a client's own Authorization header never reaches upstream", async t => {
  const { fake, mirror } = await setup(t, { auth: {} })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const clientAuth = basic('client', 'client-secret')
  for (const path of ['/v2/library/app/manifests/v1', `/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`, '/v2/library/app/tags/list']) {
    const res = await request(mirror.url + path, { headers: { accept: ALL, authorization: clientAuth } })
    t.equal(res.statusCode, 200, path)
    await res.body.dump()
  }
  for (const r of fake.requests) t.not(r.headers.authorization, clientAuth, `${r.method} ${r.path}`)
})

/** A registry that wants Basic credentials on every request, as some private registries do. */
async function startBasicRegistry (t: Teardown, username: string, password: string): Promise<{ url: string, seen: Array<string | undefined> }> {
  const seen: Array<string | undefined> = []
  const body = Buffer.from(JSON.stringify({ name: 'team/app', tags: ['v1'] }))
  const server = createServer((req, res) => {
    req.resume()
    seen.push(req.headers.authorization)
    if (req.headers.authorization !== basic(username, password)) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="private"', 'content-type': 'application/json' })
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}')
      return
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
    res.end(body)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => { server.closeAllConnections(); server.close(); await once(server, 'close') })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
}

t.test('an upstream that challenges with Basic gets the configured credentials', async t => {
  const upstream = await startBasicRegistry(t, 'carol', 'pw')
  const mirror = await startMirror(t, { upstreams: { 'registry.local': { url: upstream.url, username: 'carol', password: 'pw' } } })
  const res = await request(`${mirror.url}/v2/team/app/tags/list`)
  t.equal(res.statusCode, 200)
  t.same(await res.body.json(), { name: 'team/app', tags: ['v1'] })
  t.same(upstream.seen, [undefined, basic('carol', 'pw')])
})

t.test('after one Basic challenge, later requests to that upstream send the credentials at once', async t => {
  const upstream = await startBasicRegistry(t, 'carol', 'pw')
  const mirror = await startMirror(t, { upstreams: { 'registry.local': { url: upstream.url, username: 'carol', password: 'pw' } } })
  for (let i = 0; i < 3; i++) {
    const res = await request(`${mirror.url}/v2/team/app/tags/list`)
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  t.equal(upstream.seen.filter(a => a === undefined).length, 1, 'one 401, not one per request')
  t.equal(upstream.seen.length, 4)
})

t.test('a Basic challenge with no configured credentials is 403 DENIED', async t => {
  const upstream = await startBasicRegistry(t, 'carol', 'pw')
  const mirror = await startMirror(t, { upstreams: { 'registry.local': upstream.url } })
  const res = await request(`${mirror.url}/v2/team/app/tags/list`)
  t.equal(res.statusCode, 403)
  const body = await res.body.json() as { errors: Array<{ code: string }> }
  t.equal(body.errors[0]?.code, 'DENIED')
  t.same(upstream.seen, [undefined], 'asked once, then gave up')
})
