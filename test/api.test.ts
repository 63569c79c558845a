import t from 'tap'
import { once } from 'node:events'
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { makeImage, makeReferrer, MediaTypes } from './helpers/images.js'
import { startMirror, type TestMirror, type Teardown } from './helpers/mirror.js'

const ALL = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ')
const DIGEST = `sha256:${'a'.repeat(64)}`
const SIGNATURE = 'application/vnd.example.signature.v1+json'
const SBOM = 'application/vnd.example.sbom.v1+json'

interface Answer { status: number, headers: IncomingHttpHeaders, body: Buffer }

/**
 * A request with the path sent exactly as written: fetch and undici normalize
 * `%2e%2e` and `..` away before they could reach the mirror. Over a
 * connection of its own (closed after the answer) unless an agent is given.
 */
async function send (base: string, method: string, path: string, headers: Record<string, string> = {}, agent: Agent | false = false): Promise<Answer> {
  const { hostname, port } = new URL(base)
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, method, path, headers: { accept: ALL, ...headers }, agent }, res => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

function json (answer: Answer): unknown {
  return JSON.parse(answer.body.toString('utf8'))
}

type Asserts = Pick<typeof t, 'equal' | 'match' | 'same' | 'ok' | 'fail'>

/** The target of a `Link: <...>; rel="next"` header. */
function nextLink (answer: Answer): string {
  const link = answer.headers.link
  return /<([^>]+)>/.exec(Array.isArray(link) ? link.join(', ') : link ?? '')?.[1] ?? ''
}

/** Checks the answer is exactly `{"errors":[{"code","message","detail"}]}` with this code and status. */
function assertEnvelope (t: Asserts, answer: Answer, status: number, code: string, what: string): void {
  t.equal(answer.status, status, `${what}: status`)
  t.match(answer.headers['content-type'], /^application\/json/, `${what}: JSON`)
  t.equal(answer.headers['docker-distribution-api-version'], 'registry/2.0', `${what}: API version header`)
  let body: unknown
  try {
    body = json(answer)
  } catch {
    t.fail(`${what}: body is not JSON: ${answer.body.toString()}`)
    return
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    t.fail(`${what}: body is not an object`)
    return
  }
  t.same(Object.keys(body), ['errors'], `${what}: only "errors"`)
  const errors = (body as { errors?: unknown }).errors
  if (!Array.isArray(errors) || errors.length !== 1) {
    t.fail(`${what}: errors is not a one-element array`)
    return
  }
  const error: unknown = errors[0]
  if (typeof error !== 'object' || error === null) {
    t.fail(`${what}: the error is not an object`)
    return
  }
  t.same(Object.keys(error).sort(), ['code', 'detail', 'message'], `${what}: code, message and detail, nothing else`)
  const e = error as { code: unknown, message: unknown }
  t.equal(e.code, code, `${what}: code`)
  t.ok(typeof e.message === 'string' && e.message !== '', `${what}: a message`)
}

/** The request log lines, once `count` of them were written (a line is written when the response closes). */
async function requestLines (mirror: TestMirror, count: number): Promise<Array<Record<string, unknown>>> {
  const lines = (): Array<Record<string, unknown>> => mirror.logs.filter(l => l.msg === 'request')
  const deadline = Date.now() + 2000
  while (lines().length < count && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 2))
  // A moment more, so that a line too many would show.
  await new Promise(resolve => setImmediate(resolve))
  return lines()
}

interface Setup {
  docker: FakeRegistry
  ghcr: FakeRegistry
  mirror: TestMirror
  advance: (ms: number) => void
  get: (path: string, headers?: Record<string, string>) => Promise<Answer>
  upstreamRequests: () => number
}

async function setup (t: Teardown, tagTtl = 60_000): Promise<Setup> {
  const docker = await startFakeRegistry()
  t.teardown(async () => await docker.close())
  const ghcr = await startFakeRegistry()
  t.teardown(async () => await ghcr.close())
  let clock = 1_000_000
  const mirror = await startMirror(t, { upstreams: { 'docker.io': docker.url, 'ghcr.io': ghcr.url }, tagTtl, hooks: { now: () => clock } })
  return {
    docker,
    ghcr,
    mirror,
    advance: ms => { clock += ms },
    get: async (path, headers) => await send(mirror.url, 'GET', path, headers),
    upstreamRequests: () => docker.requests.length + ghcr.requests.length
  }
}

// ---------------------------------------------------------------- the base endpoint

t.test('GET and HEAD /v2/ answer 200 {} with the API version header, without asking upstream', async t => {
  const { mirror, upstreamRequests } = await setup(t)
  for (const path of ['/v2/', '/v2']) {
    const get = await send(mirror.url, 'GET', path)
    t.equal(get.status, 200, `GET ${path}`)
    t.same(json(get), {})
    t.equal(get.headers['docker-distribution-api-version'], 'registry/2.0')
    const head = await send(mirror.url, 'HEAD', path)
    t.equal(head.status, 200, `HEAD ${path}`)
    t.equal(head.body.length, 0)
    t.equal(head.headers['docker-distribution-api-version'], 'registry/2.0')
  }
  t.equal(upstreamRequests(), 0)
})

// ---------------------------------------------------------------- writes

const WRITE_PATHS = [
  '/v2/library/app/manifests/v1',
  `/v2/library/app/manifests/${DIGEST}`,
  `/v2/library/app/blobs/${DIGEST}`,
  '/v2/library/app/blobs/uploads/',
  '/v2/library/app/blobs/uploads/3f0f0e6c-1b2a-4e55-9d1c-7c1d1c1d1c1d',
  '/v2/library/app/tags/list',
  '/v2/x/blobs/uploads/'
]

