// TLS on the listeners: certificates from a CA the test makes with openssl,
// renewals taken without a restart (new connections get the new certificate,
// the open ones finish), client certificates when there is a client CA, and
// bad files refused at start with the key at fault named.

import t from 'tap'
import { randomBytes, X509Certificate } from 'node:crypto'
import { mkdtemp, rename, rm, writeFile, copyFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, type ConnectionOptions, type PeerCertificate, type TLSSocket } from 'node:tls'
import { connect as netConnect, type Socket } from 'node:net'
import { once } from 'node:events'
import { Agent, request } from 'undici'
import { makeCA, type CertificateAuthority, type Pem } from '../harness/certs.js'
import { ConfigError } from '../lib/errors.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { startMirror } from './helpers/mirror.js'
import { rejectedBy } from './helpers/throws.js'

interface Site {
  readonly dir: string
  readonly ca: CertificateAuthority
  /** The files the mirror is configured with. */
  readonly cert: string
  readonly key: string
}

async function site (t: { teardown: (fn: () => unknown) => void }): Promise<Site & { served: Pem }> {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-tls-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const ca = await makeCA(dir)
  const served = await ca.issueServer('server-1')
  const cert = join(dir, 'tls.crt')
  const key = join(dir, 'tls.key')
  await copyFile(served.certPath, cert)
  await copyFile(served.keyPath, key)
  return { dir, ca, cert, key, served }
}

function hostPort (url: string): { host: string, port: number } {
  const u = new URL(url)
  return { host: u.hostname, port: Number(u.port) }
}

/** Completes a handshake and returns the certificate the server presented, or the error. */
async function handshake (url: string, options: ConnectionOptions = {}): Promise<{ socket: TLSSocket, peer: PeerCertificate } | { error: Error }> {
  return await new Promise(resolve => {
    const socket = connect({ ...hostPort(url), servername: undefined, ...options })
    socket.once('secureConnect', () => resolve({ socket, peer: socket.getPeerCertificate() }))
    socket.once('error', error => resolve({ error }))
  })
}

function fingerprintOf (pem: Pem): string {
  return new X509Certificate(pem.cert).fingerprint256
}

async function until (what: string, test: () => Promise<boolean> | boolean, limitMs = 5_000): Promise<void> {
  const started = Date.now()
  while (!(await test())) {
    if (Date.now() - started > limitMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 25))
  }
}

t.test('serves the API over TLS 1.2 and later with the configured certificate', async t => {
  const s = await site(t)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tls: { cert: s.cert, key: s.key } })
  t.match(mirror.url, /^https:\/\/127\.0\.0\.1:\d+$/)
  const agent = new Agent({ connect: { ca: s.ca.cert } })
  t.teardown(async () => await agent.close())
  const res = await request(`${mirror.url}/v2/`, { dispatcher: agent })
  t.equal(res.statusCode, 200)
  await res.body.dump()

  const bytes = randomBytes(300_000)
  const digest = fake.addBlob('library/app', bytes)
  for (const outcome of ['miss', 'hit']) {
    const blob = await request(`${mirror.url}/v2/library/app/blobs/${digest}`, { dispatcher: agent })
    t.equal(blob.headers['x-mirror-cache'], outcome)
    t.ok(Buffer.from(await blob.body.arrayBuffer()).equals(bytes), `a blob, ${outcome}, whole over TLS`)
  }

  const shook = await handshake(mirror.url, { ca: s.ca.cert, maxVersion: 'TLSv1.2' })
  t.ok('socket' in shook && shook.socket.getProtocol() === 'TLSv1.2', 'TLS 1.2 is taken')
  if ('socket' in shook) shook.socket.destroy()
  // SECLEVEL=0 so that this client's OpenSSL offers TLS 1.1 at all: the refusal is the server's.
  const old = await handshake(mirror.url, { ca: s.ca.cert, minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' })
  t.ok('error' in old, `TLS 1.1 is refused (${'error' in old ? old.error.message : 'accepted'})`)
  const untrusted = await handshake(mirror.url)
  t.ok('error' in untrusted, 'a client without the CA does not trust it')
})

