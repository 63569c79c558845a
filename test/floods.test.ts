// Floods don't take the process down: connections that send nothing, send
// slowly or sit idle are closed; open connections and requests per client
// are capped (one address's silent connections cannot take the others'
// slots); a burst past the request limit waits its turn, in order and for a
// while, before a 429; the operational listener answers while the main one is full.

import t from 'tap'
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import { Agent, request } from 'undici'
import { ClientRequestLimit } from '../lib/http/client-limit.js'
import { TooManyRequestsError } from '../lib/errors.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'
import { sample } from './helpers/prometheus.js'

function hostPort (url: string): { host: string, port: number } {
  const u = new URL(url)
  return { host: u.hostname, port: Number(u.port) }
}

/** A connection that sends nothing, from `localAddress` (any of 127.0.0.0/8 on Linux) when given. */
async function open (url: string, localAddress?: string): Promise<Socket> {
  const socket = connect({ ...hostPort(url), localAddress })
  socket.on('error', () => {})
  await once(socket, 'connect')
  return socket
}

/** An agent whose connections come from `localAddress`: another client, as the mirror sees it. */
function from (localAddress: string, connections = 8): Agent {
  return new Agent({ connections, localAddress })
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Milliseconds until the server closes the socket (or `limit`, if it never does). */
async function closedWithin (socket: Socket, limit: number): Promise<number> {
  const started = Date.now()
  socket.resume()
  await Promise.race([once(socket, 'close'), new Promise(resolve => setTimeout(resolve, limit))])
  return socket.destroyed ? Date.now() - started : Infinity
}

t.test('a connection that sends no request, or its headers too slowly, is closed after headersTimeout', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { headersTimeout: 1000 } })
  const silent = await open(mirror.url)
  const slow = await open(mirror.url)
  slow.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n')
  const drip = setInterval(() => { if (!slow.destroyed) slow.write('X-Drip: 1\r\n') }, 200)
  t.teardown(() => clearInterval(drip))
  const [a, b] = await Promise.all([closedWithin(silent, 10_000), closedWithin(slow, 10_000)])
  t.ok(a < 10_000, `the silent connection was closed (${a} ms)`)
  t.ok(b < 10_000, `the slow one too, though it kept sending (${b} ms)`)
  t.equal((await fetch(`${mirror.url}/v2/`)).status, 200, 'others are served')
})

t.test('an idle keep-alive connection is closed after idleTimeout', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { idleTimeout: 1000 } })
  const socket = await open(mirror.url)
  socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n')
  const idle = await closedWithin(socket, 10_000)
  t.ok(idle < 10_000, `closed once idle (${idle} ms)`)
})

t.test('past maxConnections, new connections are refused and the ones open are served', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { maxConnections: 4, headersTimeout: 60_000 } })
  const agent = new Agent({ connections: 1 })
  t.teardown(async () => await agent.close())
  const held = await Promise.all([1, 2, 3].map(async () => await open(mirror.url)))
  t.teardown(() => { for (const s of held) s.destroy() })
  // The fourth is the agent's own, kept alive.
  t.equal((await request(`${mirror.url}/v2/`, { dispatcher: agent })).statusCode, 200)
  const refused = await open(mirror.url).catch(() => undefined)
  const refusedIn = refused === undefined ? 0 : await closedWithin(refused, 5_000)
  t.ok(refusedIn < 5_000, 'a fifth connection is closed at once')
  held[0]?.destroy()
  await new Promise(resolve => setTimeout(resolve, 100))
  const later = new Agent({ connections: 1 })
  t.teardown(async () => await later.close())
  const res = await request(`${mirror.url}/v2/`, { dispatcher: later })
  t.equal(res.statusCode, 200, 'once one goes, another may come')
  await res.body.dump()
  const metrics = await (await request(`${mirror.url}/metrics`, { dispatcher: later })).body.text()
  t.equal(sample(metrics, 'registry_mirror_connections_refused_total', { reason: 'max-connections' }), 1, 'the refusal is counted')
  t.equal(mirror.logs.filter(l => typeof l.msg === 'string' && l.msg.startsWith('connection refused: the listener is full')).length, 1, 'and logged')
})