t.test('PUT, POST, PATCH and DELETE are 405 UNSUPPORTED and nothing is sent upstream', async t => {
  const { docker, mirror, upstreamRequests } = await setup(t)
  makeImage(docker, 'library/app', 'v1', { layers: [10] })
  for (const method of ['PUT', 'POST', 'PATCH', 'DELETE']) {
    for (const path of WRITE_PATHS) {
      assertEnvelope(t, await send(mirror.url, method, path), 405, 'UNSUPPORTED', `${method} ${path}`)
    }
  }
  t.equal(upstreamRequests(), 0, 'upstream saw nothing')
  t.same(mirror.index.repositories(), [], 'nothing cached')
})

t.test('a GET or HEAD on the upload endpoints is 405 UNSUPPORTED too', async t => {
  const { mirror, upstreamRequests } = await setup(t)
  for (const path of ['/v2/library/app/blobs/uploads/', '/v2/library/app/blobs/uploads/3f0f0e6c-1b2a']) {
    assertEnvelope(t, await send(mirror.url, 'GET', path), 405, 'UNSUPPORTED', `GET ${path}`)
    const head = await send(mirror.url, 'HEAD', path)
    t.equal(head.status, 405, `HEAD ${path}`)
  }
  t.equal(upstreamRequests(), 0)
})

t.test('a 405 names the methods the mirror allows (RFC 9110 15.5.6: Allow is required on 405)', async t => {
  const { mirror } = await setup(t)
  const res = await send(mirror.url, 'PUT', '/v2/library/app/manifests/v1')
  t.equal(res.status, 405)
  t.match(res.headers.allow, /GET/, 'Allow lists GET')
  t.match(res.headers.allow, /HEAD/, 'Allow lists HEAD')
})

// ---------------------------------------------------------------- bad input

t.test('a bad repository name is 400 NAME_INVALID, and nothing reaches upstream or the cache', async t => {
  const { mirror, upstreamRequests } = await setup(t)
  const paths = [
    '/v2/Library/app/manifests/v1',
    '/v2/library/App/manifests/v1',
    '/v2/%2e%2e/app/manifests/v1',
    '/v2/library/%2e%2e/manifests/v1',
    '/v2/library%2fapp/manifests/v1',
    '/v2/library%2Fapp/manifests/v1',
    '/v2/library/../app/manifests/v1',
    '/v2/../library/app/manifests/v1',
    '/v2/library/./app/manifests/v1',
    '/v2/library/app/manifests/..',
    '/v2/library/app/manifests/%2e%2e',
    '/v2//app/manifests/v1',
    '/v2/library//app/manifests/v1',
    '/v2/library/app_/manifests/v1',
    '/v2/a..b/manifests/v1',
    `/v2/${'a'.repeat(256)}/manifests/v1`,
    '/v2/ghcr.io/Org/app/manifests/v1',
    `/v2/library/App/blobs/${DIGEST}`,
    `/v2/library/%2e%2e/blobs/${DIGEST}`,
    '/v2/Library/app/tags/list',
    `/v2/Library/app/referrers/${DIGEST}`,
    '/v2/org/App/manifests/v1?ns=ghcr.io'
  ]
  for (const path of paths) {
    assertEnvelope(t, await send(mirror.url, 'GET', path), 400, 'NAME_INVALID', path)
  }
  t.equal(upstreamRequests(), 0, 'upstream saw nothing')
  t.same(mirror.index.repositories(), [], 'nothing cached')
})

t.test('a bad or unsupported digest is 400 DIGEST_INVALID, and nothing reaches upstream or the cache', async t => {
  const { mirror, upstreamRequests } = await setup(t)
  const digests = [
    `sha256:${'a'.repeat(63)}`,
    `sha256:${'A'.repeat(64)}`,
    `sha256:${'z'.repeat(64)}`,
    `sha384:${'a'.repeat(96)}`,
    `md5:${'a'.repeat(32)}`,
    `sha512:${'a'.repeat(64)}`,
    'sha256:'
  ]
  for (const digest of digests) {
    for (const kind of ['blobs', 'manifests', 'referrers']) {
      const path = `/v2/library/app/${kind}/${digest}`
      assertEnvelope(t, await send(mirror.url, 'GET', path), 400, 'DIGEST_INVALID', path)
    }
  }
  for (const path of ['/v2/library/app/blobs/latest', `/v2/library/app/blobs/${'a'.repeat(64)}`, '/v2/library/app/referrers/v1']) {
    assertEnvelope(t, await send(mirror.url, 'GET', path), 400, 'DIGEST_INVALID', path)
  }
  t.equal(upstreamRequests(), 0, 'upstream saw nothing')
  t.same(mirror.index.repositories(), [], 'nothing cached')
})

t.test('a bad tag is 400 MANIFEST_INVALID, and nothing reaches upstream or the cache', async t => {
  const { mirror, upstreamRequests } = await setup(t)
  for (const tag of ['-rc', '.hidden', 'x'.repeat(129), 'a+b']) {
    const path = `/v2/library/app/manifests/${tag}`
    assertEnvelope(t, await send(mirror.url, 'GET', path), 400, 'MANIFEST_INVALID', path)
    t.equal((await send(mirror.url, 'HEAD', path)).status, 400, `HEAD ${path}`)
  }
  t.equal(upstreamRequests(), 0, 'upstream saw nothing')
  t.same(mirror.index.repositories(), [], 'nothing cached')
})

