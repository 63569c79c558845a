// The client's address behind a balancer: X-Forwarded-For is believed only
// from limits.trustedProxies, walked from the right past trusted hops, and
// then the per-client request limit, auth.anonymousNetworks, the failed-login
// counter, the token realm's scheme and the request log all go by the client
// it names. From anyone else the header changes nothing.

import t, { type Test } from 'tap'
import { once } from 'node:events'
import { connect } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { Agent, request } from 'undici'
import { forwardedAddress, TrustedProxies } from '../lib/http/client-address.js'
import { plainAddress } from '../lib/ip-address.js'
import { setUser } from '../lib/auth/htpasswd.js'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror, type TestMirror, type TestMirrorOptions } from './helpers/mirror.js'
import type { YamlAuth } from './helpers/config.js'

function basic (user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

t.test('addresses in every form a socket or a balancer writes them come out in one plain form', async t => {
  t.equal(plainAddress('10.1.2.3'), '10.1.2.3')
  t.equal(plainAddress('::ffff:10.1.2.3'), '10.1.2.3', 'an IPv4 client on a dual-stack socket')
  t.equal(plainAddress('::FFFF:0a01:0203'), '10.1.2.3', 'the same, written in hex')
  t.equal(plainAddress('2001:DB8:0:0::1'), '2001:db8::1', 'IPv6 canonical: one client, one key')
  t.equal(plainAddress('fe80::1%eth0'), 'fe80::1%eth0', 'a zone index is kept')
  const entries: Array<[string, string | undefined]> = [
    [' 10.1.2.3 ', '10.1.2.3'],
    ['10.1.2.3:5678', '10.1.2.3'],
    ['2001:db8::7', '2001:db8::7'],
    ['[2001:db8::7]', '2001:db8::7'],
    ['[2001:DB8::7]:443', '2001:db8::7'],
    ['::ffff:10.1.2.3', '10.1.2.3'],
    ['[::ffff:10.1.2.3]:80', '10.1.2.3'],
    ['unknown', undefined],
    ['_hidden', undefined],
    ['', undefined],
    ['10.1.2', undefined],
    ['999.1.2.3', undefined],
    ['[10.1.2.3]', undefined],
    ['[2001:db8::7', undefined],
    ['[2001:db8::7]x', undefined],
    ['2001:db8::7:443x', undefined],
    ['example.com:80', undefined]
  ]
  for (const [entry, expected] of entries) t.equal(forwardedAddress(entry), expected, JSON.stringify(entry))
})

t.test('X-Forwarded-For is walked from the right past trusted proxies, and believed only from one', async t => {
  const trusted = new TrustedProxies(['127.0.0.1/32', '10.9.0.0/16', 'fd00:9::/32'])
  const cases: Array<[string, string | string[] | undefined, string, string]> = [
    ['127.0.0.1', undefined, '127.0.0.1', 'no header: the peer'],
    ['192.0.2.1', '10.0.0.1', '192.0.2.1', 'from an untrusted peer the header changes nothing'],
    ['::ffff:192.0.2.1', '10.0.0.1', '192.0.2.1', 'nor from a mapped untrusted one'],
    ['127.0.0.1', '10.0.0.1', '10.0.0.1', 'one proxy'],
    ['::ffff:127.0.0.1', '10.0.0.1', '10.0.0.1', 'a trusted proxy on a dual-stack socket'],
    ['127.0.0.1', '6.6.6.6, 10.0.0.1', '10.0.0.1', 'what the client wrote itself stays on the left'],
    ['127.0.0.1', '10.0.0.1, 10.9.1.1', '10.0.0.1', 'a trusted hop is skipped'],
    ['127.0.0.1', '10.0.0.1,10.9.1.1,  10.9.2.2', '10.0.0.1', 'several, with and without spaces'],
    ['127.0.0.1', ['6.6.6.6, 10.0.0.1', '10.9.1.1'], '10.0.0.1', 'several headers are one list, in order'],
    ['127.0.0.1', '10.9.1.1, 10.9.2.2', '10.9.1.1', 'every hop trusted: the leftmost'],
    ['127.0.0.1', '[2001:db8::5]:1234, 10.9.1.1', '2001:db8::5', 'IPv6 in brackets with a port'],
    ['127.0.0.1', '2001:db8::5, [fd00:9::1]', '2001:db8::5', 'a trusted IPv6 hop'],
    ['127.0.0.1', '10.0.0.1:5555', '10.0.0.1', 'an address with a port'],
    ['127.0.0.1', '::ffff:10.0.0.1', '10.0.0.1', 'a mapped IPv4 address'],
    ['127.0.0.1', '10.0.0.1, unknown', '127.0.0.1', 'an entry that is not an address ends the walk at the last one believed: the peer'],
    ['127.0.0.1', '10.0.0.1, garbage, 10.9.1.1', '10.9.1.1', '... or the trusted hop before it'],
    ['127.0.0.1', '', '127.0.0.1', 'an empty header']
  ]
  for (const [peer, header, expected, why] of cases) t.equal(trusted.clientOf(peer, header), expected, why)
  t.equal(new TrustedProxies([]).clientOf('127.0.0.1', '10.0.0.1'), '127.0.0.1', 'with no trusted proxies, never')
  t.equal(trusted.protocolOf('127.0.0.1', 'HTTPS'), 'https')
  t.equal(trusted.protocolOf('127.0.0.1', 'https, http'), 'https', 'the edge proxy\'s value')
  t.equal(trusted.protocolOf('127.0.0.1', 'gopher'), undefined)
  t.equal(trusted.protocolOf('192.0.2.1', 'https'), undefined, 'untrusted: not believed')
})

/** A mirror whose test client (at 127.0.0.1) is, or is not, one of the trusted proxies. */
async function behind (t: Test, trusted: boolean, options: Partial<TestMirrorOptions> = {}): Promise<{ fake: FakeRegistry, mirror: TestMirror }> {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, {
    upstreams: { 'docker.io': fake.url },
    ...options,
    limits: { ...options.limits, trustedProxies: [trusted ? '127.0.0.0/24' : '127.0.1.0/24'] }
  })
  return { fake, mirror }
}

