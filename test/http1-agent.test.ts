// The upstream HTTP/1.1 client against raw TCP servers that answer byte for byte as told:
// framing, reuse of connections, timeouts, hostile heads, back-pressure, the
// pooled buffers, TLS.

import t, { type Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { lookup } from 'node:dns'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import { setTimeout as sleep } from 'node:timers/promises'
import { makeCA } from '../harness/certs.js'
import { Http1Agent, type Http1AgentOptions, type ResponseBody } from '../lib/upstream/http1-agent.js'
import { ChunkedDecoder, parseResponseHead } from '../lib/upstream/h1-message.js'
import { BufferPool } from '../lib/store/buffer-pool.js'
import { tempDir } from './helpers/temp-dir.js'

interface RawServer {
  readonly url: string
  /** Each request head received, in order. */
  readonly requests: string[]
  /** Connections accepted so far. */
  connections: number
  readonly closed: number[]
}

/**
 * A server that reads each request head and answers with whatever `answer`
 * writes on the socket (it may end or destroy it).
 */
async function rawServer (t: Test, answer: (socket: Socket, request: string, n: number) => void, make: (l: (s: Socket) => void) => Server = l => createServer(l), scheme = 'http'): Promise<RawServer> {
  const state: RawServer = { url: '', requests: [], connections: 0, closed: [] }
  const sockets = new Set<Socket>()
  const server = make(socket => {
    const id = ++state.connections
    sockets.add(socket)
    socket.on('close', () => { sockets.delete(socket); state.closed.push(id) })
    socket.on('error', () => {})
    let buffered = ''
    socket.on('data', data => {
      buffered += data.toString('latin1')
      let end
      while ((end = buffered.indexOf('\r\n\r\n')) >= 0) {
        const request = buffered.slice(0, end)
        buffered = buffered.slice(end + 4)
        state.requests.push(request)
        answer(socket, request, state.requests.length)
      }
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const s of sockets) s.destroy()
    await new Promise(resolve => server.close(resolve))
  })
  return Object.assign(state, { url: `${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}` })
}

function agentFor (t: Test, options: Partial<Http1AgentOptions> = {}): { agent: Http1Agent, pool: BufferPool } {
  const pool = new BufferPool(256 * 1024, 64)
  const agent = new Http1Agent({
    connectTimeout: 2000, headersTimeout: 2000, bodyTimeout: 2000, keepAliveTimeout: 5000, maxConnectionsPerOrigin: 8, maxIdlePerOrigin: 4, lookup, buffers: pool, ...options
  })
  t.teardown(async () => await agent.destroy())
  return { agent, pool }
}

/** The whole body, each chunk given back to the pool once copied. */
async function readAll (body: ResponseBody, pool?: BufferPool): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const chunk of body) {
    parts.push(Buffer.from(chunk as Buffer))
    pool?.give(chunk as Buffer)
  }
  return Buffer.concat(parts)
}