t.test('past maxRequestsPerClient with no queue, a client gets 429 TOOMANYREQUESTS at once; its answers under way go on', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { maxRequestsPerClient: 2, maxQueuedPerClient: 0 } })
  const digests = [0, 1].map(() => fake.addBlob('library/app', randomBytes(256 * 1024)))
  const gates = digests.map(d => fake.gateBlob(d, 1024))
  const agent = new Agent({ connections: 8 })
  t.teardown(async () => await agent.close())
  const held = digests.map(async d => await request(`${mirror.url}/v2/library/app/blobs/${d}`, { dispatcher: agent }))
  await Promise.all(gates.map(async g => await g.reached))
  const third = await request(`${mirror.url}/v2/`, { dispatcher: agent })
  t.equal(third.statusCode, 429)
  t.equal(third.headers['retry-after'], '1')
  t.match(await third.body.json(), { errors: [{ code: 'TOOMANYREQUESTS' }] })
  for (const g of gates) g.release()
  for (const r of await Promise.all(held)) {
    t.equal(r.statusCode, 200)
    await r.body.dump()
  }
  const after = await request(`${mirror.url}/v2/`, { dispatcher: agent })
  t.equal(after.statusCode, 200, 'served again once its answers are done')
  await after.body.dump()
})

t.test('with metrics.listen set, /healthz, /readyz and /metrics answer while the main listener is full', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { maxConnections: 3, headersTimeout: 60_000 }, metrics: { listen: { host: '127.0.0.1', port: 0 } } })
  const held = await Promise.all([1, 2, 3].map(async () => await open(mirror.url)))
  t.teardown(() => { for (const s of held) s.destroy() })
  const ops = mirror.opsUrl ?? ''
  for (const path of ['/healthz', '/readyz', '/metrics']) {
    const res = await request(ops + path, { dispatcher: new Agent() })
    t.equal(res.statusCode, 200, path)
    await res.body.dump()
  }
})

t.test('silent connections from one address up to maxConnectionsPerClient: its next is closed at once, while another address and the ops listener are served', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  // The defaults but for headersTimeout, which would close the silent connections before the test is done.
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { headersTimeout: 60_000 }, metrics: { listen: { host: '127.0.0.1', port: 0 } } })
  const CAP = 256
  const held: Socket[] = []
  t.teardown(() => { for (const s of held) s.destroy() })
  for (let i = 0; i < CAP; i++) held.push(await open(mirror.url, '127.0.0.2'))
  await sleep(200)
  t.equal(held.filter(s => s.destroyed).length, 0, `all ${CAP} are kept open: the cap is not below its default`)

  const refused = await Promise.all([1, 2, 3].map(async () => await open(mirror.url, '127.0.0.2').catch(() => undefined)))
  const refusedIn = await Promise.all(refused.map(async s => s === undefined ? 0 : await closedWithin(s, 3_000)))
  t.ok(refusedIn.every(ms => ms < 3_000), `a connection past the cap from the same address is closed at once (${refusedIn.join(', ')} ms)`)

  const other = from('127.0.0.3')
  t.teardown(async () => await other.close())
  const res = await request(`${mirror.url}/v2/`, { dispatcher: other, signal: AbortSignal.timeout(5_000) })
  t.equal(res.statusCode, 200, 'another address is served meanwhile')
  await res.body.dump()
  const ops = mirror.opsUrl ?? ''
  const flooder = from('127.0.0.2', 1)
  t.teardown(async () => await flooder.close())
  const health = await request(`${ops}/healthz`, { dispatcher: flooder })
  t.equal(health.statusCode, 200, 'the ops listener counts its own connections: it answers the flooding address too')
  await health.body.dump()
  const metrics = await (await request(`${ops}/metrics`)).body.text()
  t.equal(sample(metrics, 'registry_mirror_connections_refused_total', { reason: 'per-client' }), 3, 'each refusal is counted')
  const lines = mirror.logs.filter(l => typeof l.msg === 'string' && l.msg.startsWith('connection refused'))
  t.equal(lines.length, 1, 'and logged once a minute per address, not once each')
  t.match(lines[0], { address: '127.0.0.2', listener: 'main', limit: CAP })

  held.shift()?.destroy()
  await sleep(100)
  const again = await request(`${mirror.url}/v2/`, { dispatcher: flooder, signal: AbortSignal.timeout(5_000) })
  t.equal(again.statusCode, 200, 'once one of its connections closes, the address may open another')
  await again.body.dump()
})