t.test('behind a trusted proxy, the request limit is per forwarded client; the same header from anyone else is ignored', async t => {
  for (const trusted of [true, false]) {
    await t.test(trusted ? 'from a trusted proxy' : 'from an untrusted peer', async t => {
      const { fake, mirror } = await behind(t, trusted, { limits: { maxRequestsPerClient: 1, maxQueuedPerClient: 0 } })
      const digest = fake.addBlob('library/app', randomBytes(256 * 1024))
      const gate = fake.gateBlob(digest, 1024)
      const agent = new Agent({ connections: 8 })
      t.teardown(async () => await agent.close())
      const held = request(`${mirror.url}/v2/library/app/blobs/${digest}`, { dispatcher: agent, headers: { 'x-forwarded-for': '10.0.0.1' } })
      await gate.reached
      const other = await request(`${mirror.url}/v2/`, { dispatcher: agent, headers: { 'x-forwarded-for': '10.0.0.2' } })
      t.equal(other.statusCode, trusted ? 200 : 429, trusted ? 'another client behind the proxy is served' : 'a forged header does not make another client')
      await other.body.dump()
      const same = await request(`${mirror.url}/v2/`, { dispatcher: agent, headers: { 'x-forwarded-for': '6.6.6.6, 10.0.0.1' } })
      t.equal(same.statusCode, 429, 'the same client is held to its limit, whatever it writes on the left')
      await same.body.dump()
      gate.release()
      await (await held).body.dump()
      await sleep(50)
      const clients = mirror.logs.filter(l => l.msg === 'request').map(l => l.client)
      t.same(clients.sort(), trusted ? ['10.0.0.1', '10.0.0.1', '10.0.0.2'] : ['127.0.0.1', '127.0.0.1', '127.0.0.1'], 'the request log names the client')
    })
  }
})

t.test('behind a trusted proxy, the connection cap does not apply to it: it carries many clients', async t => {
  const { mirror } = await behind(t, true, { limits: { maxConnectionsPerClient: 2, headersTimeout: 60_000 } })
  const { hostname, port } = new URL(mirror.url)
  const sockets = await Promise.all([1, 2, 3, 4].map(async () => {
    const socket = connect({ host: hostname, port: Number(port) })
    socket.on('error', () => {})
    await once(socket, 'connect')
    return socket
  }))
  t.teardown(() => { for (const s of sockets) s.destroy() })
  await sleep(300)
  t.equal(sockets.filter(s => s.destroyed).length, 0, 'four connections from the proxy, cap two: none closed')
  const last = sockets[3]
  if (last === undefined) throw new Error('four sockets were opened')
  last.write('GET /v2/ HTTP/1.1\r\nHost: mirror\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n')
  const [answer] = await once(last, 'data') as [Buffer]
  t.match(answer.toString('latin1'), /^HTTP\/1\.1 200 /, 'and served')

  const untrusted = await behind(t, false, { limits: { maxConnectionsPerClient: 2, headersTimeout: 60_000 } })
  const url = new URL(untrusted.mirror.url)
  const capped = await Promise.all([1, 2, 3].map(async () => {
    const socket = connect({ host: url.hostname, port: Number(url.port) })
    socket.on('error', () => {})
    await once(socket, 'connect')
    socket.resume()
    return socket
  }))
  t.teardown(() => { for (const s of capped) s.destroy() })
  await sleep(300)
  t.equal(capped.filter(s => s.destroyed).length, 1, 'the same from a peer that is not trusted: the third is closed')
})

