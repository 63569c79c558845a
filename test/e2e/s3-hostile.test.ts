// A bucket that misbehaves: a proxy in front of a real radosgw answers 500s,
// 503 SlowDown, or nothing at all, as a store under load or in trouble does.
// What can be served from the mirror's own disk is served, the rest gets a
// fast 503 with the OCI envelope, never a hang past the configured timeout,
// and nothing is dropped from the cache for it; once the store answers again,
// everything is as before.

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { requireTools } from '../../harness/tools.js'
import { CephRgw } from '../../harness/ceph-rgw.js'
import { startFakeRegistry } from '../helpers/fake-registry.js'
import { readBody, startMirror } from '../helpers/mirror.js'

const skip = requireTools(t, ['ceph-mon', 'ceph-osd', 'radosgw', 'ceph', 'monmaptool', 'radosgw-admin'])

type Mode = 'pass' | 'error500' | 'slowdown' | 'hang'

/** Forwards to the gateway, or answers as a store in trouble would; counts what it refused. */
async function troubledStore (target: string): Promise<{ url: string, mode: Mode, refused: number, close: () => Promise<void> }> {
  const state = { mode: 'pass' as Mode, refused: 0 }
  const upstream = new URL(target)
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (state.mode !== 'pass') state.refused++
    if (state.mode === 'hang') return // the socket stays open, silent
    if (state.mode === 'error500' || state.mode === 'slowdown') {
      req.resume()
      const [status, code] = state.mode === 'error500' ? [500, 'InternalError'] : [503, 'SlowDown']
      const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>`
      res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) }).end(body)
      return
    }
    // The signature covers the Host header the mirror sent: it is passed on as it came.
    const forward = httpRequest({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, answer => {
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    forward.on('error', () => res.destroy())
    req.pipe(forward)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get mode () { return state.mode },
    set mode (m: Mode) { state.mode = m },
    get refused () { return state.refused },
    close: async () => {
      server.closeAllConnections()
      server.close()
      await once(server, 'close')
    }
  }
}

t.test('a bucket answering 500s, SlowDown or nothing: fast 503s for what only it has, the rest served, nothing lost', { skip }, async t => {
  const rgw = await CephRgw.start({ label: 'hostile' })
  t.teardown(async () => await rgw.close())
  const bucket = await rgw.createBucket('blobs')
  process.env.AWS_ACCESS_KEY_ID = rgw.accessKeyId
  process.env.AWS_SECRET_ACCESS_KEY = rgw.secretAccessKey
  const store = await troubledStore(rgw.endpoint)
  t.teardown(store.close)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const cached = randomBytes(400_000)
  const cachedDigest = fake.addBlob('library/app', cached)
  const mirror = await startMirror(t, {
    upstreams: { 'docker.io': fake.url },
    s3: { endpoint: store.url, bucket, forcePathStyle: true, timeout: '1s' },
    hooks: { uploadRetryDelays: [300, 300, 300, 300, 300, 300, 300, 300, 300, 300] }
  })
  const url = (digest: string): string => `${mirror.url}/v2/library/app/blobs/${digest}`
  const first = await readBody(await fetch(url(cachedDigest)))
  t.ok('bytes' in first && first.bytes.equals(cached), 'cached')
  for (let i = 0; i < 200 && mirror.index.getBlob(cachedDigest) === undefined; i++) await new Promise(resolve => setTimeout(resolve, 50))
  t.ok(mirror.index.getBlob(cachedDigest), 'and in the bucket')

  for (const mode of ['error500', 'slowdown', 'hang'] as const) {
    store.mode = mode
    const refusedBefore = store.refused
    const started = Date.now()
    const res = await fetch(url(cachedDigest))
    const took = Date.now() - started
    t.equal(res.status, 503, `${mode}: 503`)
    t.match(await res.json(), { errors: [{ code: 'UNAVAILABLE', message: /storage cannot be read now/ }] }, `${mode}: in the OCI envelope, naming no internals`)
    // The SDK tries three times, each bounded by the 1 s timeout when the store is silent.
    t.ok(took < 6000, `${mode}: answered in ${took} ms, no hang`)
    t.ok(store.refused > refusedBefore, `${mode}: the store was asked`)
    t.ok(mirror.index.getBlob(cachedDigest), `${mode}: the row is kept`)
    const head = await fetch(url(cachedDigest), { method: 'HEAD' })
    t.equal(head.status, 200, `${mode}: HEAD is answered from the index`)
  }

  // A cold blob while the store hangs: served from upstream, its upload retried until the store answers.
  const cold = randomBytes(300_000)
  const coldDigest = fake.addBlob('library/app', cold)
  const started = Date.now()
  const got = await readBody(await fetch(url(coldDigest)))
  t.ok('bytes' in got && got.bytes.equals(cold), `a cold blob is served from upstream meanwhile (${Date.now() - started} ms)`)
  t.equal(mirror.index.getBlob(coldDigest), undefined, 'not indexed while the bucket lacks it')
  const again = await readBody(await fetch(url(coldDigest)))
  t.ok('bytes' in again && again.bytes.equals(cold), 'and served again from the mirror\'s disk')
  t.equal(fake.hits(`/blobs/${coldDigest}`), 1, 'one upstream GET')

  store.mode = 'pass'
  for (let i = 0; i < 300 && mirror.index.getBlob(coldDigest) === undefined; i++) await new Promise(resolve => setTimeout(resolve, 50))
  t.ok(mirror.index.getBlob(coldDigest), 'the upload went through once the store answered')
  for (const [digest, bytes] of [[cachedDigest, cached], [coldDigest, cold]] as const) {
    const served = await readBody(await fetch(url(digest)))
    t.ok('bytes' in served && served.bytes.equals(bytes), 'served from the bucket again')
  }
  t.equal(fake.hits(`/blobs/${cachedDigest}`), 1, 'the blob cached before the trouble was never fetched again')
  const ready = await fetch(`${mirror.url}/readyz`)
  t.equal(ready.status, 200, '/readyz is ready again')
})