t.test('200 concurrent manifest requests from one address are all served with the default limits', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  makeImage(fake, 'library/app', 'v1', { layers: [100] })
  // Upstream holds the manifest, so every request stays under way until it is let go.
  const gate = fake.gateManifest('library/app', 'v1')
  const agent = new Agent({ connections: 200 })
  t.teardown(async () => await agent.close())
  const answers = Array.from({ length: 200 }, async () => {
    const res = await request(`${mirror.url}/v2/library/app/manifests/v1`, { dispatcher: agent, headers: { accept: 'application/vnd.oci.image.manifest.v1+json' } })
    await res.body.dump()
    return res.statusCode
  })
  await gate.reached
  // Time for every request to reach the mirror: 128 under way, the rest waiting (or, before the queue, refused).
  await sleep(1000)
  gate.release()
  const statuses = await Promise.all(answers)
  const counts = new Map<number, number>()
  for (const s of statuses) counts.set(s, (counts.get(s) ?? 0) + 1)
  t.same(Object.fromEntries(counts), { 200: 200 }, 'none refused')
})

t.test('a burst past maxQueuedPerClient gets 429 at once with Retry-After; those waiting are served in the order they came', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { maxRequestsPerClient: 1, maxQueuedPerClient: 3, queueTimeout: 30_000 } })
  const digest = fake.addBlob('library/app', randomBytes(256 * 1024))
  const gate = fake.gateBlob(digest, 1024)
  const agent = new Agent({ connections: 8 })
  t.teardown(async () => await agent.close())
  const held = request(`${mirror.url}/v2/library/app/blobs/${digest}`, { dispatcher: agent })
  await gate.reached
  const finished: string[] = []
  const waiting = ['a', 'b', 'c'].map(async (name, i) => {
    await sleep(50 * i) // in this order
    const res = await request(`${mirror.url}/v2/?${name}`, { dispatcher: agent })
    await res.body.dump()
    finished.push(name)
    return res.statusCode
  })
  await sleep(400)
  const started = Date.now()
  const past = await request(`${mirror.url}/v2/`, { dispatcher: agent })
  t.equal(past.statusCode, 429, 'one more than the queue holds is refused')
  t.ok(Date.now() - started < 1000, 'at once')
  t.equal(past.headers['retry-after'], '1')
  t.match(await past.body.json(), { errors: [{ code: 'TOOMANYREQUESTS' }] })
  t.same(finished, [], 'the waiting ones wait')
  gate.release()
  t.equal((await held).statusCode, 200)
  await (await held).body.dump()
  t.same(await Promise.all(waiting), [200, 200, 200], 'then each is served')
  t.same(finished, ['a', 'b', 'c'], 'first come, first served')
})

t.test('a request waits at most queueTimeout for its turn, then gets 429 with Retry-After', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { maxRequestsPerClient: 1, queueTimeout: 300 } })
  const digest = fake.addBlob('library/app', randomBytes(256 * 1024))
  const gate = fake.gateBlob(digest, 1024)
  const agent = new Agent({ connections: 4 })
  t.teardown(async () => await agent.close())
  const held = request(`${mirror.url}/v2/library/app/blobs/${digest}`, { dispatcher: agent })
  await gate.reached
  const started = Date.now()
  const waited = await request(`${mirror.url}/v2/`, { dispatcher: agent })
  const ms = Date.now() - started
  t.equal(waited.statusCode, 429)
  t.ok(ms >= 250 && ms < 3_000, `after about queueTimeout (${ms} ms)`)
  t.equal(waited.headers['retry-after'], '1')
  t.match(await waited.body.json(), { errors: [{ code: 'TOOMANYREQUESTS', message: /waiting/ }] })
  gate.release()
  await (await held).body.dump()
})