const ok = (body: Buffer, extra = ''): Buffer => Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n`), body])

t.test('a Content-Length body arrives whole, and the connection carries the next request', async t => {
  const bytes = randomBytes(3_000_000)
  const server = await rawServer(t, socket => socket.write(ok(bytes, 'docker-content-digest: sha256:x\r\n')))
  const { agent, pool } = agentFor(t)
  for (let i = 0; i < 3; i++) {
    const res = await agent.request('GET', new URL(`${server.url}/v2/a/blobs/x?i=${i}`), { authorization: 'Bearer t' })
    t.equal(res.statusCode, 200)
    t.equal(res.headers['docker-content-digest'], 'sha256:x')
    t.ok((await readAll(res.body, pool)).equals(bytes))
  }
  t.equal(server.connections, 1, 'one connection for three requests')
  t.match(server.requests[2], /^GET \/v2\/a\/blobs\/x\?i=2 HTTP\/1\.1\r\nhost: 127\.0\.0\.1:\d+\r\nauthorization: Bearer t\r\nconnection: keep-alive$/)
})

t.test('socket reads go into the pool\'s buffers and come back: a second body takes no new ones', async t => {
  const bytes = randomBytes(8_000_000)
  const server = await rawServer(t, socket => socket.write(ok(bytes)))
  const { agent, pool } = agentFor(t)
  t.ok((await readAll((await agent.request('GET', new URL(server.url + '/b'), {})).body, pool)).equals(bytes))
  const after = pool.allocated
  t.ok(after < 16, `a few buffers for 8 MB (${after})`)
  t.ok((await readAll((await agent.request('GET', new URL(server.url + '/b'), {})).body, pool)).equals(bytes))
  t.equal(pool.allocated, after, 'none more for the second')
})

t.test('a chunked body is decoded, extensions and trailers dropped, and the connection kept', async t => {
  const server = await rawServer(t, socket => socket.write('HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n'))
  const { agent } = agentFor(t)
  for (let i = 0; i < 2; i++) {
    const res = await agent.request('GET', new URL(server.url + '/c'), {})
    t.equal((await readAll(res.body)).toString(), 'hello world')
  }
  t.equal(server.connections, 1)
})

t.test('a body without length runs to the close, and that connection is not kept', async t => {
  const server = await rawServer(t, socket => { socket.end('HTTP/1.1 200 OK\r\n\r\nuntil the end') })
  const { agent } = agentFor(t)
  t.equal((await readAll((await agent.request('GET', new URL(server.url + '/d'), {})).body)).toString(), 'until the end')
  t.equal((await readAll((await agent.request('GET', new URL(server.url + '/d'), {})).body)).toString(), 'until the end')
  t.equal(server.connections, 2)
})

t.test('Connection: close, an HTTP/1.0 answer, or bytes past the body: the connection is not used again', async t => {
  const answers = [
    'HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok',
    'HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok',
    'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nforged'
  ]
  for (const answer of answers) {
    const server = await rawServer(t, socket => socket.write(answer))
    const { agent } = agentFor(t)
    t.equal((await readAll((await agent.request('GET', new URL(server.url + '/e'), {})).body)).toString(), 'ok')
    t.equal((await readAll((await agent.request('GET', new URL(server.url + '/e'), {})).body)).toString(), 'ok', 'the next answer is its own, never the bytes left over')
    t.equal(server.connections, 2, answer.split('\r\n')[0] ?? '')
  }
})

t.test('100 Continue and 103 Early Hints before the answer are passed over', async t => {
  const server = await rawServer(t, socket => socket.write('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope'))
  const { agent } = agentFor(t)
  const res = await agent.request('GET', new URL(server.url + '/f'), {})
  t.equal(res.statusCode, 404)
  t.equal((await readAll(res.body)).toString(), 'nope')
})

t.test('a head the mirror cannot trust is refused with UPSTREAM_PROTOCOL, naming what is wrong', async t => {
  const cases: Array<[string, RegExp]> = [
    ['HTTP/1.1 200 OK\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n', /both Transfer-Encoding and Content-Length/],
    ['HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcd', /invalid Content-Length: 4, 5/],
    ['HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n', /invalid Content-Length/],
    ['HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n', /transfer coding the mirror does not read: gzip, chunked/],
    ['HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\n\r\n', /folded header line/],
    ['HTTP/1.1 200 OK\nx-a: 1\r\n\r\n', /not an HTTP\/1.x status line/],
    ['HTTP/1.1 200 OK\r\nx-a: 1\nx-b: 2\r\n\r\n', /malformed header line/],
    ['HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n', /malformed header line/],
    ['HTTP/1.1 200 OK\r\nx-a: a\u0001b\r\n\r\n', /control character in header x-a/],
    ['HTTP/2 200\r\n\r\n', /not an HTTP\/1.x status line/],
    ['HTTP/1.1 101 Switching Protocols\r\n\r\n', /switched protocols/],
    [`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(17 * 1024)}\r\n\r\n`, /response head over 16384 bytes/],
    [`HTTP/1.1 200 OK\r\nx-big: ${'a'.repeat(17 * 1024)}`, /response head over 16384 bytes/]
  ]
  for (const [answer, message] of cases) {
    const server = await rawServer(t, socket => socket.write(answer))
    const { agent } = agentFor(t)
    await t.rejects(agent.request('GET', new URL(server.url + '/g'), {}), { code: 'UPSTREAM_PROTOCOL', message }, JSON.stringify(answer.slice(0, 40)))
    await sleep(10)
    t.equal(server.closed.length, 1, 'its connection is closed')
  }
})

t.test('chunked framing the mirror cannot trust fails the body', async t => {
  const cases: Array<[string, RegExp]> = [
    ['zz\r\n', /invalid chunk size/],
    ['5\r\nhelloXY', /chunk not followed by CRLF/],
    ['5\nhello\r\n', /bare LF/],
    [`${'1'.repeat(2000)}`, /chunk-size line too long/],
    [`0\r\nx: ${'a'.repeat(17 * 1024)}\r\n\r\n`, /trailer fields too long/],
    ['fffffffffffff\r\n', /invalid chunk size/]
  ]
  for (const [body, message] of cases) {
    const server = await rawServer(t, socket => socket.write(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${body}`))
    const { agent } = agentFor(t)
    const res = await agent.request('GET', new URL(server.url + '/h'), {})
    await t.rejects(readAll(res.body), { code: 'UPSTREAM_PROTOCOL', message }, JSON.stringify(body.slice(0, 20)))
  }
})