t.test('a bad n for a listing is 400 PAGINATION_NUMBER_INVALID, and nothing reaches upstream', async t => {
  const { mirror, upstreamRequests } = await setup(t)
  for (const path of ['/v2/_catalog?n=abc', '/v2/_catalog?n=-1', '/v2/library/app/tags/list?n=x', '/v2/library/app/tags/list?n=1.5']) {
    assertEnvelope(t, await send(mirror.url, 'GET', path), 400, 'PAGINATION_NUMBER_INVALID', path)
  }
  t.equal(upstreamRequests(), 0)
})

t.test('every kind of error answer is exactly the OCI envelope', async t => {
  const { docker, mirror } = await setup(t)
  const blob = docker.addBlob('library/app', Buffer.from('0123456789'))
  t.equal((await send(mirror.url, 'GET', `/v2/library/app/blobs/${blob}`)).status, 200)
  const cases: Array<[string, number, string]> = [
    ['/v2/library/app/manifests/missing', 404, 'MANIFEST_UNKNOWN'],
    [`/v2/library/app/blobs/sha256:${'0'.repeat(64)}`, 404, 'BLOB_UNKNOWN'],
    ['/v2/library/nothing/tags/list', 404, 'NAME_UNKNOWN'],
    ['/v2/org/app/manifests/v1?ns=quay.io', 404, 'NAME_UNKNOWN'],
    ['/v2/Bad/manifests/v1', 400, 'NAME_INVALID'],
    ['/v2/library/app/manifests/-x', 400, 'MANIFEST_INVALID'],
    ['/v2/library/app/blobs/sha1:abc', 400, 'DIGEST_INVALID'],
    ['/v2/_catalog?n=x', 400, 'PAGINATION_NUMBER_INVALID']
  ]
  for (const [path, status, code] of cases) {
    assertEnvelope(t, await send(mirror.url, 'GET', path), status, code, path)
  }
  assertEnvelope(t, await send(mirror.url, 'GET', `/v2/library/app/blobs/${blob}`, { range: 'bytes=100-' }), 416, 'RANGE_INVALID', 'unsatisfiable range')
  assertEnvelope(t, await send(mirror.url, 'DELETE', `/v2/library/app/blobs/${blob}`), 405, 'UNSUPPORTED', 'DELETE')
  await docker.stop()
  assertEnvelope(t, await send(mirror.url, 'GET', '/v2/library/app/manifests/v2'), 503, 'UNAVAILABLE', 'upstream down')
})

// ---------------------------------------------------------------- routing

t.test('?ns=ghcr.io and a /v2/ghcr.io/ path prefix both reach the ghcr.io upstream, and only it', async t => {
  const { docker, ghcr, mirror, get } = await setup(t)
  const image = makeImage(ghcr, 'org/app', 'v1', { layers: [10] })
  const byNs = await get('/v2/org/app/manifests/v1?ns=ghcr.io')
  t.equal(byNs.status, 200)
  t.equal(byNs.headers['docker-content-digest'], image.manifestDigest)
  t.equal(ghcr.count('GET', '/v2/org/app/manifests/v1'), 1)
  const byPrefix = await get(`/v2/ghcr.io/org/app/blobs/${image.layerDigests[0] ?? ''}`)
  t.equal(byPrefix.status, 200)
  t.ok(byPrefix.body.equals(image.layers[0] ?? Buffer.alloc(0)))
  t.equal(ghcr.count('GET', `/v2/org/app/blobs/${image.layerDigests[0] ?? ''}`), 1, 'asked without the prefix')
  const manifestByPrefix = await get(`/v2/ghcr.io/org/app/manifests/${image.manifestDigest}`)
  t.equal(manifestByPrefix.status, 200, 'the manifest cached via ?ns= is found via the prefix')
  t.equal(ghcr.count('*', '/manifests/'), 1, 'from the cache')
  t.equal(docker.requests.length, 0, 'docker.io saw nothing')
  t.same(mirror.index.repositories(), ['ghcr.io/org/app'])
})

t.test('the same name without ns or prefix goes to the default upstream', async t => {
  const { docker, ghcr, get } = await setup(t)
  makeImage(docker, 'org/app', 'v1', { layers: [10] })
  makeImage(ghcr, 'org/app', 'v1', { layers: [10] })
  t.equal((await get('/v2/org/app/manifests/v1')).status, 200)
  t.equal(docker.count('GET', '/v2/org/app/manifests/v1'), 1)
  t.equal(ghcr.requests.length, 0)
})

t.test('with ?ns=, a repository whose namespace contains a dot reaches that upstream', async t => {
  // containerd sends /v2/my.group/app/manifests/v1?ns=<registry>: the dot is part of the name, not a registry host.
  const { docker, ghcr, get } = await setup(t)
  const image = makeImage(ghcr, 'my.group/app', 'v1', { layers: [10] })
  const res = await get('/v2/my.group/app/manifests/v1?ns=ghcr.io')
  t.equal(res.status, 200)
  t.equal(res.headers['docker-content-digest'], image.manifestDigest)
  t.equal(ghcr.count('GET', '/v2/my.group/app/manifests/v1'), 1)
  t.equal(docker.requests.length, 0)
})

t.test('a registry that is not configured is refused with NAME_UNKNOWN without contacting anything', async t => {
  const { mirror, upstreamRequests } = await setup(t)
  for (const path of [
    '/v2/org/app/manifests/v1?ns=quay.io',
    `/v2/org/app/blobs/${DIGEST}?ns=quay.io`,
    '/v2/org/app/tags/list?ns=quay.io',
    '/v2/quay.io/org/app/manifests/v1',
    '/v2/localhost:5000/x/manifests/v1',
    `/v2/127.0.0.1:1/x/blobs/${DIGEST}`
  ]) {
    assertEnvelope(t, await send(mirror.url, 'GET', path), 404, 'NAME_UNKNOWN', path)
  }
  t.equal(upstreamRequests(), 0)
  t.same(mirror.index.repositories(), [])
})