t.test('a waiting request whose client goes away leaves the queue', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, limits: { maxRequestsPerClient: 1, maxQueuedPerClient: 1, queueTimeout: 30_000 } })
  const digest = fake.addBlob('library/app', randomBytes(256 * 1024))
  const gate = fake.gateBlob(digest, 1024)
  const agent = new Agent({ connections: 4 })
  t.teardown(async () => await agent.close())
  const held = request(`${mirror.url}/v2/library/app/blobs/${digest}`, { dispatcher: agent })
  await gate.reached
  const abandoned = request(`${mirror.url}/v2/?abandoned`, { dispatcher: agent, signal: AbortSignal.timeout(200) })
  await t.rejects(abandoned, 'its client gives up')
  await sleep(100)
  const next = request(`${mirror.url}/v2/?next`, { dispatcher: agent })
  await sleep(300)
  gate.release()
  await (await held).body.dump()
  const res = await next
  t.equal(res.statusCode, 200, 'the queue\'s one place was free again: the next request waited instead of a 429')
  await res.body.dump()
})

t.test('ClientRequestLimit keeps an entry only for a client with a request under way or waiting', async t => {
  const limit = new ClientRequestLimit({ maxUnderWay: 1, maxWaiting: 1, maxWait: 100 })
  const never = new AbortController().signal
  const first = await limit.acquire('10.0.0.1', never)
  const gone = new AbortController()
  const second = limit.acquire('10.0.0.1', gone.signal)
  await t.rejects(limit.acquire('10.0.0.1', never), TooManyRequestsError, 'the queue is full')
  t.equal(limit.clients, 1)
  gone.abort()
  t.equal(await second, undefined, 'a waiter whose client left gets no turn')
  const timedOut = limit.acquire('10.0.0.1', never)
  await t.rejects(timedOut, TooManyRequestsError, 'a waiter past maxWait gets 429')
  first?.release()
  first?.release()
  t.equal(limit.clients, 0, 'nothing under way or waiting: no entry')
  const many = await Promise.all(Array.from({ length: 1000 }, async (_, i) => await limit.acquire(`10.1.${i >> 8}.${i & 255}`, never)))
  t.equal(limit.clients, 1000)
  for (const turn of many) turn?.release()
  t.equal(limit.clients, 0, 'a thousand clients come and go and leave nothing behind')
  t.throws(() => new ClientRequestLimit({ maxUnderWay: 0, maxWaiting: 1, maxWait: 1 }), /maxUnderWay must be an integer of at least 1/)
})

t.test('downloads beyond maxConcurrentDownloads wait their turn', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: fake.url, maxConcurrentDownloads: 3 } } })
  const blobs = Array.from({ length: 6 }, () => randomBytes(200 * 1024))
  const digests = blobs.map(b => fake.addBlob('library/app', b))
  const gates = digests.map(d => fake.gateBlob(d, 1024))
  const agent = new Agent({ connections: 16 })
  t.teardown(async () => await agent.close())
  const downloads = digests.map(async d => await request(`${mirror.url}/v2/library/app/blobs/${d}`, { dispatcher: agent }))
  let reached = 0
  for (const g of gates) void g.reached.then(() => { reached++ })
  for (let i = 0; i < 100 && reached < 3; i++) await new Promise(resolve => setTimeout(resolve, 20))
  await new Promise(resolve => setTimeout(resolve, 300))
  t.equal(reached, 3, 'three downloads at once; the rest wait')

  for (const g of gates) g.release()
  const answers = await Promise.all(downloads)
  for (const [i, r] of answers.entries()) {
    t.equal(r.statusCode, 200)
    t.ok(Buffer.from(await r.body.arrayBuffer()).equals(blobs[i] ?? Buffer.alloc(0)), `download ${i} whole: the waiting ones went once slots came free`)
  }
})