async function authScene (t: Test, trusted: boolean, auth: YamlAuth): Promise<{ mirror: TestMirror, get: (path: string, headers: Record<string, string>) => Promise<{ status: number, headers: Record<string, unknown>, text: string }> }> {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-xff-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  const { fake, mirror } = await behind(t, trusted, {
    auth: { htpasswd, ...auth },
    access: { rules: [{ repositories: ['docker.io/library/*'], users: ['anonymous', '*'], pull: true }], default: 'deny' },
    metrics: { enabled: false }
  })
  makeImage(fake, 'library/alpine', 'v1', { layers: [100] })
  const get = async (path: string, headers: Record<string, string>) => {
    const res = await request(mirror.url + path, { headers })
    const text = await res.body.text()
    return { status: res.statusCode, headers: res.headers, text }
  }
  return { mirror, get }
}

t.test('behind a trusted proxy, auth.anonymousNetworks goes by the forwarded client; a forged header from anyone else is ignored', async t => {
  const manifest = '/v2/library/alpine/manifests/v1'
  const { get, mirror } = await authScene(t, true, { anonymousNetworks: ['10.1.0.0/16'] })
  t.equal((await get(manifest, { 'x-forwarded-for': '10.1.2.3' })).status, 200, 'a client in the network pulls anonymously')
  const token = await get('/auth/token?service=registry-mirror', { 'x-forwarded-for': '10.1.2.3' })
  t.equal(token.status, 200, 'and gets an anonymous token')
  t.equal((await get(manifest, { 'x-forwarded-for': '10.2.0.1' })).status, 401, 'a client outside it is asked to log in')
  t.equal((await get('/auth/token?service=registry-mirror', { 'x-forwarded-for': '10.2.0.1' })).status, 401, 'and gets no anonymous token')
  t.equal((await get(manifest, { 'x-forwarded-for': '10.1.2.3, 10.2.0.1' })).status, 401, 'naming an allowed address on the left does not help')
  t.equal((await get(manifest, {})).status, 401, 'nor does the proxy itself count as a client in the network')
  t.match(mirror.logs.find(l => l.msg === 'anonymous pull refused: not from an allowed network'), { address: '10.2.0.1' }, 'the refusal names the client')

  const untrusted = await authScene(t, false, { anonymousNetworks: ['10.1.0.0/16'] })
  t.equal((await untrusted.get(manifest, { 'x-forwarded-for': '10.1.2.3' })).status, 401, 'from a peer that is not trusted, the header is ignored')
})

t.test('behind a trusted proxy, failed logins are counted per forwarded client; from anyone else, a changing header does not escape the count', async t => {
  const { get, mirror } = await authScene(t, true, { maxFailures: 3, failureWindow: '1m' })
  for (let i = 0; i < 3; i++) t.equal((await get('/v2/', { authorization: basic('alice', `guess ${i}`), 'x-forwarded-for': '10.0.0.1' })).status, 401)
  t.equal((await get('/v2/', { authorization: basic('alice', 'alice password'), 'x-forwarded-for': '10.0.0.1' })).status, 429, 'the guessing client is held off')
  t.equal((await get('/v2/', { authorization: basic('alice', 'alice password'), 'x-forwarded-for': '10.0.0.2' })).status, 200, 'another client behind the same proxy logs in')
  t.ok(mirror.logs.filter(l => l.msg === 'login failed').every(l => l.address === '10.0.0.1'), 'the failed logins name the client')

  const untrusted = await authScene(t, false, { maxFailures: 3, failureWindow: '1m' })
  for (let i = 0; i < 3; i++) t.equal((await untrusted.get('/v2/', { authorization: basic('alice', `guess ${i}`), 'x-forwarded-for': `10.0.0.${i}` })).status, 401)
  t.equal((await untrusted.get('/v2/', { authorization: basic('alice', 'alice password'), 'x-forwarded-for': '10.0.0.9' })).status, 429, 'a new address in a forged header does not reset the count')
})

t.test('behind a trusted proxy that ends TLS, the token realm names https', async t => {
  const { get } = await authScene(t, true, {})
  const challenge = (await get('/v2/', { 'x-forwarded-proto': 'https', host: 'mirror.example' })).headers['www-authenticate']
  t.match(challenge, /^Bearer realm="https:\/\/mirror\.example\/auth\/token"/)
  const untrusted = await authScene(t, false, {})
  const plain = (await untrusted.get('/v2/', { 'x-forwarded-proto': 'https', host: 'mirror.example' })).headers['www-authenticate']
  t.match(plain, /^Bearer realm="http:\/\/mirror\.example\/auth\/token"/, 'from anyone else, the scheme the mirror was reached by')
})