t.test('a mirror with no default upstream refuses requests that name no registry', async t => {
  const docker = await startFakeRegistry()
  t.teardown(async () => await docker.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': docker.url }, defaultUpstream: null })
  makeImage(docker, 'library/app', 'v1', { layers: [10] })
  assertEnvelope(t, await send(mirror.url, 'GET', '/v2/library/app/manifests/v1'), 404, 'NAME_UNKNOWN', 'no registry named')
  t.equal(docker.requests.length, 0)
  t.equal((await send(mirror.url, 'GET', '/v2/library/app/manifests/v1?ns=docker.io')).status, 200, 'but ?ns= still works')
})

// ---------------------------------------------------------------- catalog

t.test('/v2/_catalog lists cached repositories as <registry>/<name>, n/last paginated with a Link header', async t => {
  const { docker, ghcr, get } = await setup(t)
  makeImage(docker, 'library/app', 'v1', { layers: [10] })
  makeImage(docker, 'library/other', 'v1', { layers: [10] })
  makeImage(ghcr, 'org/app', 'v1', { layers: [10] })
  t.equal((await get('/v2/app/manifests/v1')).status, 200)
  t.equal((await get('/v2/library/other/manifests/v1')).status, 200)
  t.equal((await get('/v2/org/app/manifests/v1?ns=ghcr.io')).status, 200)
  const requestsBefore = docker.requests.length + ghcr.requests.length

  const all = await get('/v2/_catalog')
  t.equal(all.status, 200)
  t.same(json(all), { repositories: ['docker.io/library/app', 'docker.io/library/other', 'ghcr.io/org/app'] })
  t.equal(all.headers.link, undefined)

  const first = await get('/v2/_catalog?n=2')
  t.same(json(first), { repositories: ['docker.io/library/app', 'docker.io/library/other'] })
  t.equal(first.headers.link, '</v2/_catalog?n=2&last=docker.io%2Flibrary%2Fother>; rel="next"')
  const next = nextLink(first)
  const second = await get(next)
  t.same(json(second), { repositories: ['ghcr.io/org/app'] })
  t.equal(second.headers.link, undefined, 'no Link on the last page')

  t.same(json(await get('/v2/_catalog?n=3')), { repositories: ['docker.io/library/app', 'docker.io/library/other', 'ghcr.io/org/app'] })
  t.same(json(await get('/v2/_catalog?last=docker.io%2Flibrary%2Fapp')), { repositories: ['docker.io/library/other', 'ghcr.io/org/app'] })
  t.equal(docker.requests.length + ghcr.requests.length, requestsBefore, 'the catalog never asks upstream')
})

t.test('/v2/_catalog answers at most 1,000 repositories a page, with a Link to the rest', async t => {
  const { mirror, get } = await setup(t)
  const manifest = { digest: `sha256:${'9'.repeat(64)}`, mediaType: MediaTypes.ociManifest, content: Buffer.from('{}') }
  mirror.index.transaction(() => {
    for (let i = 0; i < 1005; i++) mirror.index.putManifest(`docker.io/r/${String(i).padStart(4, '0')}`, manifest)
  })
  for (const path of ['/v2/_catalog', '/v2/_catalog?n=5000']) {
    const page = await get(path)
    const repositories = (json(page) as { repositories: string[] }).repositories
    t.equal(repositories.length, 1000, `${path}: capped`)
    t.equal(repositories.at(-1), 'docker.io/r/0999')
    t.match(page.headers.link, /last=docker.io%2Fr%2F0999>; rel="next"$/, 'and the rest is linked')
  }
  const rest = await get('/v2/_catalog?last=docker.io%2Fr%2F0999')
  t.same((json(rest) as { repositories: string[] }).repositories, ['docker.io/r/1000', 'docker.io/r/1001', 'docker.io/r/1002', 'docker.io/r/1003', 'docker.io/r/1004'])
  t.equal(rest.headers.link, undefined)
})

t.test('referrers with an artifactType that is not a media type are refused before upstream is asked', async t => {
  const { docker, get } = await setup(t)
  for (const bad of ['x', 'a/b\r\nX: y', `a/${'b'.repeat(200)}`, 'a/b;c=d']) {
    const res = await get(`/v2/library/app/referrers/sha256:${'1'.repeat(64)}?artifactType=${encodeURIComponent(bad)}`)
    t.equal(res.status, 400, JSON.stringify(bad))
  }
  t.equal(docker.requests.length, 0)
})

t.test('/v2/_catalog of an empty cache is an empty list', async t => {
  const { get } = await setup(t)
  const res = await get('/v2/_catalog')
  t.equal(res.status, 200)
  t.same(json(res), { repositories: [] })
})

// ---------------------------------------------------------------- tags

t.test("tags/list passes upstream's list through, asking upstream with the mapped name", async t => {
  const { docker, get } = await setup(t)
  const image = makeImage(docker, 'library/app', 'a', { layers: [10] })
  for (const tag of ['b', 'c', 'd']) docker.tag('library/app', tag, image.manifestDigest)
  const res = await get('/v2/library/app/tags/list')
  t.equal(res.status, 200)
  t.same(json(res), { name: 'library/app', tags: ['a', 'b', 'c', 'd'] })
  t.equal(res.headers.link, undefined)
  t.equal(docker.count('GET', '/v2/library/app/tags/list'), 1)
  const short = await get('/v2/app/tags/list')
  t.same(json(short), { name: 'app', tags: ['a', 'b', 'c', 'd'] }, 'the name the client used')
  t.equal(docker.count('GET', '/v2/library/app/tags/list'), 2, 'asked as library/app')
})

t.test("tags/list passes n and last upstream and rewrites the Link header to the client's path", async t => {
  const { docker, get } = await setup(t)
  const image = makeImage(docker, 'library/app', 'a', { layers: [10] })
  for (const tag of ['b', 'c', 'd']) docker.tag('library/app', tag, image.manifestDigest)
  const first = await get('/v2/app/tags/list?n=2')
  t.same(json(first), { name: 'app', tags: ['a', 'b'] })
  t.equal(docker.lastRequest('GET', '/tags/list')?.path, '/v2/library/app/tags/list?n=2')
  t.equal(first.headers.link, '</v2/app/tags/list?n=2&last=b>; rel="next"')
  const next = nextLink(first)
  const second = await get(next)
  t.same(json(second), { name: 'app', tags: ['c', 'd'] })
  t.equal(docker.lastRequest('GET', '/tags/list')?.path, '/v2/library/app/tags/list?n=2&last=b')
  t.equal(second.headers.link, undefined, 'no Link on the last page')
})

t.test('the Link of a tag list routed by ?ns= or by a path prefix keeps the client on the same upstream', async t => {
  const { docker, ghcr, get } = await setup(t)
  const image = makeImage(ghcr, 'org/app', 'a', { layers: [10] })
  for (const tag of ['b', 'c']) ghcr.tag('org/app', tag, image.manifestDigest)
  const byNs = await get('/v2/org/app/tags/list?ns=ghcr.io&n=1')
  t.same(json(byNs), { name: 'org/app', tags: ['a'] })
  t.equal(byNs.headers.link, '</v2/org/app/tags/list?n=1&last=a&ns=ghcr.io>; rel="next"')
  const next = nextLink(byNs)
  t.same(json(await get(next)), { name: 'org/app', tags: ['b'] })
  const byPrefix = await get('/v2/ghcr.io/org/app/tags/list?n=2')
  t.same(json(byPrefix), { name: 'ghcr.io/org/app', tags: ['a', 'b'] })
  t.equal(byPrefix.headers.link, '</v2/ghcr.io/org/app/tags/list?n=2&last=b>; rel="next"')
  t.equal(docker.requests.length, 0)
})

t.test('when upstream is down, tags/list answers from the tags the cache knows', async t => {
  const { docker, mirror, get } = await setup(t)
  const image = makeImage(docker, 'library/app', 'v1', { layers: [10] })
  docker.tag('library/app', 'v2', image.manifestDigest)
  docker.tag('library/app', 'v3', image.manifestDigest)
  t.equal((await get('/v2/app/manifests/v1')).status, 200)
  t.equal((await get('/v2/app/manifests/v2')).status, 200)
  await docker.stop()
  const res = await get('/v2/app/tags/list')
  t.equal(res.status, 200)
  t.same(json(res), { name: 'app', tags: ['v1', 'v2'] }, 'the tags pulled through the mirror, not v3')
  const page = await get('/v2/app/tags/list?n=1')
  t.same(json(page), { name: 'app', tags: ['v1'] })
  t.equal(page.headers.link, '</v2/app/tags/list?n=1&last=v1>; rel="next"')
  t.same(json(await get('/v2/app/tags/list?n=1&last=v1')), { name: 'app', tags: ['v2'] })
  const lines = await requestLines(mirror, 5)
  t.same(lines.slice(2).map(l => l.cache), ['stale', 'stale', 'stale'])
})

t.test('when upstream is down and the cache knows no tags, tags/list is 503 UNAVAILABLE', async t => {
  const { docker, mirror } = await setup(t)
  await docker.stop()
  assertEnvelope(t, await send(mirror.url, 'GET', '/v2/library/app/tags/list'), 503, 'UNAVAILABLE', 'nothing known')
})

// ---------------------------------------------------------------- referrers

interface IndexBody { manifests: Array<{ digest: string, artifactType?: string }> }

t.test('referrers are passed through, cached, and served from the cache while upstream is down', async t => {
  const { docker, mirror, advance, get } = await setup(t, 60_000)
  const image = makeImage(docker, 'library/app', 'v1', { layers: [10] })
  const signature = makeReferrer(docker, 'library/app', image.descriptor, SIGNATURE)
  const sbom = makeReferrer(docker, 'library/app', image.descriptor, SBOM)
  const path = `/v2/library/app/referrers/${image.manifestDigest}`

  const first = await get(path)
  t.equal(first.status, 200)
  t.equal(first.headers['content-type'], MediaTypes.ociIndex)
  const body = json(first) as IndexBody
  t.same(body.manifests.map(m => m.digest).sort(), [signature.digest, sbom.digest].sort())
  t.equal(docker.count('GET', '/referrers/'), 1)
  t.equal(docker.lastRequest('GET', '/referrers/')?.headers.accept, MediaTypes.ociIndex)

  const second = await get(path)
  t.same(json(second), json(first))
  t.equal(docker.count('GET', '/referrers/'), 1, 'the second answer comes from the cache')

  await docker.stop()
  const whileDown = await get(path)
  t.equal(whileDown.status, 200)
  t.same(json(whileDown), json(first), 'fresh: from the cache without trying upstream')
  advance(61_000)
  const stale = await get(path)
  t.equal(stale.status, 200, 'stale: upstream is tried, and the cached list still served')
  t.same(json(stale), json(first))
  const lines = await requestLines(mirror, 4)
  t.same(lines.map(l => l.cache), ['miss', 'hit', 'hit', 'stale'])
})

t.test('referrers filtered by artifactType say so with OCI-Filters-Applied, and are cached per filter', async t => {
  const { docker, get } = await setup(t)
  const image = makeImage(docker, 'library/app', 'v1', { layers: [10] })
  const signature = makeReferrer(docker, 'library/app', image.descriptor, SIGNATURE)
  makeReferrer(docker, 'library/app', image.descriptor, SBOM)
  const path = `/v2/library/app/referrers/${image.manifestDigest}?artifactType=${encodeURIComponent(SIGNATURE)}`
  for (let i = 0; i < 2; i++) {
    const res = await get(path)
    t.equal(res.status, 200)
    t.equal(res.headers['oci-filters-applied'], 'artifactType')
    t.same((json(res) as IndexBody).manifests.map(m => m.digest), [signature.digest])
  }
  t.equal(docker.count('GET', '/referrers/'), 1)
  t.equal(docker.lastRequest('GET', '/referrers/')?.path, `/v2/library/app/referrers/${image.manifestDigest}?artifactType=${encodeURIComponent(SIGNATURE)}`)
  const unfiltered = await get(`/v2/library/app/referrers/${image.manifestDigest}`)
  t.equal((json(unfiltered) as IndexBody).manifests.length, 2, 'the unfiltered list is its own cache entry')
  t.equal(unfiltered.headers['oci-filters-applied'], undefined)
})

t.test('an upstream that does not filter referrers: the mirror filters, fresh and from its cache, and says so', async t => {
  // A registry may ignore artifactType and say nothing (OCI distribution spec, "Listing Referrers");
  // the mirror applies the filter itself, so OCI-Filters-Applied is true of every answer it gives.
  const subject = `sha256:${'c'.repeat(64)}`
  const index = JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaTypes.ociIndex,
    manifests: [
      { mediaType: MediaTypes.ociManifest, digest: `sha256:${'d'.repeat(64)}`, size: 10, artifactType: SIGNATURE },
      { mediaType: MediaTypes.ociManifest, digest: `sha256:${'e'.repeat(64)}`, size: 10, artifactType: SBOM }
    ]
  })
  let asked = 0
  const upstream = createServer((req, res) => {
    req.resume()
    if (req.url?.includes('/referrers/') === true) {
      asked++
      res.writeHead(200, { 'content-type': MediaTypes.ociIndex, 'content-length': Buffer.byteLength(index) })
      res.end(index)
      return
    }
    res.writeHead(404).end()
  })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(async () => { upstream.closeAllConnections(); upstream.close(); await once(upstream, 'close') })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } })
  const path = `/v2/library/app/referrers/${subject}?artifactType=${encodeURIComponent(SIGNATURE)}`
  const fresh = await send(mirror.url, 'GET', path)
  t.equal(fresh.status, 200)
  t.equal(fresh.headers['oci-filters-applied'], 'artifactType', 'fresh: filtered')
  t.same((json(fresh) as IndexBody).manifests.map(m => m.artifactType), [SIGNATURE], 'only the asked-for type')
  const cached = await send(mirror.url, 'GET', path)
  t.equal(asked, 1, 'the second answer came from the cache')
  t.equal(cached.status, 200)
  t.same(json(cached), json(fresh))
  t.equal(cached.headers['oci-filters-applied'], 'artifactType', 'from the cache: filtered too')
})

