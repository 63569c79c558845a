// The mirror behind a real nginx (harness/nginx.ts), configured as the
// README's "Behind a load balancer" says, with limits.trustedProxies naming
// nginx's address. Two clients on distinct loopback addresses (127.0.0.2 and
// 127.0.0.3) reach the mirror only through nginx, so its TCP peer is always
// nginx; the mirror must still tell them apart: in its request log, in
// auth.anonymousNetworks, and in the per-client request limit. A client that
// writes X-Forwarded-For itself gains nothing: nginx appends the address it
// really came from.

import t from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { Agent, request } from 'undici'
import { requireTools } from '../../harness/tools.js'
import { Nginx } from '../../harness/nginx.js'
import { setUser } from '../../lib/auth/htpasswd.js'
import { startFakeRegistry } from '../helpers/fake-registry.js'
import { makeImage } from '../helpers/images.js'
import { startMirror } from '../helpers/mirror.js'

const skip = requireTools(t, ['nginx'])

const A = '127.0.0.2'
const B = '127.0.0.3'

t.test('behind nginx, two clients are two clients: the log, anonymousNetworks and the request limit tell them apart', { skip }, async t => {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-balancer-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const image = makeImage(fake, 'library/alpine', 'v1', { layers: [100] })
  const mirror = await startMirror(t, {
    upstreams: { 'docker.io': fake.url },
    // nginx connects from 127.0.0.1; the clients never do.
    limits: { trustedProxies: ['127.0.0.1/32'], maxRequestsPerClient: 1, maxQueuedPerClient: 0 },
    auth: { htpasswd, anonymousNetworks: [`${A}/32`] },
    access: { rules: [{ repositories: ['docker.io/library/*'], users: ['anonymous', '*'], pull: true }], default: 'deny' },
    metrics: { enabled: false }
  })
  const nginx = await Nginx.start({ upstream: mirror.url })
  t.teardown(async () => await nginx.close())
  // The harness's own readiness probes came from 127.0.0.1 (their log lines are written once each response closes).
  await new Promise(resolve => setTimeout(resolve, 100))
  const probes = mirror.logs.length
  const agents = new Map([A, B].map(address => [address, new Agent({ localAddress: address })]))
  t.teardown(async () => { for (const agent of agents.values()) await agent.close() })
  const get = async (client: string, path: string, headers: Record<string, string> = {}) => {
    const res = await request(nginx.url + path, { dispatcher: agents.get(client), headers })
    const text = await res.body.text()
    return { status: res.statusCode, headers: res.headers, text }
  }
  const manifest = '/v2/library/alpine/manifests/v1'
  const accept = { accept: image.mediaType }

  const a = await get(A, manifest, accept)
  t.equal(a.status, 200, `${A} is in anonymousNetworks: it pulls without a login`)
  const b = await get(B, manifest, accept)
  t.equal(b.status, 401, `${B} is not: it is asked to log in`)
  t.match(b.headers['www-authenticate'], new RegExp(`^Bearer realm="http://127\\.0\\.0\\.1:${nginx.port}/auth/token"`), 'at the token endpoint as the client reached it: through nginx')
  t.equal((await get(B, manifest, { ...accept, 'x-forwarded-for': A })).status, 401, `naming ${A} in its own X-Forwarded-For does not help ${B}`)
  const token = await get(B, '/auth/token?service=registry-mirror', { authorization: `Basic ${Buffer.from('alice:alice password').toString('base64')}` })
  t.equal(token.status, 200, `${B} logs in through nginx`)
  const bearer = (JSON.parse(token.text) as { token: string }).token
  t.equal((await get(B, manifest, { ...accept, authorization: `Bearer ${bearer}` })).status, 200, 'and pulls')

  // One request under way per client: A's blob is held upstream while B is served and A's next is refused.
  const digest = fake.addBlob('library/alpine', randomBytes(256 * 1024))
  const gate = fake.gateBlob(digest, 1024)
  const held = request(`${nginx.url}/v2/library/alpine/blobs/${digest}`, { dispatcher: agents.get(A) })
  const heldStatus = held.then(r => r.statusCode)
  // A refused request never reaches upstream: fail then, rather than wait for a gate nothing reaches.
  const reached = await Promise.race([gate.reached.then(() => true), heldStatus.then(() => false), new Promise<boolean>(resolve => setTimeout(() => resolve(false), 10_000).unref())])
  t.ok(reached, `${A}'s blob request is under way (answered ${await Promise.race([heldStatus, Promise.resolve('not yet')])})`)
  if (!reached) return
  t.equal((await get(B, '/v2/', { authorization: `Bearer ${bearer}` })).status, 200, `${B} is not held up by ${A}'s request under way`)
  t.equal((await get(A, manifest, accept)).status, 429, `${A} is held to its own limit`)
  gate.release()
  const blob = await held
  t.equal(blob.statusCode, 200)
  t.equal(Buffer.from(await blob.body.arrayBuffer()).length, 256 * 1024, 'the blob passes nginx whole')

  await new Promise(resolve => setTimeout(resolve, 100))
  const clients = new Set(mirror.logs.slice(probes).filter(l => l.msg === 'request').map(l => l.client))
  t.same([...clients].sort(), [A, B], 'the request log names each client, never nginx')
  t.match(mirror.logs.find(l => l.msg === 'anonymous pull refused: not from an allowed network'), { address: B }, 'and so do the auth log lines')
})
