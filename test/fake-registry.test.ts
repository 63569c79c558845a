import { createHash } from 'node:crypto'
import { request, type IncomingHttpHeaders } from 'node:http'
import t from 'tap'
import { startFakeRegistry, startFakeTokenServer, type FakeRegistry, type FakeRegistryOptions } from './helpers/fake-registry.js'
import { MediaTypes, makeImage, makeIndex, makeReferrer } from './helpers/images.js'

const sha256 = (bytes: Buffer | Uint8Array): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`
const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** Starts a fake that the test's teardown closes. */
async function start (t: { teardown: (fn: () => Promise<void>) => void }, options?: FakeRegistryOptions): Promise<FakeRegistry> {
  const fake = await startFakeRegistry(options)
  t.teardown(async () => await fake.close())
  return fake
}

async function getBytes (url: string, init?: RequestInit): Promise<{ res: Response, body: Buffer }> {
  const res = await fetch(url, init)
  return { res, body: Buffer.from(await res.arrayBuffer()) }
}

async function getJson (url: string, init?: RequestInit): Promise<{ res: Response, json: unknown }> {
  const res = await fetch(url, init)
  return { res, json: await res.json() }
}

/** A GET over its own connection that reports every byte and how the response ended. */
function rawGet (url: string, headers: Record<string, string> = {}): {
  response: Promise<{ status: number, headers: IncomingHttpHeaders }>
  received: () => Buffer
  ended: Promise<'end' | 'aborted'>
} {
  const chunks: Buffer[] = []
  let resolveEnded: (how: 'end' | 'aborted') => void = () => {}
  const ended = new Promise<'end' | 'aborted'>(resolve => { resolveEnded = resolve })
  const response = new Promise<{ status: number, headers: IncomingHttpHeaders }>((resolve, reject) => {
    const req = request(url, { headers, agent: false }, res => {
      resolve({ status: res.statusCode ?? 0, headers: res.headers })
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolveEnded('end'))
      res.on('aborted', () => resolveEnded('aborted'))
      res.on('error', () => resolveEnded('aborted'))
    })
    req.on('error', err => {
      reject(err)
      resolveEnded('aborted')
    })
    req.end()
  })
  response.catch(() => {})
  return { response, received: () => Buffer.concat(chunks), ended }
}

/** Waits (up to a second) until `check` holds; `reached` means sent, not yet read by the client. */
async function until (check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await sleep(5)
}

function errorCode (json: unknown): string | undefined {
  if (typeof json !== 'object' || json === null || !('errors' in json) || !Array.isArray(json.errors)) return undefined
  const first: unknown = json.errors[0]
  if (typeof first !== 'object' || first === null || !('code' in first) || typeof first.code !== 'string') return undefined
  return first.code
}

t.test('answers the version check with an empty object and the API version header', async t => {
  const fake = await start(t)
  const { res, json } = await getJson(`${fake.url}/v2/`)
  t.equal(res.status, 200)
  t.same(json, {})
  t.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0')
  t.match(fake.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.equal(fake.url, `http://${fake.host}`)
})