t.test('referrers of a registry without the referrers API: the referrers tag schema, else an empty index', async t => {
  const { docker, get } = await setup(t)
  docker.behaviour.referrersApi = false
  const image = makeImage(docker, 'library/app', 'v1', { layers: [10] })
  const none = await get(`/v2/library/app/referrers/${image.manifestDigest}`)
  t.equal(none.status, 200, 'no referrers is an answer, not a 404')
  t.equal(none.headers['content-type'], MediaTypes.ociIndex)
  t.same(json(none), { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [] })
  const tag = `sha256-${image.manifestDigest.slice(7)}`
  t.equal(docker.count('GET', `/v2/library/app/manifests/${tag}`), 1, 'the referrers tag was tried')

  const other = makeImage(docker, 'library/app', 'v2', { layers: [10] })
  const signature = { mediaType: MediaTypes.ociManifest, digest: `sha256:${'d'.repeat(64)}`, size: 10, artifactType: SIGNATURE }
  const sbom = { mediaType: MediaTypes.ociManifest, digest: `sha256:${'e'.repeat(64)}`, size: 10, artifactType: SBOM }
  docker.addManifest('library/app', `sha256-${other.manifestDigest.slice(7)}`, { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [signature, sbom] }, MediaTypes.ociIndex)
  const listed = await get(`/v2/library/app/referrers/${other.manifestDigest}`)
  t.equal(listed.status, 200)
  t.same((json(listed) as IndexBody).manifests.map(m => m.digest), [signature.digest, sbom.digest], 'the index under the referrers tag')
  const filtered = await get(`/v2/library/app/referrers/${other.manifestDigest}?artifactType=${encodeURIComponent(SBOM)}`)
  t.same((json(filtered) as IndexBody).manifests.map(m => m.digest), [sbom.digest], 'filtered by the mirror')
  t.equal(filtered.headers['oci-filters-applied'], 'artifactType')
})

