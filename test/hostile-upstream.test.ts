// An upstream that tries to make the mirror send its credentials, or its
// requests, somewhere else: token realms and redirects on other hosts or on
// link-local addresses, and token answers without end. A second listener
// stands for "another host" and records whatever reaches it.

import t from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { guardedLookup, isLinkLocal } from '../lib/upstream/address-guard.js'
import { startMirror, type Teardown } from './helpers/mirror.js'
import { sample } from './helpers/prometheus.js'

interface Listener {
  readonly url: string
  readonly host: string
  /** Every request that reached it: method, path, Authorization. */
  readonly seen: Array<{ method: string, path: string, authorization: string | undefined }>
  handle: (req: IncomingMessage, res: ServerResponse) => void
}

async function listener (t: Teardown): Promise<Listener> {
  const self: Listener = {
    url: '',
    host: '',
    seen: [],
    handle: (_req, res) => { res.writeHead(404).end() }
  }
  const server: Server = createServer((req, res) => {
    self.seen.push({ method: req.method ?? '', path: req.url ?? '', authorization: req.headers.authorization })
    self.handle(req, res)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => { server.closeAllConnections(); server.close(); await once(server, 'close') })
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`
  return Object.assign(self, { url: `http://${host}`, host })
}

const challenge = (res: ServerResponse, realm: string): void => {
  res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm}",service="registry",scope="repository:library/app:pull"`, 'content-type': 'application/json' })
  res.end('{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}')
}

async function get (url: string): Promise<{ status: number, body: { errors?: Array<{ code: string, message: string, detail: unknown }> } }> {
  const res = await request(url)
  const text = await res.body.text()
  return { status: res.statusCode, body: JSON.parse(text === '' ? '{}' : text) as { errors?: Array<{ code: string, message: string, detail: unknown }> } }
}

async function refusals (mirrorUrl: string, reason: string): Promise<number | undefined> {
  return sample(await (await fetch(`${mirrorUrl}/metrics`)).text(), 'registry_mirror_upstream_refused_total', { upstream: 'docker.io', reason })
}

t.test('a token realm on another host: no request goes there, the credentials stay home, the client gets 503 naming it', async t => {
  const upstream = await listener(t)
  const other = await listener(t)
  upstream.handle = (_req, res) => challenge(res, `${other.url}/token`)
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: upstream.url, username: 'alice', password: 's3cret' } } })
  const answer = await get(`${mirror.url}/v2/library/app/manifests/v1`)
  t.equal(answer.status, 503)
  t.equal(answer.body.errors?.[0]?.code, 'UNAVAILABLE')
  t.match(answer.body.errors?.[0]?.message, `named a token realm on ${other.host}, which is not one of its hosts (upstreams.docker.io.authHosts)`)
  t.same(other.seen, [], 'the other host never heard from the mirror')
  for (const r of upstream.seen) t.equal(r.authorization, undefined, 'nor did the upstream get the credentials')
  t.ok(mirror.logs.some(l => l.level === 40 && typeof l.msg === 'string' && l.msg.includes('token realm on')), 'logged')
  t.equal(await refusals(mirror.url, 'realm-host'), 1, 'counted')
})

t.test('a token realm on a host named in authHosts is used, with the credentials', async t => {
  const upstream = await listener(t)
  const tokens = await listener(t)
  upstream.handle = (req, res) => {
    if (req.headers.authorization === 'Bearer good') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no"}]}')
      return
    }
    challenge(res, `${tokens.url}/token`)
  }
  tokens.handle = (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }).end('{"token":"good"}') }
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: upstream.url, username: 'alice', password: 's3cret', authHosts: [tokens.host] } } })
  const answer = await get(`${mirror.url}/v2/library/app/manifests/v1`)
  t.equal(answer.status, 404, 'the upstream answered with the token')
  t.equal(tokens.seen.length, 1)
  t.equal(tokens.seen[0]?.authorization, `Basic ${Buffer.from('alice:s3cret').toString('base64')}`, 'over http, as the upstream itself is configured')
})

t.test('a token realm or a redirect on a link-local address is refused without a request', async t => {
  const upstream = await listener(t)
  upstream.handle = (req, res) => {
    if (req.url?.includes('/manifests/') === true) challenge(res, 'http://169.254.169.254/latest/meta-data/iam')
    else res.writeHead(307, { location: 'http://[fe80::1]/steal' }).end()
  }
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: upstream.url, connectTimeout: 30_000 } } })
  const realm = await get(`${mirror.url}/v2/library/app/manifests/v1`)
  t.equal(realm.status, 503)
  t.match(realm.body.errors?.[0]?.message, 'token realm on a link-local address')
  const blob = await get(`${mirror.url}/v2/library/app/blobs/sha256:${'a'.repeat(64)}`)
  t.equal(blob.status, 503, 'blobs may go to any CDN, but never to a link-local address')
  t.match(blob.body.errors?.[0]?.message, 'redirected a blob request to a link-local address')
  t.equal(await refusals(mirror.url, 'link-local'), 2)
})