t.test('a renewed certificate is taken without a restart: new connections get it, the open one finishes', async t => {
  const s = await site(t)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tls: { cert: s.cert, key: s.key, reloadInterval: 100 } })
  const first = await handshake(mirror.url, { ca: s.ca.cert })
  if (!('peer' in first)) throw first.error
  first.socket.destroy()
  t.equal(first.peer.fingerprint256, fingerprintOf(s.served))

  // A response under way on a connection opened before the renewal.
  const bytes = randomBytes(512 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  const gate = fake.gateBlob(digest, 1024)
  const agent = new Agent({ connect: { ca: s.ca.cert }, connections: 1 })
  t.teardown(async () => await agent.close())
  const open = request(`${mirror.url}/v2/library/app/blobs/${digest}`, { dispatcher: agent })
  await gate.reached

  // As cert-manager and ACME clients do: new files renamed over the old ones.
  const renewed = await s.ca.issueServer('server-2')
  await copyFile(renewed.certPath, join(s.dir, 'tls.crt.new'))
  await copyFile(renewed.keyPath, join(s.dir, 'tls.key.new'))
  await rename(join(s.dir, 'tls.key.new'), s.key)
  await rename(join(s.dir, 'tls.crt.new'), s.cert)
  await until('the renewal to be taken', async () => {
    const now = await handshake(mirror.url, { ca: s.ca.cert })
    if ('socket' in now) now.socket.destroy()
    return 'peer' in now && now.peer.fingerprint256 === fingerprintOf(renewed)
  })
  t.pass('a new connection gets the renewed certificate')
  t.ok(mirror.logs.some(l => l.msg === 'TLS certificate reloaded'), 'the renewal is logged')

  gate.release()
  const res = await open
  t.equal(res.statusCode, 200)
  t.ok(Buffer.from(await res.body.arrayBuffer()).equals(bytes), 'the response under way on the old connection finishes whole')
})

t.test('a renewal seen half written keeps the certificate in use until the set is whole again', async t => {
  const s = await site(t)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tls: { cert: s.cert, key: s.key, reloadInterval: 100 } })
  const renewed = await s.ca.issueServer('server-2')
  await writeFile(s.cert, renewed.cert) // the key is still the old one
  await until('the mismatch to be logged', () => mirror.logs.some(l => l.level === 40 && l.key === 'tls.key'))
  const during = await handshake(mirror.url, { ca: s.ca.cert })
  if (!('peer' in during)) throw during.error
  during.socket.destroy()
  t.equal(during.peer.fingerprint256, fingerprintOf(s.served), 'the old certificate is still served, and works')

  await writeFile(s.key, renewed.key)
  await until('the whole set to be taken', async () => {
    const now = await handshake(mirror.url, { ca: s.ca.cert })
    if ('socket' in now) now.socket.destroy()
    return 'peer' in now && now.peer.fingerprint256 === fingerprintOf(renewed)
  })
  t.pass('once the key follows, the renewal is taken')
})

t.test('with a client CA, a client must present a certificate that CA signed', async t => {
  const s = await site(t)
  const clients = await makeCA(s.dir, 'clients-ca')
  const stranger = await makeCA(s.dir, 'other-ca')
  const good = await clients.issueClient('builder')
  const bad = await stranger.issueClient('intruder')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tls: { cert: s.cert, key: s.key, clientCA: clients.certPath } })

  const get = async (connect: Record<string, unknown>): Promise<number | Error> => {
    const agent = new Agent({ connect: { ca: s.ca.cert, ...connect } })
    try {
      const res = await request(`${mirror.url}/v2/`, { dispatcher: agent })
      await res.body.dump()
      return res.statusCode
    } catch (err) {
      return err as Error
    } finally {
      await agent.close()
    }
  }
  t.equal(await get({ cert: good.cert, key: good.key }), 200, 'a certificate the client CA signed is let in')
  t.type(await get({}), Error, 'no certificate: refused')
  t.type(await get({ cert: bad.cert, key: bad.key }), Error, 'a certificate another CA signed: refused')
  t.ok(mirror.logs.some(l => l.msg === 'TLS handshake refused' && l.address === '127.0.0.1'), 'a refused handshake is logged, with the address')
})