t.test('serves blobs and manifests byte-exact under their digests', async t => {
  const fake = await start(t)
  const blob = Buffer.from('hello layer')
  const blobDigest = fake.addBlob('library/alpine', blob)
  t.equal(blobDigest, sha256(blob))

  const got = await getBytes(`${fake.url}/v2/library/alpine/blobs/${blobDigest}`)
  t.equal(got.res.status, 200)
  t.same(got.body, blob)
  t.equal(got.res.headers.get('docker-content-digest'), blobDigest)
  t.equal(got.res.headers.get('content-length'), String(blob.length))

  const head = await fetch(`${fake.url}/v2/library/alpine/blobs/${blobDigest}`, { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.headers.get('content-length'), String(blob.length))
  t.equal(head.headers.get('docker-content-digest'), blobDigest)

  // Stored bytes are served as given, whitespace and key order included.
  const manifestBytes = Buffer.from('{ "schemaVersion": 2,\n  "mediaType": "application/vnd.oci.image.manifest.v1+json" }')
  const digest = fake.addManifest('library/alpine', 'latest', manifestBytes, MediaTypes.ociManifest)
  t.equal(digest, sha256(manifestBytes))
  for (const ref of ['latest', digest]) {
    const m = await getBytes(`${fake.url}/v2/library/alpine/manifests/${ref}`, { headers: { accept: MediaTypes.ociManifest } })
    t.equal(m.res.status, 200, ref)
    t.same(m.body, manifestBytes, ref)
    t.equal(m.res.headers.get('content-type'), MediaTypes.ociManifest)
    t.equal(m.res.headers.get('docker-content-digest'), digest)
    t.equal(m.res.headers.get('content-length'), String(manifestBytes.length))
  }
  const mhead = await fetch(`${fake.url}/v2/library/alpine/manifests/latest`, { method: 'HEAD' })
  t.equal(mhead.status, 200)
  t.equal(mhead.headers.get('docker-content-digest'), digest)
  t.equal(mhead.headers.get('content-length'), String(manifestBytes.length))

  // Object bodies are stringified once, and that string is what is served.
  const objectDigest = fake.addManifest('library/alpine', 'obj', { schemaVersion: 2, b: 1, a: 2 }, MediaTypes.ociManifest)
  const obj = await getBytes(`${fake.url}/v2/library/alpine/manifests/obj`)
  t.equal(obj.body.toString(), '{"schemaVersion":2,"b":1,"a":2}')
  t.equal(sha256(obj.body), objectDigest)

  t.equal(fake.lastRequest('GET', '/manifests/latest')?.headers.accept, MediaTypes.ociManifest, 'the Accept header is recorded')
})

t.test('answers missing content with the OCI error envelope', async t => {
  const fake = await start(t)
  const digest = fake.addBlob('a/b', Buffer.from('x'))
  fake.addManifest('a/b', 'v1', { schemaVersion: 2 }, MediaTypes.ociManifest)

  const m = await getJson(`${fake.url}/v2/a/b/manifests/nope`)
  t.equal(m.res.status, 404)
  t.equal(errorCode(m.json), 'MANIFEST_UNKNOWN')
  t.match(m.json, { errors: [{ code: 'MANIFEST_UNKNOWN', message: String, detail: {} }] })

  const b = await getJson(`${fake.url}/v2/a/b/blobs/${sha256(Buffer.from('y'))}`)
  t.equal(b.res.status, 404)
  t.equal(errorCode(b.json), 'BLOB_UNKNOWN')

  const other = await getJson(`${fake.url}/v2/other/repo/blobs/${digest}`)
  t.equal(other.res.status, 404, 'a blob belongs to the repositories it was added to')
  t.equal(errorCode(other.json), 'BLOB_UNKNOWN')

  const bad = await getJson(`${fake.url}/v2/a/b/blobs/sha256:nothex`)
  t.equal(bad.res.status, 400)
  t.equal(errorCode(bad.json), 'DIGEST_INVALID')

  const put = await getJson(`${fake.url}/v2/a/b/manifests/v1`, { method: 'PUT', body: '{}' })
  t.equal(put.res.status, 405)
  t.equal(errorCode(put.json), 'UNSUPPORTED')
})

t.test('moves and deletes tags', async t => {
  const fake = await start(t)
  const one = fake.addManifest('deep/nested/name', 'stable', { schemaVersion: 2, n: 1 }, MediaTypes.ociManifest)
  const two = fake.addManifest('deep/nested/name', undefined, { schemaVersion: 2, n: 2 }, MediaTypes.ociManifest)
  const url = `${fake.url}/v2/deep/nested/name/manifests/stable`
  t.equal((await getBytes(url)).res.headers.get('docker-content-digest'), one)
  fake.tag('deep/nested/name', 'stable', two)
  t.equal((await getBytes(url)).res.headers.get('docker-content-digest'), two)
  fake.deleteTag('deep/nested/name', 'stable')
  t.equal((await getBytes(url)).res.status, 404)
  t.equal((await getBytes(`${fake.url}/v2/deep/nested/name/manifests/${one}`)).res.status, 200, 'the manifest stays reachable by digest')
  t.throws(() => fake.tag('deep/nested/name', 'x', sha256(Buffer.from('absent'))), /no manifest/)
})

t.test('rejects manifests the Accept header does not list when strictAccept is on', async t => {
  const fake = await start(t, { strictAccept: true })
  const image = makeImage(fake, 'lib/app', 'v1', { layers: [10], mediaType: 'oci' })
  const url = `${fake.url}/v2/lib/app/manifests/v1`
  const docker = await getJson(url, { headers: { accept: MediaTypes.dockerManifest } })
  t.equal(docker.res.status, 404)
  t.equal(errorCode(docker.json), 'MANIFEST_UNKNOWN')
  const both = await getBytes(url, { headers: { accept: `${MediaTypes.dockerManifest}, ${MediaTypes.ociManifest};q=0.9` } })
  t.equal(both.res.status, 200)
  t.same(both.body, image.manifest)
  const none = await getBytes(url, { headers: { accept: '' } })
  t.equal(none.res.status, 404, 'no Accept lists nothing')
})

t.test('serves byte ranges of blobs', async t => {
  const fake = await start(t)
  const bytes = Buffer.from('0123456789')
  const digest = fake.addBlob('r/r', bytes)
  const url = `${fake.url}/v2/r/r/blobs/${digest}`

  const mid = await getBytes(url, { headers: { range: 'bytes=2-5' } })
  t.equal(mid.res.status, 206)
  t.equal(mid.body.toString(), '2345')
  t.equal(mid.res.headers.get('content-range'), 'bytes 2-5/10')
  t.equal(mid.res.headers.get('content-length'), '4')

  const open = await getBytes(url, { headers: { range: 'bytes=7-' } })
  t.equal(open.body.toString(), '789')
  t.equal(open.res.headers.get('content-range'), 'bytes 7-9/10')

  const suffix = await getBytes(url, { headers: { range: 'bytes=-3' } })
  t.equal(suffix.body.toString(), '789')

  const beyond = await getBytes(url, { headers: { range: 'bytes=3-100' } })
  t.equal(beyond.body.toString(), '3456789')

  const unsatisfiable = await getBytes(url, { headers: { range: 'bytes=10-' } })
  t.equal(unsatisfiable.res.status, 416)
  t.equal(unsatisfiable.res.headers.get('content-range'), 'bytes */10')
})

t.test('lists tags in pages linked by the Link header', async t => {
  const fake = await start(t)
  const digest = fake.addManifest('lib/tags', undefined, { schemaVersion: 2 }, MediaTypes.ociManifest)
  const names = ['c', 'a', 'e', 'b', 'd']
  for (const tag of names) fake.tag('lib/tags', tag, digest)

  const all = await getJson(`${fake.url}/v2/lib/tags/tags/list`)
  t.same(all.json, { name: 'lib/tags', tags: ['a', 'b', 'c', 'd', 'e'] })
  t.equal(all.res.headers.get('link'), null)

  const pages: unknown[] = []
  let next: string | undefined = `${fake.url}/v2/lib/tags/tags/list?n=2`
  while (next !== undefined) {
    const page = await getJson(next)
    pages.push(page.json)
    const link = page.res.headers.get('link')
    const target = link === null ? undefined : /^<([^>]+)>; rel="next"$/.exec(link)?.[1]
    next = target === undefined ? undefined : new URL(target, next).toString()
  }
  t.same(pages, [
    { name: 'lib/tags', tags: ['a', 'b'] },
    { name: 'lib/tags', tags: ['c', 'd'] },
    { name: 'lib/tags', tags: ['e'] }
  ])
  t.ok(fake.requests.some(r => r.path === '/v2/lib/tags/tags/list?n=2&last=b'), 'the link carries n and last')

  const bad = await getJson(`${fake.url}/v2/lib/tags/tags/list?n=x`)
  t.equal(errorCode(bad.json), 'PAGINATION_NUMBER_INVALID')
  const unknown = await getJson(`${fake.url}/v2/no/such/tags/list`)
  t.equal(unknown.res.status, 404)
  t.equal(errorCode(unknown.json), 'NAME_UNKNOWN')
})

t.test('with unsortedTags, lists every tag last tagged first, ignoring n and last, as distribution 2.8 does', async t => {
  const fake = await start(t)
  fake.behaviour.unsortedTags = true
  const digest = fake.addManifest('lib/tags', undefined, { schemaVersion: 2 }, MediaTypes.ociManifest)
  for (const tag of ['1', '2', '10', 'A', 'b']) fake.tag('lib/tags', tag, digest)
  for (const query of ['', '?n=2', '?n=2&last=2']) {
    const page = await getJson(`${fake.url}/v2/lib/tags/tags/list${query}`)
    t.same(page.json, { name: 'lib/tags', tags: ['b', 'A', '10', '2', '1'] }, `tags/list${query}`)
    t.equal(page.res.headers.get('link'), null)
  }
})

t.test('lists referrers of a manifest as an OCI image index', async t => {
  const fake = await start(t)
  const image = makeImage(fake, 'lib/signed', 'v1', { layers: [16], mediaType: 'oci' })
  const sig = makeReferrer(fake, 'lib/signed', image.descriptor, 'application/vnd.dev.cosign.artifact.sig.v1+json', { annotations: { who: 'me' } })
  const sbom = makeReferrer(fake, 'lib/signed', image.descriptor, 'application/spdx+json')

  const all = await getJson(`${fake.url}/v2/lib/signed/referrers/${image.manifestDigest}`)
  t.equal(all.res.status, 200)
  t.equal(all.res.headers.get('content-type'), MediaTypes.ociIndex)
  t.same(all.json, {
    schemaVersion: 2,
    mediaType: MediaTypes.ociIndex,
    manifests: [
      { ...sig.descriptor, annotations: { who: 'me' } },
      sbom.descriptor
    ]
  })

  const filtered = await getJson(`${fake.url}/v2/lib/signed/referrers/${image.manifestDigest}?artifactType=application/spdx%2Bjson`)
  t.equal(filtered.res.headers.get('oci-filters-applied'), 'artifactType')
  t.match(filtered.json, { manifests: [{ digest: sbom.digest }] })
  t.equal((filtered.json as { manifests: unknown[] }).manifests.length, 1)

  const none = await getJson(`${fake.url}/v2/lib/signed/referrers/${sig.digest}`)
  t.same(none.json, { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [] })

  fake.behaviour.referrersApi = false
  const off = await getBytes(`${fake.url}/v2/lib/signed/referrers/${image.manifestDigest}`)
  t.equal(off.res.status, 404)
})

t.test('builds OCI and Docker images and indexes whose every digest resolves', async t => {
  const fake = await start(t)
  for (const kind of ['oci', 'docker'] as const) {
    const image = makeImage(fake, 'lib/built', kind, { layers: [100, 0, 2048], mediaType: kind })
    const { res, json } = await getJson(`${fake.url}/v2/lib/built/manifests/${kind}`)
    t.equal(res.headers.get('content-type'), image.mediaType)
    t.equal(res.headers.get('docker-content-digest'), image.manifestDigest)
    const layerType = kind === 'oci' ? MediaTypes.ociLayer : MediaTypes.dockerLayer
    const configType = kind === 'oci' ? MediaTypes.ociConfig : MediaTypes.dockerConfig
    t.match(json, {
      schemaVersion: 2,
      mediaType: kind === 'oci' ? MediaTypes.ociManifest : MediaTypes.dockerManifest,
      config: { mediaType: configType, digest: image.configDigest, size: image.config.length },
      layers: image.layerDigests.map((digest, i) => ({ mediaType: layerType, digest, size: image.layers[i]?.length }))
    })
    t.same(image.layers.map(l => l.length), [100, 0, 2048])
    for (const digest of image.blobDigests) {
      const blob = await getBytes(`${fake.url}/v2/lib/built/blobs/${digest}`)
      t.equal(sha256(blob.body), digest)
    }
  }

  const index = makeIndex(fake, 'lib/multi', 'latest', ['linux/amd64', 'linux/arm64/v8'], 64)
  const { res, json } = await getJson(`${fake.url}/v2/lib/multi/manifests/latest`)
  t.equal(res.headers.get('content-type'), MediaTypes.ociIndex)
  t.equal(res.headers.get('docker-content-digest'), index.indexDigest)
  t.match(json, {
    schemaVersion: 2,
    mediaType: MediaTypes.ociIndex,
    manifests: [
      { mediaType: MediaTypes.ociManifest, digest: index.manifestDigests[0], platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: MediaTypes.ociManifest, digest: index.manifestDigests[1], platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }
    ]
  })
  for (const digest of index.manifestDigests) {
    t.equal((await getBytes(`${fake.url}/v2/lib/multi/manifests/${digest}`)).res.status, 200)
  }
  t.equal(index.blobDigests.length, 4)
  for (const digest of index.blobDigests) {
    t.equal((await getBytes(`${fake.url}/v2/lib/multi/blobs/${digest}`)).res.status, 200)
  }

  const list = makeIndex(fake, 'lib/multi', 'docker', ['linux/amd64'], 8, { mediaType: 'docker' })
  t.equal(list.mediaType, MediaTypes.dockerManifestList)
  t.equal(list.images[0]?.mediaType, MediaTypes.dockerManifest)
})

t.test('token auth', async t => {
  t.test('challenges, issues a token and accepts it on retry', async t => {
    const fake = await start(t, { auth: {} })
    const digest = fake.addManifest('library/redis', 'latest', { schemaVersion: 2 }, MediaTypes.ociManifest)

    const base = await getJson(`${fake.url}/v2/`)
    t.equal(base.res.status, 401)
    t.equal(base.res.headers.get('www-authenticate'), `Bearer realm="${fake.url}/token",service="fake-registry"`)
    t.equal(errorCode(base.json), 'UNAUTHORIZED')

    const url = `${fake.url}/v2/library/redis/manifests/latest`
    const first = await getJson(url)
    t.equal(first.res.status, 401)
    t.equal(first.res.headers.get('www-authenticate'),
      `Bearer realm="${fake.url}/token",service="fake-registry",scope="repository:library/redis:pull"`)
    t.equal(errorCode(first.json), 'UNAUTHORIZED')

    const before = Date.now()
    const tokenRes = await getJson(`${fake.url}/token?service=fake-registry&scope=${encodeURIComponent('repository:library/redis:pull')}`)
    t.equal(tokenRes.res.status, 200)
    const body = tokenRes.json as { token: string, access_token: string, expires_in: number, issued_at: string }
    t.type(body.token, 'string')
    t.equal(body.access_token, body.token)
    t.equal(body.expires_in, 300)
    const issuedAt = Date.parse(body.issued_at)
    t.ok(issuedAt >= before - 1000 && issuedAt <= Date.now() + 1000, 'issued_at is an ISO time of now')
    t.equal(fake.tokenRequests, 1)

    const retry = await getBytes(url, { headers: { authorization: `Bearer ${body.token}` } })
    t.equal(retry.res.status, 200)
    t.equal(retry.res.headers.get('docker-content-digest'), digest)

    const garbage = await getBytes(url, { headers: { authorization: 'Bearer not-a-token' } })
    t.equal(garbage.res.status, 401)
    t.match(garbage.res.headers.get('www-authenticate') ?? '', /,error="invalid_token"$/)

    const basic = await getBytes(url, { headers: { authorization: `Basic ${Buffer.from('u:p').toString('base64')}` } })
    t.equal(basic.res.status, 401, 'the registry itself takes Bearer tokens only')

    t.equal(fake.count('GET', '/token'), 1, 'token requests are in the log, marked by path')
    t.same(fake.requests.map(r => r.status), [401, 401, 200, 200, 401, 401])
  })

  t.test('binds tokens to their scope', async t => {
    const fake = await start(t, { auth: { realmHost: 'same' } })
    fake.addManifest('team/a', 'v1', { schemaVersion: 2 }, MediaTypes.ociManifest)
    fake.addManifest('team/b', 'v1', { schemaVersion: 2 }, MediaTypes.ociManifest)
    const { json } = await getJson(`${fake.url}/token?service=fake-registry&scope=repository:team/a:pull`)
    const token = (json as { token: string }).token
    const auth = { authorization: `Bearer ${token}` }

    t.equal((await getBytes(`${fake.url}/v2/team/a/manifests/v1`, { headers: auth })).res.status, 200)
    const other = await getBytes(`${fake.url}/v2/team/b/manifests/v1`, { headers: auth })
    t.equal(other.res.status, 401)
    t.equal(other.res.headers.get('www-authenticate'),
      `Bearer realm="${fake.url}/token",service="fake-registry",scope="repository:team/b:pull",error="insufficient_scope"`)
    t.equal((await getBytes(`${fake.url}/v2/`, { headers: auth })).res.status, 200, 'any valid token opens /v2/')

    const push = await getJson(`${fake.url}/token?service=fake-registry&scope=repository:team/b:push`)
    const pushToken = (push.json as { token: string }).token
    t.equal((await getBytes(`${fake.url}/v2/team/b/manifests/v1`, { headers: { authorization: `Bearer ${pushToken}` } })).res.status, 401, 'push alone does not grant pull')

    const both = await getJson(`${fake.url}/token?service=fake-registry&scope=repository:team/a:pull&scope=repository:team/b:pull,push`)
    const bothAuth = { authorization: `Bearer ${(both.json as { token: string }).token}` }
    t.equal((await getBytes(`${fake.url}/v2/team/a/manifests/v1`, { headers: bothAuth })).res.status, 200)
    t.equal((await getBytes(`${fake.url}/v2/team/b/manifests/v1`, { headers: bothAuth })).res.status, 200)

    const wrongService = await getJson(`${fake.url}/token?service=other&scope=repository:team/a:pull`)
    t.equal(wrongService.res.status, 400)
  })

  t.test('expires tokens after tokenTtlSeconds, or at once on expireTokens()', async t => {
    const fake = await start(t, { auth: {}, tokenTtlSeconds: 1 })
    fake.addManifest('x/y', 'v1', { schemaVersion: 2 }, MediaTypes.ociManifest)
    const issue = async (): Promise<string> => {
      const { json } = await getJson(`${fake.url}/token?service=fake-registry&scope=repository:x/y:pull`)
      t.equal((json as { expires_in: number }).expires_in, fake.behaviour.tokenTtlSeconds)
      return (json as { token: string }).token
    }
    const url = `${fake.url}/v2/x/y/manifests/v1`
    const token = await issue()
    t.equal((await getBytes(url, { headers: { authorization: `Bearer ${token}` } })).res.status, 200)
    await sleep(1100)
    const expired = await getBytes(url, { headers: { authorization: `Bearer ${token}` } })
    t.equal(expired.res.status, 401)
    t.match(expired.res.headers.get('www-authenticate') ?? '', /error="invalid_token"/)

    fake.behaviour.tokenTtlSeconds = 300
    const fresh = await issue()
    t.equal((await getBytes(url, { headers: { authorization: `Bearer ${fresh}` } })).res.status, 200)
    fake.expireTokens()
    t.equal((await getBytes(url, { headers: { authorization: `Bearer ${fresh}` } })).res.status, 401)
    t.equal(fake.tokenRequests, 2)
  })

  t.test('demands Basic credentials at the token endpoint when configured', async t => {
    const fake = await start(t, { auth: { username: 'alice', password: 's3cret' } })
    const tokenUrl = `${fake.url}/token?service=fake-registry&scope=repository:a/b:pull`
    const anonymous = await getJson(tokenUrl)
    t.equal(anonymous.res.status, 401)
    t.equal(errorCode(anonymous.json), 'UNAUTHORIZED')
    t.match(anonymous.res.headers.get('www-authenticate') ?? '', /^Basic realm=/)
    const wrong = await getJson(tokenUrl, { headers: { authorization: `Basic ${Buffer.from('alice:nope').toString('base64')}` } })
    t.equal(wrong.res.status, 401)
    const right = await getJson(tokenUrl, { headers: { authorization: `Basic ${Buffer.from('alice:s3cret').toString('base64')}` } })
    t.equal(right.res.status, 200)
    t.type((right.json as { token: unknown }).token, 'string')
    t.equal(fake.tokenRequests, 3)
    t.equal(fake.requests[2]?.headers.authorization, `Basic ${Buffer.from('alice:s3cret').toString('base64')}`)
  })

  t.test('can send clients to a token server on another host', async t => {
    const auth = await startFakeTokenServer({ username: 'bob', password: 'pw', tokenTtlSeconds: 60 })
    t.teardown(async () => await auth.close())
    const fake = await start(t, { auth: { realmHost: auth } })
    fake.addManifest('lib/x', 'v1', { schemaVersion: 2 }, MediaTypes.ociManifest)

    const challenge = await getBytes(`${fake.url}/v2/lib/x/manifests/v1`)
    t.equal(challenge.res.headers.get('www-authenticate'),
      `Bearer realm="${auth.url}/token",service="fake-registry",scope="repository:lib/x:pull"`)
    t.not(auth.url, fake.url)

    const notHere = await getBytes(`${fake.url}/token?service=fake-registry&scope=repository:lib/x:pull`)
    t.equal(notHere.res.status, 404, 'the registry has no token endpoint of its own then')

    const { res, json } = await getJson(`${auth.url}/token?service=fake-registry&scope=repository:lib/x:pull`, {
      headers: { authorization: `Basic ${Buffer.from('bob:pw').toString('base64')}` }
    })
    t.equal(res.status, 200)
    t.equal((json as { expires_in: number }).expires_in, 60)
    const ok = await getBytes(`${fake.url}/v2/lib/x/manifests/v1`, { headers: { authorization: `Bearer ${(json as { token: string }).token}` } })
    t.equal(ok.res.status, 200)
    t.equal(fake.tokenRequests, 1)
    t.equal(auth.count('GET', '/token'), 1)
    t.equal(fake.count('*', '/token'), 1, 'only the stray request above reached the registry\'s /token')

    t.rejects(startFakeRegistry({ auth: { realmHost: auth, username: 'x', password: 'y' } }), /set credentials on the FakeTokenServer/)
  })
})

t.test('redirects blob GETs to a CDN on another port, which records what it was sent', async t => {
  const fake = await start(t, { redirectBlobs: true, auth: {} })
  const bytes = Buffer.from('layer bytes from the CDN')
  const digest = fake.addBlob('lib/cdn', bytes)
  const { json } = await getJson(`${fake.url}/token?service=fake-registry&scope=repository:lib/cdn:pull`)
  const authorization = `Bearer ${(json as { token: string }).token}`
  const url = `${fake.url}/v2/lib/cdn/blobs/${digest}`

  const manual = await fetch(url, { headers: { authorization }, redirect: 'manual' })
  await manual.body?.cancel()
  t.equal(manual.status, 307)
  const location = manual.headers.get('location') ?? ''
  t.ok(location.startsWith(`${fake.cdnUrl}/cdn/${digest}?`), location)
  t.not(new URL(location).port, new URL(fake.url).port)

  const head = await fetch(url, { headers: { authorization }, method: 'HEAD' })
  t.equal(head.status, 200, 'HEAD is answered by the registry')

  // fetch drops Authorization on a cross-origin redirect, so the CDN sees none.
  const followed = await getBytes(url, { headers: { authorization } })
  t.equal(followed.res.status, 200)
  t.same(followed.body, bytes)
  t.equal(fake.cdnRequests.length, 1)
  t.equal(fake.cdnRequests[0]?.headers.authorization, undefined)

  // A client that carries credentials along is caught.
  const leaky = await getBytes(location, { headers: { authorization, range: 'bytes=0-4' } })
  t.equal(leaky.res.status, 206)
  t.equal(leaky.body.toString(), 'layer')
  t.equal(fake.cdnRequests[1]?.headers.authorization, authorization)
  t.equal(fake.count('GET', '/blobs/'), 2, 'the CDN requests are not in the registry log')
})

t.test('rate limits manifest GETs like Docker Hub', async t => {
  const fake = await start(t, { rateLimit: { remaining: 2, limit: 100 } })
  fake.addManifest('lib/rl', 'v1', { schemaVersion: 2 }, MediaTypes.ociManifest)
  const url = `${fake.url}/v2/lib/rl/manifests/v1`

  const head = await fetch(url, { method: 'HEAD' })
  t.equal(head.headers.get('ratelimit-remaining'), '2;w=21600', 'HEAD is not counted')
  const first = await getBytes(url)
  t.equal(first.res.status, 200)
  t.equal(first.res.headers.get('ratelimit-limit'), '100;w=21600')
  t.equal(first.res.headers.get('ratelimit-remaining'), '1;w=21600')
  const second = await getBytes(url)
  t.equal(second.res.headers.get('ratelimit-remaining'), '0;w=21600')
  const limited = await getJson(url)
  t.equal(limited.res.status, 429)
  t.equal(limited.res.headers.get('retry-after'), '60')
  t.equal(limited.res.headers.get('ratelimit-remaining'), '0;w=21600')
  t.equal(errorCode(limited.json), 'TOOMANYREQUESTS')
  t.equal((await fetch(url, { method: 'HEAD' })).status, 200, 'HEAD still answers when limited')
  t.same(fake.behaviour.rateLimit, { remaining: 0, limit: 100 })

  fake.behaviour.rateLimit = { remaining: 5, limit: 5 }
  t.equal((await getBytes(url)).res.status, 200)
  fake.behaviour.rateLimit = undefined
  t.equal((await getBytes(url)).res.headers.get('ratelimit-remaining'), null)
})

t.test('blob faults', async t => {
  const payload = Buffer.alloc(4096, 7)
  for (let i = 0; i < payload.length; i++) payload[i] = i % 251

  t.test('corrupt: right length, one byte flipped', async t => {
    const fake = await start(t)
    const digest = fake.addBlob('f/f', payload)
    fake.setBlobFault(digest, { kind: 'corrupt' })
    const { res, body } = await getBytes(`${fake.url}/v2/f/f/blobs/${digest}`)
    t.equal(res.status, 200)
    t.equal(res.headers.get('docker-content-digest'), digest)
    t.equal(body.length, payload.length)
    t.not(sha256(body), digest)
    t.equal(body.reduce((n, byte, i) => n + (byte === payload[i] ? 0 : 1), 0), 1)
    fake.clearFaults()
    t.equal(sha256((await getBytes(`${fake.url}/v2/f/f/blobs/${digest}`)).body), digest)
  })

  t.test('truncate: full Content-Length, part of the body, then the connection dies', async t => {
    const fake = await start(t)
    const digest = fake.addBlob('f/f', payload)
    fake.setBlobFault(digest, { kind: 'truncate', after: 1000 })
    const get = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    const res = await get.response
    t.equal(res.headers['content-length'], String(payload.length))
    t.equal(await get.ended, 'aborted')
    t.same(get.received(), payload.subarray(0, 1000))
    await t.rejects(getBytes(`${fake.url}/v2/f/f/blobs/${digest}`), 'fetch sees the cut too')

    fake.setBlobFault(digest, { kind: 'truncate', after: 0 })
    const none = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    t.equal((await none.response).status, 200, 'headers arrive even when no byte does')
    t.equal(await none.ended, 'aborted')
    t.equal(none.received().length, 0)
  })

  t.test('stall: part of the body, then silence until close()', async t => {
    const fake = await start(t)
    const digest = fake.addBlob('f/f', payload)
    fake.setBlobFault(digest, { kind: 'stall', after: 100 })
    const get = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    await get.response
    let ended = false
    void get.ended.then(() => { ended = true })
    await sleep(300)
    t.same(get.received(), payload.subarray(0, 100))
    t.equal(ended, false, 'the connection is held open')
    await fake.close()
    t.equal(await get.ended, 'aborted')
    await fake.close()
    t.pass('close() is idempotent')
  })

  t.test('status: an error answer with the envelope and given headers, `times` times', async t => {
    const fake = await start(t)
    const digest = fake.addBlob('f/f', payload)
    fake.setBlobFault(digest, { kind: 'status', status: 503, headers: { 'retry-after': '1' }, times: 2 })
    for (let i = 0; i < 2; i++) {
      const { res, json } = await getJson(`${fake.url}/v2/f/f/blobs/${digest}`)
      t.equal(res.status, 503)
      t.equal(res.headers.get('retry-after'), '1')
      t.equal(errorCode(json), 'UNAVAILABLE')
    }
    t.equal((await getBytes(`${fake.url}/v2/f/f/blobs/${digest}`)).res.status, 200, 'the fault ran out')

    fake.setBlobFault(digest, { kind: 'status', status: 429 })
    t.equal(errorCode((await getJson(`${fake.url}/v2/f/f/blobs/${digest}`)).json), 'TOOMANYREQUESTS')
    fake.setBlobFault(digest, { kind: 'status', status: 500 })
    t.equal(errorCode((await getJson(`${fake.url}/v2/f/f/blobs/${digest}`)).json), 'UNKNOWN')
    t.equal((await fetch(`${fake.url}/v2/f/f/blobs/${digest}`, { method: 'HEAD' })).status, 500, 'HEAD gets the status too')

    t.throws(() => fake.setBlobFault(digest, { kind: 'status', status: 200 }), /HTTP error status/)
    t.throws(() => fake.setBlobFault(digest, { kind: 'truncate', after: -1 }), /non-negative integer/)
  })

  t.test('slow: the body trickles so other clients can join mid-way', async t => {
    const fake = await start(t)
    const digest = fake.addBlob('f/f', payload)
    fake.setBlobFault(digest, { kind: 'slow', bytesPerChunk: 512, intervalMs: 50 })
    const began = Date.now()
    const get = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    await get.response
    await sleep(60)
    const partial = get.received().length
    t.ok(partial > 0 && partial < payload.length, `part of the body after 60 ms (${partial} bytes)`)
    t.equal(await get.ended, 'end')
    t.same(get.received(), payload)
    t.ok(Date.now() - began >= 7 * 50 - 5, 'eight chunks take seven intervals')
  })

  t.test('gate: the test decides when the rest of the body goes', async t => {
    const fake = await start(t)
    const digest = fake.addBlob('f/f', payload)
    const gate = fake.gateBlob(digest, 1024)
    const first = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    await gate.reached
    const second = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    await second.response
    await until(() => gate.waiting === 2 && first.received().length === 1024)
    t.equal(gate.waiting, 2)
    t.same(first.received(), payload.subarray(0, 1024))
    t.equal(gate.released, false)
    gate.release()
    t.equal(await first.ended, 'end')
    t.equal(await second.ended, 'end')
    t.same(first.received(), payload)
    t.same(second.received(), payload)
    t.equal(sha256((await getBytes(`${fake.url}/v2/f/f/blobs/${digest}`)).body), digest, 'a released gate stays open')

    const halfway = fake.setBlobFault(digest, { kind: 'gate' })
    const third = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    await halfway.reached
    await until(() => third.received().length > 0)
    await sleep(20)
    t.equal(third.received().length, payload.length / 2, 'half the body by default')
    fake.clearFaults()
    t.equal(await third.ended, 'end', 'clearFaults() releases held responses')
  })

  t.test('faults apply to ranges and to the CDN when redirecting', async t => {
    const fake = await start(t, { redirectBlobs: true })
    const digest = fake.addBlob('f/f', payload)
    fake.setBlobFault(digest, { kind: 'status', status: 503, times: 1 })
    t.equal((await getBytes(`${fake.url}/v2/f/f/blobs/${digest}`)).res.status, 503)
    t.equal(fake.cdnRequests.length, 0, 'status faults answer at the registry')
    fake.setBlobFault(digest, { kind: 'truncate', after: 10 })
    const cut = rawGet(`${fake.url}/v2/f/f/blobs/${digest}`)
    const location = (await cut.response).headers.location ?? ''
    await cut.ended
    const atCdn = rawGet(location, { range: 'bytes=100-199' })
    t.equal((await atCdn.response).status, 206)
    t.equal(await atCdn.ended, 'aborted')
    t.same(atCdn.received(), payload.subarray(100, 110))
  })
})

t.test('manifest faults', async t => {
  const fake = await start(t)
  const image = makeImage(fake, 'm/f', 'v1', { layers: [1], mediaType: 'oci' })
  const byTag = `${fake.url}/v2/m/f/manifests/v1`
  const byDigest = `${fake.url}/v2/m/f/manifests/${image.manifestDigest}`

  fake.setManifestFault('m/f', 'v1', { kind: 'status', status: 500 })
  t.equal((await getBytes(byTag)).res.status, 500)
  t.equal((await getBytes(byDigest)).res.status, 200, 'a fault on a tag leaves requests by digest alone')
  fake.clearManifestFault('m/f', 'v1')

  fake.setManifestFault('m/f', image.manifestDigest, { kind: 'corrupt', times: 2 })
  for (const url of [byTag, byDigest]) {
    const { res, body } = await getBytes(url)
    t.equal(res.headers.get('docker-content-digest'), image.manifestDigest)
    t.equal(body.length, image.manifest.length)
    t.not(sha256(body), image.manifestDigest, 'a fault on a digest bends requests by a tag that resolves to it')
  }
  t.same((await getBytes(byTag)).body, image.manifest)

  fake.setManifestFault('m/f', 'v1', { kind: 'stall', after: 5 })
  const stalled = rawGet(byTag)
  await stalled.response
  await sleep(100)
  t.equal(stalled.received().length, 5)
  fake.clearFaults()
  await fake.stop()
  t.equal(await stalled.ended, 'aborted', 'stop() drops held connections')
})

t.test('stops and starts again on the same port', async t => {
  const fake = await start(t, { redirectBlobs: true })
  const digest = fake.addBlob('s/s', Buffer.from('still here'))
  const url = fake.url
  const cdn = fake.cdnUrl
  t.equal((await getBytes(`${url}/v2/`)).res.status, 200)

  await fake.stop()
  t.equal(fake.running, false)
  await t.rejects(fetch(`${url}/v2/`), 'nothing listens while stopped')
  await fake.stop()

  await fake.start()
  t.equal(fake.url, url)
  t.equal(fake.cdnUrl, cdn)
  const { res, body } = await getBytes(`${url}/v2/s/s/blobs/${digest}`)
  t.equal(res.status, 200)
  t.equal(body.toString(), 'still here', 'content survives a restart')

  await fake.close()
  await t.rejects(fake.start(), /after close/)
})

t.test('logs requests in order and counts them', async t => {
  const fake = await start(t)
  const image = makeImage(fake, 'c/c', 'v1', { layers: [3], mediaType: 'docker' })
  await getBytes(`${fake.url}/v2/c/c/manifests/v1`, { headers: { accept: MediaTypes.dockerManifest } })
  await fetch(`${fake.url}/v2/c/c/manifests/v1`, { method: 'HEAD' })
  await getBytes(`${fake.url}/v2/c/c/blobs/${image.layerDigests[0] ?? ''}?x=1`)
  await getBytes(`${fake.url}/v2/c/c/blobs/${image.configDigest}`)

  t.same(fake.requests.map(r => `${r.method} ${r.path}`), [
    'GET /v2/c/c/manifests/v1',
    'HEAD /v2/c/c/manifests/v1',
    `GET /v2/c/c/blobs/${image.layerDigests[0] ?? ''}?x=1`,
    `GET /v2/c/c/blobs/${image.configDigest}`
  ])
  t.equal(fake.requests[0]?.headers.accept, MediaTypes.dockerManifest)
  t.equal(fake.count('GET', '/manifests/v1'), 1)
  t.equal(fake.count('head', '/manifests/v1'), 1)
  t.equal(fake.count('*', '/manifests/'), 2)
  t.equal(fake.count('GET', '/blobs/'), 2)
  t.equal(fake.count('GET', '?x=1'), 1, 'paths keep their query')
  t.equal(fake.hits(`/blobs/${image.configDigest}`), 1)

  const log = fake.requests
  fake.reset()
  t.equal(fake.requests.length, 0)
  t.equal(log.length, 0, 'reset empties the same array')
  t.equal(fake.count('*', '/'), 0)
  t.equal((await getBytes(`${fake.url}/v2/c/c/manifests/v1`)).res.status, 200, 'content survives reset()')
})

t.test('checks its options', async t => {
  await t.rejects(startFakeRegistry({ tokenTtlSeconds: 0, rateLimit: { remaining: -1, limit: 1 } }),
    /tokenTtlSeconds must be a positive integer.*rateLimit\.remaining must be a non-negative integer/)
  await t.rejects(startFakeRegistry({ auth: { username: 'only' } }), /username and password must be set together/)
})