t.test('a manifest, tag list or referrers request redirected to another host is refused, and nothing is cached', async t => {
  const upstream = await listener(t)
  const other = await listener(t)
  const json = '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}'
  other.handle = (_req, res) => { res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' }).end(json) }
  upstream.handle = (req, res) => { res.writeHead(302, { location: `${other.url}/internal${req.url ?? ''}` }).end() }
  const mirror = await startMirror(t, { upstreams: { 'docker.io': upstream.url } })
  for (const path of ['/v2/library/app/manifests/v1', '/v2/library/app/tags/list', `/v2/library/app/referrers/sha256:${'b'.repeat(64)}`]) {
    const answer = await get(mirror.url + path)
    t.equal(answer.status, 503, path)
    t.match(answer.body.errors?.[0]?.message, `to ${other.host}, which is not one of its hosts`)
  }
  t.same(other.seen, [], 'nothing reached the other host')
  t.equal(mirror.index.getTag('docker.io/library/app', 'v1'), undefined, 'nothing cached')
  t.equal(await refusals(mirror.url, 'redirect-host'), 3)
})

t.test('a tag list that is not one is refused as the upstream\'s fault', async t => {
  const upstream = await listener(t)
  upstream.handle = (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }).end('{"instance-id":"i-0abc","token":"s3cret"}') }
  const mirror = await startMirror(t, { upstreams: { 'docker.io': upstream.url } })
  const answer = await get(`${mirror.url}/v2/library/app/tags/list`)
  t.equal(answer.status, 503)
  t.match(answer.body.errors?.[0]?.message, 'not a tag list')
})

t.test('a token answer without end is cut at its bound, and the client gets 503', async t => {
  const upstream = await listener(t)
  const tokens = await listener(t)
  upstream.handle = (_req, res) => challenge(res, `${tokens.url}/token`)
  let sent = 0
  let cut = false
  tokens.handle = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write('{"token":"')
    const chunk = Buffer.alloc(64 * 1024, 'x')
    const more = (): void => {
      // 400 MiB, unless the mirror stops reading first.
      while (sent < 400 * 1024 * 1024 && !res.destroyed) {
        sent += chunk.length
        if (!res.write(chunk)) {
          res.once('drain', more)
          return
        }
      }
      if (!res.destroyed) res.end('"}')
    }
    res.once('close', () => { cut = !res.writableFinished })
    more()
  }
  const mirror = await startMirror(t, { upstreams: { 'docker.io': { url: upstream.url, authHosts: [tokens.host] } } })
  const answer = await get(`${mirror.url}/v2/library/app/manifests/v1`)
  t.equal(answer.status, 503)
  t.match(answer.body.errors?.[0]?.message, 'token service sent more than')
  for (let i = 0; i < 100 && !cut; i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.ok(cut, 'the mirror stopped reading and closed the connection')
  t.ok(sent < 64 * 1024 * 1024, `only a bounded part was sent before the cut (${sent} bytes)`)
})

t.test('link-local addresses, and a lookup that leaves them out', async t => {
  for (const a of ['169.254.169.254', '169.254.0.1', 'fe80::1', '[fe80::abcd]', 'FE80::1', 'febf::1', '::ffff:169.254.169.254']) t.ok(isLinkLocal(a), a)
  for (const a of ['127.0.0.1', '10.0.0.1', '169.253.1.1', 'fec0::1', '::1', 'registry-1.docker.io', '::ffff:127.0.0.1']) t.notOk(isLinkLocal(a), a)
  const lookup = async (host: string, all: boolean): Promise<{ err: NodeJS.ErrnoException | null, address: unknown }> =>
    await new Promise(resolve => guardedLookup(host, all ? { all: true } : {}, (err, address) => resolve({ err, address })))
  const meta = await lookup('169.254.169.254', false)
  t.equal(meta.err?.code, 'ELINKLOCAL')
  t.equal((await lookup('169.254.169.254', true)).err?.code, 'ELINKLOCAL')
  const local = await lookup('127.0.0.1', false)
  t.equal(local.err, null)
  t.equal(local.address, '127.0.0.1')
  const every = await lookup('127.0.0.1', true)
  t.same(every.address, [{ address: '127.0.0.1', family: 4 }])
})