t.test('the chunked decoder gives the same bytes however its input is cut', async t => {
  const data = randomBytes(10_000)
  const encoded = Buffer.concat([Buffer.from('1000\r\n'), data.subarray(0, 4096), Buffer.from('\r\n1710;x=y\r\n'), data.subarray(4096), Buffer.from('\r\n0\r\na: b\r\n\r\n')])
  for (const step of [1, 7, 100, encoded.length]) {
    const decoder = new ChunkedDecoder()
    const out: Buffer[] = []
    let allUsed = true
    for (let i = 0; i < encoded.length; i += step) {
      const piece = encoded.subarray(i, i + step)
      allUsed &&= decoder.feed(piece, (s, e) => out.push(piece.subarray(s, e))) === piece.length
    }
    t.ok(allUsed, 'every byte was the body\'s')
    t.ok(decoder.done)
    t.ok(Buffer.concat(out).equals(data), `in steps of ${step}`)
  }
  const decoder = new ChunkedDecoder()
  t.equal(decoder.feed(Buffer.from('0\r\n\r\nextra'), () => {}), 5, 'what follows the end is not the body\'s')
})

t.test('response heads: repeated fields are kept in order, names lower-cased, values trimmed', async t => {
  const head = parseResponseHead('HTTP/1.1 307 Temporary Redirect\r\nLocation:  https://cdn/x  \r\nSet-Cookie: a\r\nset-cookie: b\r\nContent-Length: 0', 'GET')
  t.equal(head.statusCode, 307)
  t.same(head.headers, { location: 'https://cdn/x', 'set-cookie': ['a', 'b'], 'content-length': '0' })
  t.same(head.framing, { kind: 'none' })
  t.equal(head.reusable, true)
  t.same(parseResponseHead('HTTP/1.1 200', 'GET').framing, { kind: 'close' }, 'no reason phrase, no length')
  t.same(parseResponseHead('HTTP/1.1 304 Not Modified\r\ncontent-length: 9', 'GET').framing, { kind: 'none' })
})

t.test('no head within headersTimeout: HEADERS_TIMEOUT, even for a head that trickles in', async t => {
  const silent = await rawServer(t, () => {})
  const trickle = await rawServer(t, socket => {
    const timer = setInterval(() => { if (!socket.destroyed) socket.write('x') }, 20)
    socket.write('HTTP/1.1 200 OK\r\nx-slow: ')
    socket.on('close', () => clearInterval(timer))
  })
  const { agent } = agentFor(t, { headersTimeout: 300 })
  for (const server of [silent, trickle]) {
    const started = Date.now()
    await t.rejects(agent.request('GET', new URL(server.url + '/i'), {}), { code: 'HEADERS_TIMEOUT' })
    t.ok(Date.now() - started < 1500)
  }
})

