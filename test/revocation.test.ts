// A right the upstream revokes, in passthrough mode: nothing may keep the
// upstream's old yes alive past clientAccessTtl. Each way one could is tried
// here against real HTTP servers: a token cached for the caller (the token
// flow of test/helpers/fake-registry.ts, whose /token wants alice's login), a
// token a download fetched since the last check, a check whose answer came
// slowly, a request that joined a check begun long before it came, a token
// fetch begun before a check, and a Basic upstream, which takes the login on
// every request. The reference registry and a token server that revokes are
// in test/e2e/revocation.test.ts.

import t from 'tap'
import { once } from 'node:events'
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { PassthroughGate } from '../lib/auth/passthrough.js'
import { DeniedError } from '../lib/errors.js'
import type { MirrorEvents } from '../lib/events.js'
import { createLogger } from '../lib/log.js'
import { blobReadBuffers } from '../lib/store/buffer-pool.js'
import { UpstreamClient, type UpstreamResponse } from '../lib/upstream/client.js'
import type { PassthroughCaller } from '../lib/upstream/client-login.js'
import { loadYamlConfig } from './helpers/config.js'
import { startFakeRegistry, startFakeTokenServer, type FakeRegistry, type RecordedRequest } from './helpers/fake-registry.js'
import { makeImage, MediaTypes } from './helpers/images.js'
import { startMirror, type Teardown } from './helpers/mirror.js'

const ALL = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifestList, MediaTypes.dockerManifest].join(', ')
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
const ALICE = basic('alice', 'a-pass')
const alice: PassthroughCaller = { login: { username: 'alice', password: 'a-pass', key: 'hmac-of-alice' } }
const log = createLogger('silent')
const SCOPE = 'repository:library/app:pull'

/** Token requests for library/app's pull scope (a login check asks for no scope). */
function scoped (fake: FakeRegistry): RecordedRequest[] {
  return fake.requests.filter(r => r.path.startsWith('/token') && new URL(r.path, 'http://x').searchParams.getAll('scope').includes(SCOPE))
}

async function until (what: string, condition: () => boolean): Promise<void> {
  for (let waited = 0; !condition(); waited += 5) {
    if (waited > 5_000) throw new Error(`gave up waiting for ${what}`)
    await sleep(5)
  }
}

interface Seen { method: string, path: string, authorization: string | undefined }

/**
 * A registry wanting Basic credentials: alice (password "a-pass") reads the
 * repositories in `rights`, which the test changes as the upstream's admin
 * would. Blobs are all "abc". While `held` is set, an answer to a request
 * with credentials is decided when it arrives and sent once `held` resolves,
 * as a slow upstream's.
 */
async function startBasicUpstream (t: Teardown): Promise<{ url: string, seen: Seen[], rights: Set<string>, held: { promise: Promise<void> | undefined } }> {
  const seen: Seen[] = []
  const rights = new Set(['team/app'])
  const held: { promise: Promise<void> | undefined } = { promise: undefined }
  const server = createServer((req, res) => {
    req.resume()
    const url = new URL(req.url ?? '/', 'http://x')
    seen.push({ method: req.method ?? '', path: url.pathname, authorization: req.headers.authorization })
    const isAlice = req.headers.authorization === ALICE
    const blob = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(url.pathname)
    const name = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname)?.[1] ?? blob?.[1]
    const readable = url.pathname === '/v2/' ? isAlice : isAlice && name !== undefined && rights.has(name)
    const answer = (): void => {
      if (!readable) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="private"', 'content-type': 'application/json' })
        res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
      } else if (blob !== null) {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 3, 'docker-content-digest': blob[2] ?? '' })
        res.end(req.method === 'HEAD' ? undefined : 'abc')
      } else {
        const body = Buffer.from(JSON.stringify(url.pathname === '/v2/' ? {} : { name, tags: ['v1'] }))
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
        res.end(body)
      }
    }
    if (held.promise !== undefined && req.headers.authorization !== undefined && url.pathname !== '/v2/') void held.promise.then(answer)
    else answer()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => { server.closeAllConnections(); server.close(); await once(server, 'close') })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, rights, held }
}

const noEvents: Pick<MirrorEvents, 'upstreamResponse' | 'tokenFetched' | 'upstreamRetried' | 'upstreamRefused' | 'upstreamState'> = {
  upstreamResponse: () => {},
  tokenFetched: () => {},
  upstreamRetried: () => {},
  upstreamRefused: () => {},
  upstreamState: () => {}
}