t.test('tags/list pages are right whatever the upstream does with n and last', async t => {
  // An upstream that ignores n and last, and sends `last` itself back.
  const tags = ['a', 'b', 'v1', 'v2', 'v3']
  const upstream = createServer((req, res) => {
    req.resume()
    const body = JSON.stringify({ name: 'library/app', tags })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(async () => { upstream.closeAllConnections(); upstream.close(); await once(upstream, 'close') })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } })
  const after = await send(mirror.url, 'GET', '/v2/library/app/tags/list?last=v1')
  t.same(json(after), { name: 'library/app', tags: ['v2', 'v3'] }, 'last is exclusive')
  t.equal(after.headers.link, undefined)
  const page = await send(mirror.url, 'GET', '/v2/library/app/tags/list?n=2&last=a')
  t.same(json(page), { name: 'library/app', tags: ['b', 'v1'] }, 'n is honoured')
  t.equal(page.headers.link, '</v2/library/app/tags/list?n=2&last=v1>; rel="next"', 'and the next page is linked')
  const empty = await send(mirror.url, 'GET', '/v2/library/app/tags/list?n=0')
  t.same(json(empty), { name: 'library/app', tags: [] })
})

t.test('tags/list is in ASCII order (Go\'s sort.Strings), and paging by its Link sees every tag once, from an upstream answering in no order and from the cache', async t => {
  const { docker, get } = await setup(t)
  // As distribution 2.8 answers: every tag, in no order, whatever n and last ask.
  docker.behaviour.unsortedTags = true
  const image = makeImage(docker, 'library/app', undefined, { layers: [10] })
  const pushed = ['1', '2', '10', 'A', 'b']
  for (const tag of pushed) docker.tag('library/app', tag, image.manifestDigest)
  const sorted = ['1', '10', '2', 'A', 'b']
  t.same(json(await send(docker.url, 'GET', '/v2/library/app/tags/list?n=2')), { name: 'library/app', tags: ['b', 'A', '10', '2', '1'] }, 'upstream answers unsorted and unpaged')
  /** Every page from ?n=2 on, following each Link: the tags in the order seen. */
  const walk = async (): Promise<string[]> => {
    const seen: string[] = []
    let path = '/v2/app/tags/list?n=2'
    for (let pages = 0; path !== ''; pages++) {
      if (pages > sorted.length) throw new Error(`more pages than tags: the Link runs in a circle at ${path}`)
      const page = await get(path)
      t.equal(page.status, 200, path)
      const tags = (json(page) as { tags: string[] }).tags
      t.ok(tags.length <= 2, `${path}: at most n`)
      seen.push(...tags)
      path = nextLink(page)
    }
    return seen
  }
  t.same((json(await get('/v2/app/tags/list')) as { tags: string[] }).tags, sorted, 'the full list, sorted')
  t.same(await walk(), sorted, 'paged from upstream: each tag once, in order')
  t.same((json(await get('/v2/app/tags/list?last=10')) as { tags: string[] }).tags, ['2', 'A', 'b'], 'last means after it in that order')

  for (const tag of pushed) t.equal((await get(`/v2/app/manifests/${tag}`)).status, 200, `pulled ${tag}`)
  await docker.stop()
  t.same((json(await get('/v2/app/tags/list')) as { tags: string[] }).tags, sorted, 'from the cache, sorted')
  t.same(await walk(), sorted, 'paged from the cache: each tag once, in order')
})