t.test('a cold tag never queues behind slow blob downloads on the same upstream', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  // More slow downloads than one connection pool holds.
  const digests = Array.from({ length: 40 }, () => fake.addBlob('library/app', randomBytes(64 * 1024)))
  const gates = digests.map(d => fake.gateBlob(d, 1024))
  const agent = new Agent({ connections: 64 })
  t.teardown(async () => await agent.close())
  const downloads = digests.map(async d => await request(`${mirror.url}/v2/library/app/blobs/${d}`, { dispatcher: agent }))
  let reached = 0
  for (const g of gates) void g.reached.then(() => { reached++ })
  for (let i = 0; i < 200 && reached < 16; i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.ok(reached >= 16, `downloads under way and held (${reached})`)
  makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const manifest = await request(`${mirror.url}/v2/library/app/manifests/v1`, { dispatcher: agent, signal: AbortSignal.timeout(4_000) })
  t.equal(manifest.statusCode, 200, 'the tag is answered at once, not after the downloads')
  await manifest.body.dump()
  for (const g of gates) g.release()
  for (const r of await Promise.all(downloads)) {
    t.equal(r.statusCode, 200)
    await r.body.dump()
  }
})

t.test('a slow reader of a cached blob holds one read buffer of the mirror\'s memory, and others are served meanwhile', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const bytes = randomBytes(8 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  const path = `/v2/library/app/blobs/${digest}`
  const first = await request(mirror.url + path)
  await first.body.dump()
  // Until the download is committed, so that the slow readers read the cached file.
  for (let i = 0; i < 100 && mirror.index.getBlob(digest) === undefined; i++) await new Promise(resolve => setTimeout(resolve, 20))
  const pool = mirror.readBuffers
  const before = pool.allocated

  const SLOW = 20
  const readers = await Promise.all(Array.from({ length: SLOW }, async () => {
    const socket = await open(mirror.url)
    const received: Buffer[] = []
    socket.once('data', () => socket.pause()) // then reads nothing more until resumed
    socket.on('data', (chunk: Buffer) => received.push(chunk))
    socket.write(`GET ${path} HTTP/1.1\r\nHost: mirror\r\n\r\n`)
    return { socket, received }
  }))
  t.teardown(() => { for (const r of readers) r.socket.destroy() })
  await Promise.all(readers.map(async r => {
    for (let i = 0; i < 200 && r.received.length === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
    t.match(r.received[0]?.toString('latin1') ?? '', /^HTTP\/1.1 200 OK\r\n[^]*X-Mirror-Cache: hit\r\n/, 'served from the cached file')
  }))
  // Until the kernel's buffers are full and every response waits on its client.
  let last = -1
  for (let i = 0; i < 100 && pool.allocated !== last; i++) {
    last = pool.allocated
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  const held = (pool.allocated - before) * pool.size
  t.ok(held <= SLOW * 256 * 1024 + 8 * 1024 * 1024, `${SLOW} stalled responses took ${held} bytes of read buffers in all`)

  const other = await request(mirror.url + path, { dispatcher: new Agent(), signal: AbortSignal.timeout(5_000) })
  t.ok(Buffer.from(await other.body.arrayBuffer()).equals(bytes), 'another client gets the whole blob meanwhile')

  for (const r of readers) r.socket.resume()
  await Promise.all(readers.map(async r => {
    const length = (): number => r.received.reduce((n, c) => n + c.length, 0)
    for (let i = 0; i < 200 && !Buffer.concat(r.received).includes('\r\n\r\n'); i++) await new Promise(resolve => setTimeout(resolve, 10))
    const headerEnd = Buffer.concat(r.received).indexOf('\r\n\r\n') + 4
    for (let i = 0; i < 500 && length() < headerEnd + bytes.length; i++) await new Promise(resolve => setTimeout(resolve, 10))
    t.ok(Buffer.concat(r.received).subarray(headerEnd).equals(bytes), 'each slow reader, once it reads again, gets every byte in order')
  }))
})