/** The real client for a passthrough upstream, from a config the real loader read. */
async function passthroughClient (t: Teardown, url: string, ttl: number, now: () => number, more: { authHosts?: string[], username?: string, password?: string } = {}): Promise<UpstreamClient> {
  const config = await loadYamlConfig({
    storage: { path: '/nonexistent/revocation-test' },
    upstreams: { 'registry.example': { url, clientCredentials: 'passthrough', clientAccessTtl: `${ttl}ms`, ...more } },
    metrics: { enabled: false }
  })
  const upstream = config.upstreams.get('registry.example')
  if (upstream === undefined) throw new Error('no upstream in the config')
  const client = new UpstreamClient({ config: upstream, log, events: noEvents, now, buffers: blobReadBuffers() })
  t.teardown(async () => await client.close(0))
  return client
}

/** The status of an answer (from undici or the upstream client), its body dumped. */
async function statusOf (answer: Promise<{ statusCode: number, body: { dump: () => Promise<void> } } | UpstreamResponse>): Promise<number> {
  const res = await answer
  await res.body.dump()
  return 'statusCode' in res ? res.statusCode : res.status
}

t.test('a caller\'s upstream token is used for clientAccessTtl from when it was asked for, even a TTL shorter than the expiry margin; the mirror\'s own token for its lifetime', async t => {
  const fake = await startFakeRegistry({ auth: { username: 'alice', password: 'a-pass' }, tokenTtlSeconds: 300 })
  t.teardown(async () => await fake.close())
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  let clock = 1_000_000
  // The mirror's own credentials happen to be alice's too: the same token server, a different cache entry.
  const client = await passthroughClient(t, fake.url, 5_000, () => clock, { username: 'alice', password: 'a-pass' })
  const get = async (caller: PassthroughCaller | undefined): Promise<number> =>
    await statusOf(client.send('GET', '/v2/library/app/manifests/v1', { repository: 'library/app', headers: { accept: ALL }, kind: 'manifest', caller }))
  t.same([await get(alice), await get(undefined)], [200, 200])
  t.equal(scoped(fake).length, 2, 'a token for alice, one for the mirror')
  clock += 4_000
  t.same([await get(alice), await get(undefined)], [200, 200])
  t.equal(scoped(fake).length, 2, 'inside clientAccessTtl (5 s, under the 10 s margin) alice\'s token is still used')
  clock += 2_000
  t.same([await get(alice), await get(undefined)], [200, 200])
  t.equal(scoped(fake).length, 3, 'past it, alice\'s is fetched again though it had 294 s left; the mirror\'s is not')
})

t.test('a check asks the token server even when a download fetched the caller a token since the last check', async t => {
  const fake = await startFakeRegistry({ auth: { username: 'alice', password: 'a-pass' }, tokenTtlSeconds: 300 })
  t.teardown(async () => await fake.close())
  const image = makeImage(fake, 'library/app', 'v1', { layers: [10, 20] })
  let clock = 1_000_000
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: fake.url, clientCredentials: 'passthrough', clientAccessTtl: 30_000 } },
    metrics: { enabled: false },
    hooks: { now: () => clock }
  })
  const get = async (path: string): Promise<number> => await statusOf(request(mirror.url + path, { headers: { accept: ALL, authorization: ALICE } }))
  t.equal(await get('/v2/library/app/manifests/v1'), 200)
  t.equal(scoped(fake).length, 1)
  // Upstream drops its tokens: the next download, under the check's yes, fetches alice a new one at 20 s.
  fake.expireTokens()
  clock += 20_000
  t.equal(await get(`/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`), 200)
  t.equal(scoped(fake).length, 2, 'the download fetched a token')
  clock += 11_000
  const before = fake.requests.length
  t.equal(await get(`/v2/library/app/blobs/${image.layerDigests[1] ?? ''}`), 200)
  const asked = fake.requests.slice(before).filter(r => r.path.startsWith('/token'))
  t.equal(asked.length, 1, 'the check at 31 s asked the token server, not reusing the 11 s old token')
  t.equal(asked[0]?.headers.authorization, ALICE)
})

t.test('a check joins no token fetch begun before it', async t => {
  const tokens = await startFakeTokenServer({ username: 'alice', password: 'a-pass', latencyMs: 400 })
  t.teardown(async () => await tokens.close())
  const fake = await startFakeRegistry({ auth: { realmHost: tokens } })
  t.teardown(async () => await fake.close())
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const client = await passthroughClient(t, fake.url, 30_000, Date.now, { authHosts: [tokens.host] })
  const path = '/v2/library/app/manifests/v1'
  const download = client.send('GET', path, { repository: 'library/app', headers: { accept: ALL }, kind: 'manifest', caller: alice })
  await until('the download\'s token fetch', () => tokens.requests.length === 1)
  const check = client.send('HEAD', path, { repository: 'library/app', headers: { accept: ALL }, kind: 'manifest', caller: alice, fresh: true })
  t.same(await Promise.all([statusOf(download), statusOf(check)]), [200, 200])
  t.equal(tokens.tokenRequests, 2, 'the check asked for a token of its own')
  t.ok(tokens.requests.every(r => r.headers.authorization === ALICE), 'both with alice\'s login')
})