t.test('answers routed by ?ns= carry OCI-Namespace; others do not', async t => {
  const { ghcr, get } = await setup(t)
  makeImage(ghcr, 'org/app', 'v1', { layers: [10] })
  const byNs = await get('/v2/org/app/manifests/v1?ns=ghcr.io')
  t.equal(byNs.status, 200)
  t.equal(byNs.headers['oci-namespace'], 'ghcr.io')
  const missing = await get('/v2/org/nothing/manifests/v1?ns=ghcr.io')
  t.equal(missing.status, 404)
  t.equal(missing.headers['oci-namespace'], 'ghcr.io', 'errors too')
  const byPrefix = await get('/v2/ghcr.io/org/app/manifests/v1')
  t.equal(byPrefix.headers['oci-namespace'], undefined, 'a path prefix is no ns')
  const plain = await get('/v2/library/app/tags/list')
  t.equal(plain.headers['oci-namespace'], undefined)
})

// ---------------------------------------------------------------- the request log

t.test('each request is logged once with method, path, status, bytes, ms and the cache outcome', async t => {
  const { docker, mirror, advance } = await setup(t, 60_000)
  // One kept-alive connection, as pulling clients use: see the test below for connections closed after each answer.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const get = async (path: string, method = 'GET'): Promise<Answer> => await send(mirror.url, method, path, {}, agent)
  const image = makeImage(docker, 'library/app', 'v1', { layers: [5000] })
  const layer = image.layerDigests[0] ?? ''
  await get('/v2/library/app/manifests/v1') // miss
  await get('/v2/library/app/manifests/v1') // hit
  advance(61_000)
  await get('/v2/library/app/manifests/v1') // revalidated by HEAD
  await get(`/v2/library/app/blobs/${layer}?ns=docker.io`) // miss
  t.ok((await get(`/v2/library/app/blobs/${layer}`)).body.equals(image.layers[0] ?? Buffer.alloc(0))) // hit
  advance(61_000)
  await docker.stop()
  await get('/v2/library/app/manifests/v1') // stale
  await get('/v2/library/app/manifests/v1', 'HEAD') // stale again: upstream is still down
  await get('/v2/Bad/manifests/v1') // 400

  const lines = await requestLines(mirror, 8)
  t.equal(lines.length, 8, 'one line per request')
  const summary = lines.map(l => [l.method, l.path, l.status, l.cache])
  t.same(summary, [
    ['GET', '/v2/library/app/manifests/v1', 200, 'miss'],
    ['GET', '/v2/library/app/manifests/v1', 200, 'hit'],
    ['GET', '/v2/library/app/manifests/v1', 200, 'revalidated'],
    ['GET', `/v2/library/app/blobs/${layer}?ns=docker.io`, 200, 'miss'],
    ['GET', `/v2/library/app/blobs/${layer}`, 200, 'hit'],
    ['GET', '/v2/library/app/manifests/v1', 200, 'stale'],
    ['HEAD', '/v2/library/app/manifests/v1', 200, 'stale'],
    ['GET', '/v2/Bad/manifests/v1', 400, undefined]
  ])
  for (const line of lines) {
    t.type(line.ms, 'number', 'ms is a number')
    t.ok(typeof line.ms === 'number' && line.ms >= 0)
    t.type(line.bytes, 'number', 'bytes is a number')
  }
  // bytes are body bytes sent, as nginx's $body_bytes_sent: the blob's size, none for a HEAD
  t.equal(lines[0]?.bytes, image.manifest.length, 'a manifest line counts the manifest bytes')
  t.equal(lines[3]?.bytes, 5000, 'a blob line counts the blob bytes')
  t.equal(lines[4]?.bytes, 5000)
  t.equal(lines[6]?.bytes, 0, 'a HEAD sends no body')
  t.equal(lines[0]?.upstream, 'docker.io')
})