t.test('the metrics listener, on its own address, is served over TLS too', async t => {
  const s = await site(t)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tls: { cert: s.cert, key: s.key }, metrics: { listen: { host: '127.0.0.1', port: 0 } } })
  t.match(mirror.opsUrl, /^https:\/\//)
  const agent = new Agent({ connect: { ca: s.ca.cert } })
  t.teardown(async () => await agent.close())
  const res = await request(`${mirror.opsUrl ?? ''}/metrics`, { dispatcher: agent })
  t.equal(res.statusCode, 200)
  await res.body.dump()
})

t.test('bad TLS files stop the start with the key at fault named', async t => {
  const s = await site(t)
  const other = await s.ca.issueServer('other')
  const notPem = join(s.dir, 'not.pem')
  await writeFile(notPem, 'hello\n')
  const cases: Array<[string, { cert: string, key: string, clientCA?: string }, RegExp]> = [
    ['a missing certificate', { cert: join(s.dir, 'nope.crt'), key: s.key }, /tls\.cert: cannot read .*nope\.crt: ENOENT/],
    ['a file that is no certificate', { cert: notPem, key: s.key }, /tls\.cert: .*not\.pem holds no PEM certificate/],
    ['a key of another certificate', { cert: s.cert, key: other.keyPath }, /tls\.key: .*other\.key does not go with .*tls\.crt/],
    ['a client CA that is no certificate', { cert: s.cert, key: s.key, clientCA: notPem }, /tls\.clientCA: .*not\.pem holds no PEM certificate/]
  ]
  for (const [what, tls, message] of cases) {
    const err = await rejectedBy(t, startMirror(t, { upstreams: { 'docker.io': 'http://127.0.0.1:9' }, tls }), ConfigError, what)
    t.match(err?.message, message, what)
  }
})

t.test('a connection that never completes its handshake is closed after headersTimeout', async t => {
  const s = await site(t)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tls: { cert: s.cert, key: s.key }, limits: { headersTimeout: 1000 } })
  const silent = netConnect(hostPort(mirror.url))
  silent.on('error', () => {})
  const started = Date.now()
  await new Promise(resolve => silent.once('close', resolve))
  t.ok(Date.now() - started < 5_000, `closed after ${Date.now() - started} ms, having sent nothing`)
})

t.test('over TLS, connections past maxConnectionsPerClient from one address are closed before the handshake; another address completes one', async t => {
  const s = await site(t)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tls: { cert: s.cert, key: s.key }, limits: { headersTimeout: 60_000, maxConnectionsPerClient: 2 } })
  const opened = async (localAddress: string): Promise<Socket> => {
    const socket = netConnect({ ...hostPort(mirror.url), localAddress })
    socket.on('error', () => {})
    await once(socket, 'connect')
    socket.resume()
    return socket
  }
  // Silent: no ClientHello, so each would sit out the handshake timeout.
  const held = [await opened('127.0.0.2'), await opened('127.0.0.2')]
  t.teardown(() => { for (const socket of held) socket.destroy() })
  const refused = await opened('127.0.0.2')
  const started = Date.now()
  await Promise.race([once(refused, 'close'), new Promise(resolve => setTimeout(resolve, 3_000))])
  t.ok(refused.destroyed && Date.now() - started < 3_000, 'the third from the same address is closed at once')
  t.equal(held.filter(socket => socket.destroyed).length, 0, 'the two it holds stay')
  const other = await handshake(mirror.url, { ca: s.ca.cert, socket: netConnect({ ...hostPort(mirror.url), localAddress: '127.0.0.3' }) })
  t.ok('peer' in other, 'another address completes its handshake')
  if ('socket' in other) other.socket.destroy()
})