t.test('a yes counts from when upstream was asked, not from when its slow answer came', async t => {
  const upstream = await startBasicUpstream(t)
  let clock = 1_000_000
  const now = (): number => clock
  const client = await passthroughClient(t, upstream.url, 30_000, now)
  const gate = new PassthroughGate({ upstreams: new Map([['registry.example', { client, ttl: 30_000, loginPrefix: 'registry.example/', loginRate: 5, loginConcurrency: 4 }]]), events: { passthroughChecked: () => {} }, log, now })
  const probes = (): number => upstream.seen.filter(s => s.path === '/v2/team/app/tags/list' && s.authorization === ALICE).length
  let release = (): void => {}
  upstream.held.promise = new Promise(resolve => { release = resolve })
  const first = gate.check('registry.example', 'team/app', alice, { kind: 'tags' })
  await until('the check to reach upstream', () => probes() === 1)
  clock += 20_000
  release()
  await first
  t.ok(gate.allowed(alice, 'registry.example/team/app'), 'the yes is held')
  clock += 11_000
  t.notOk(gate.allowed(alice, 'registry.example/team/app'), 'and gone 30 s after upstream was asked, 11 s after its answer came')
  await gate.check('registry.example', 'team/app', alice, { kind: 'tags' })
  t.equal(probes(), 2, 'so the next request asks again')
})

t.test('a request that joins a check begun more than clientAccessTtl before it came asks again, and sees the revocation', async t => {
  const upstream = await startBasicUpstream(t)
  let clock = 1_000_000
  const now = (): number => clock
  const client = await passthroughClient(t, upstream.url, 30_000, now)
  const gate = new PassthroughGate({ upstreams: new Map([['registry.example', { client, ttl: 30_000, loginPrefix: 'registry.example/', loginRate: 5, loginConcurrency: 4 }]]), events: { passthroughChecked: () => {} }, log, now })
  const probes = (): number => upstream.seen.filter(s => s.path === '/v2/team/app/tags/list' && s.authorization === ALICE).length
  let release = (): void => {}
  upstream.held.promise = new Promise(resolve => { release = resolve })
  const first = gate.check('registry.example', 'team/app', alice, { kind: 'tags' })
  await until('the check to reach upstream', () => probes() === 1)
  // Upstream said yes when asked, is slow to send it, and meanwhile alice loses the right.
  upstream.rights.delete('team/app')
  clock += 31_000
  const late = gate.check('registry.example', 'team/app', alice, { kind: 'tags' })
  release()
  const [a, b] = await Promise.allSettled([first, late])
  t.equal(a.status, 'fulfilled', 'the request that started the check gets the yes upstream gave it')
  t.equal(b.status, 'rejected', 'the one that came 31 s later is not served that yes')
  t.ok(b.status === 'rejected' && b.reason instanceof DeniedError, 'but denied, by a check of its own')
  t.ok(probes() > 1, 'which asked upstream again')
})

t.test('a Basic upstream: cached content is served inside clientAccessTtl, and refused from the first request after it once the right is revoked', async t => {
  const upstream = await startBasicUpstream(t)
  let clock = 1_000_000
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough', clientAccessTtl: 5_000 } },
    metrics: { enabled: false },
    hooks: { now: () => clock }
  })
  const digest = `sha256:${createHash('sha256').update('abc').digest('hex')}`
  const get = async (): Promise<{ status: number, body: string }> => {
    const res = await request(`${mirror.url}/v2/team/app/blobs/${digest}`, { headers: { authorization: ALICE } })
    return { status: res.statusCode, body: await res.body.text() }
  }
  t.equal((await get()).status, 200, 'alice pulls a blob, which the mirror caches')
  upstream.rights.delete('team/app')
  clock += 3_000
  t.equal((await get()).status, 200, 'inside clientAccessTtl: the yes stands, from the cache')
  const before = upstream.seen.length
  clock += 3_000
  const refused = await get()
  t.equal(refused.status, 403, 'past it: refused')
  t.match(refused.body, /DENIED/)
  t.ok(upstream.seen.slice(before).some(s => s.method === 'HEAD' && s.path.endsWith(digest) && s.authorization === ALICE), 'asked upstream with alice\'s login')
})