t.test('a cached blob delivered in full to a client that then closes the connection is logged as 200, not 499', async t => {
  const { docker, mirror } = await setup(t)
  const bytes = Buffer.alloc(50_000, 7)
  const digest = docker.addBlob('library/app', bytes)
  const path = `/v2/library/app/blobs/${digest}`
  t.equal((await send(mirror.url, 'GET', path)).status, 200)
  const rounds = 100
  let complete = 0
  for (let i = 0; i < rounds; i++) {
    const answer = await send(mirror.url, 'GET', path, { connection: 'close' })
    if (answer.status === 200 && answer.body.equals(bytes)) complete++
  }
  t.equal(complete, rounds, 'every client got every byte')
  const lines = (await requestLines(mirror, rounds + 1)).slice(1)
  t.equal(lines.length, rounds)
  const statuses = lines.map(l => l.status)
  t.same(statuses.filter(s => s !== 200), [], 'every line says 200')
})

t.test('a request that joins a download under way is logged as joined', async t => {
  const { docker, mirror } = await setup(t)
  const image = makeImage(docker, 'library/app', 'v1', { layers: [200_000] })
  const digest = image.layerDigests[0] ?? ''
  const gate = docker.gateBlob(digest, 1000)
  let arrived = 0
  const second = new Promise<void>(resolve => {
    mirror.server.on('request', () => { if (++arrived === 2) setImmediate(resolve) })
  })
  const first = send(mirror.url, 'GET', `/v2/library/app/blobs/${digest}`)
  await gate.reached
  const joiner = send(mirror.url, 'GET', `/v2/library/app/blobs/${digest}`)
  await second
  gate.release()
  const answers = await Promise.all([first, joiner])
  for (const a of answers) t.ok(a.body.equals(image.layers[0] ?? Buffer.alloc(0)))
  t.equal(docker.count('GET', `/blobs/${digest}`), 1)
  const lines = await requestLines(mirror, 2)
  t.same(lines.map(l => l.cache).sort(), ['joined', 'miss'])
})

t.test('credentials and tokens never appear in the log', async t => {
  const password = 'pa55-w0rd-never-logged'
  const docker = await startFakeRegistry({ auth: { username: 'alice', password }, redirectBlobs: true })
  t.teardown(async () => await docker.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: docker.url, username: 'alice', password } } })
  const image = makeImage(docker, 'library/app', 'v1', { layers: [1000] })
  t.equal((await send(mirror.url, 'GET', '/v2/library/app/manifests/v1')).status, 200)
  t.equal((await send(mirror.url, 'GET', `/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`)).status, 200)
  t.equal((await send(mirror.url, 'GET', '/v2/library/app/tags/list', { authorization: 'Bearer client-own-token-xyz' })).status, 200)
  docker.expireTokens()
  t.equal((await send(mirror.url, 'GET', `/v2/library/app/blobs/${image.configDigest}`)).status, 200)
  await requestLines(mirror, 4)
  t.ok(docker.tokenRequests >= 1, 'the token flow ran')
  const tokens = docker.requests
    .map(r => /^Bearer\s+(\S+)$/.exec(r.headers.authorization ?? '')?.[1])
    .filter((token): token is string => token !== undefined)
  t.ok(tokens.length > 0, 'tokens were sent upstream')
  const text = mirror.logText()
  t.ok(text.length > 0)
  t.notOk(text.includes(password), 'no password')
  t.notOk(text.includes(Buffer.from(`alice:${password}`).toString('base64')), 'no Basic credentials')
  t.notOk(text.includes('Bearer '), 'no Bearer header')
  for (const token of new Set(tokens)) t.notOk(text.includes(token), 'no token')
  t.notOk(text.includes('client-own-token-xyz'), "no credentials of the mirror's own client")
  const signatures = docker.cdnRequests.map(r => new URL(r.path, 'http://x').searchParams.get('sig'))
  t.ok(signatures.length > 0, 'blobs came from the CDN')
  for (const sig of signatures) t.notOk(sig !== null && text.includes(sig), 'no presigned CDN URL')
})