t.test('a body that goes quiet for bodyTimeout fails with BODY_TIMEOUT; one cut short with UPSTREAM_CLOSED', async t => {
  const stall = await rawServer(t, socket => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf'))
  const cut = await rawServer(t, socket => socket.end('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf'))
  const { agent } = agentFor(t, { bodyTimeout: 300 })
  await t.rejects(readAll((await agent.request('GET', new URL(stall.url + '/j'), {})).body), { code: 'BODY_TIMEOUT' })
  await t.rejects(readAll((await agent.request('GET', new URL(cut.url + '/j'), {})).body), { code: 'UPSTREAM_CLOSED', message: /before the body's end/ })
})

t.test('a TLS handshake not done within connectTimeout: CONNECT_TIMEOUT', async t => {
  // A TCP server that never answers the ClientHello: connected, never secure.
  const mute = await rawServer(t, () => {})
  const { agent } = agentFor(t, { connectTimeout: 200 })
  const started = Date.now()
  await t.rejects(agent.request('GET', new URL(mute.url.replace('http:', 'https:') + '/k'), {}), { code: 'CONNECT_TIMEOUT' })
  t.ok(Date.now() - started < 1500)
})

t.test('a reader that stops: the socket is paused, the body timeout does not run, and memory stays bounded', async t => {
  const size = 64 * 1024 * 1024
  let sent = 0
  const server = await rawServer(t, socket => {
    socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${size}\r\n\r\n`)
    const block = randomBytes(1024 * 1024)
    const pump = (): void => {
      while (sent < size) {
        sent += block.length
        if (!socket.write(block)) {
          socket.once('drain', pump)
          return
        }
      }
    }
    pump()
  })
  const { agent } = agentFor(t, { bodyTimeout: 200 })
  const res = await agent.request('GET', new URL(server.url + '/l'), {})
  await sleep(600)
  t.ok(res.body.readableLength <= 2 * 1024 * 1024, `the body holds ${res.body.readableLength} bytes`)
  t.ok(sent < size / 2, `the server could send ${sent} of ${size}`)
  t.notOk(res.body.destroyed, 'no body timeout while the reader is behind')
  const hash = createHash('sha256')
  let n = 0
  for await (const chunk of res.body) { hash.update(chunk as Buffer); n += (chunk as Buffer).length }
  t.equal(n, size, 'then it all arrives')
})

t.test('a body read or destroyed after its connection moved on to the next request leaves that request alone', async t => {
  const big = randomBytes(3_000_000)
  const server = await rawServer(t, (socket, request) => socket.write(request.includes('/small') ? ok(Buffer.from('small')) : ok(big)))
  const { agent } = agentFor(t)
  for (const late of ['read', 'destroyed'] as const) {
    // The first body has all its bytes in memory, unread, when the connection carries the second request.
    const first = await agent.request('GET', new URL(server.url + '/small'), {})
    await sleep(20)
    const second = await agent.request('GET', new URL(server.url + '/big'), {})
    if (late === 'read') t.equal((await readAll(first.body)).toString(), 'small')
    else first.body.destroy()
    await sleep(20)
    t.ok((await readAll(second.body)).equals(big), `the second body arrives whole, the first ${late} late`)
  }
  t.equal(server.connections, 1)
})

t.test('a body destroyed by its reader closes its connection; the next request gets a new one', async t => {
  const bytes = randomBytes(4_000_000)
  const server = await rawServer(t, socket => socket.write(ok(bytes)))
  const { agent } = agentFor(t)
  const res = await agent.request('GET', new URL(server.url + '/m'), {})
  res.body.destroy()
  t.ok((await readAll((await agent.request('GET', new URL(server.url + '/m'), {})).body)).equals(bytes))
  t.equal(server.connections, 2)
  await sleep(20)
  t.ok(server.closed.includes(1), 'the first was closed')
})

t.test('an idle connection the server closes is dropped, and the next request connects again', async t => {
  const server = await rawServer(t, socket => { socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'); setTimeout(() => socket.end(), 20) })
  const { agent } = agentFor(t)
  t.equal((await readAll((await agent.request('GET', new URL(server.url + '/n'), {})).body)).toString(), 'ok')
  t.equal(agent.idle, 1)
  await sleep(100)
  t.equal(agent.idle, 0)
  t.equal((await readAll((await agent.request('GET', new URL(server.url + '/n'), {})).body)).toString(), 'ok')
  t.equal(server.connections, 2)
})

t.test('idle connections are closed after keepAliveTimeout', async t => {
  const server = await rawServer(t, socket => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'))
  const { agent } = agentFor(t, { keepAliveTimeout: 100 })
  await readAll((await agent.request('GET', new URL(server.url + '/o'), {})).body)
  t.equal(agent.idle, 1)
  await sleep(250)
  t.equal(agent.idle, 0)
  t.same(server.closed, [1])
})

t.test('HEAD: the answer has no body, whatever its Content-Length says, and the connection is kept', async t => {
  const server = await rawServer(t, (socket, request) => socket.write(request.startsWith('HEAD ')
    ? 'HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ndocker-content-digest: sha256:y\r\n\r\n'
    : 'HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nget'))
  const { agent } = agentFor(t)
  const head = await agent.request('HEAD', new URL(server.url + '/s'), {})
  t.equal(head.headers['content-length'], '1234')
  t.equal((await readAll(head.body)).length, 0)
  t.equal((await readAll((await agent.request('GET', new URL(server.url + '/s'), {})).body)).toString(), 'get', 'the next answer is read whole')
  t.equal(server.connections, 1)
  t.match(server.requests[0], /^HEAD \/s HTTP\/1\.1\r\n/)
})

t.test('at maxConnectionsPerOrigin, requests wait in order for a connection; other origins do not wait', async t => {
  const gates: Array<() => void> = []
  const server = await rawServer(t, (socket, _request, n) => { gates.push(() => socket.write(`HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n${n}`)) })
  const other = await rawServer(t, socket => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nother'))
  const { agent } = agentFor(t, { maxConnectionsPerOrigin: 2 })
  const order: string[] = []
  const answers = [1, 2, 3, 4].map(async i => {
    const res = await agent.request('GET', new URL(`${server.url}/t${i}`), {})
    const body = (await readAll(res.body)).toString()
    order.push(`t${i}:${body}`)
  })
  await sleep(50)
  t.equal(server.connections, 2, 'two connections, two requests waiting')
  t.equal(server.requests.length, 2)
  t.equal((await readAll((await agent.request('GET', new URL(other.url + '/u'), {})).body)).toString(), 'other', 'another origin is not held up')
  for (let i = 0; i < 4; i++) {
    while (gates.length === 0) await sleep(5)
    gates.shift()?.()
  }
  await Promise.all(answers)
  t.equal(server.connections, 2, 'the waiting requests took the connections as they came free')
  t.same(server.requests.map(r => r.split(' ')[1]), ['/t1', '/t2', '/t3', '/t4'], 'in order')
  t.equal(order.length, 4)
})

t.test('a header value with a line break is never sent', async t => {
  const server = await rawServer(t, socket => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n'))
  const { agent } = agentFor(t)
  await t.rejects(agent.request('GET', new URL(server.url + '/p'), { authorization: 'Bearer x\r\nx-injected: 1' }), { code: 'UPSTREAM_PROTOCOL' })
  await t.rejects(agent.request('GET', new URL(server.url + '/p'), { 'bad name': 'x' }), { code: 'UPSTREAM_PROTOCOL' })
  t.equal(server.connections, 0)
})

t.test('close() waits for the body under way, then takes no more', async t => {
  const server = await rawServer(t, socket => socket.write(ok(Buffer.from('body'))))
  const { agent } = agentFor(t)
  const res = await agent.request('GET', new URL(server.url + '/q'), {})
  const closing = agent.close()
  t.equal((await readAll(res.body)).toString(), 'body')
  await closing
  await t.rejects(agent.request('GET', new URL(server.url + '/q'), {}), { code: 'UPSTREAM_CLOSED' })
})

t.test('https: the server\'s certificate is checked against the CA given, and the body read through TLS', async t => {
  const dir = await tempDir(t, 'blob-agent-tls')
  const ca = await makeCA(dir)
  const stranger = await makeCA(dir, 'stranger')
  const leaf = await ca.issueServer('upstream', ['127.0.0.1', 'localhost'])
  const bytes = randomBytes(5_000_000)
  const server = await rawServer(t, socket => socket.write(ok(bytes)), l => createTlsServer({ cert: leaf.cert, key: leaf.key }, l), 'https')
  const trusting = agentFor(t, { tls: { ca: ca.cert } })
  const res = await trusting.agent.request('GET', new URL(server.url.replace('127.0.0.1', 'localhost') + '/r'), {})
  t.ok((await readAll(res.body, trusting.pool)).equals(bytes))
  t.ok((await readAll((await trusting.agent.request('GET', new URL(server.url + '/r'), {})).body)).equals(bytes), 'by IP address too')
  const doubting = agentFor(t, { tls: { ca: stranger.cert } })
  await t.rejects(doubting.agent.request('GET', new URL(server.url + '/r'), {}), { code: /CERT|SELF_SIGNED|UNABLE_TO/ })
})
