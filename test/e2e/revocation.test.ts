// A right revoked upstream, in passthrough mode, against distribution's
// reference registry run with token authentication and the test token server
// (harness/token-server.ts), whose tokens last 300 s as Docker Hub's do. The
// mirror trusts the upstream's yes for clientAccessTtl (2 s here); after it,
// the next request must be checked with the upstream's token server again,
// with the caller's login, not with the upstream token the mirror fetched for
// that caller minutes before, which the registry would still take.

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { request } from 'undici'
import { requireTools } from '../../harness/tools.js'
import { ReferenceRegistry } from '../../harness/reference-registry.js'
import { TokenServer } from '../../harness/token-server.js'
import { Skopeo } from '../../harness/skopeo.js'
import { amd64, writeOciLayout } from '../../harness/oci-layout.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { startMirror } from '../helpers/mirror.js'

const skip = requireTools(t, ['openssl', 'docker-registry', 'skopeo'])

const ACCEPT = 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
const CLIENT_ACCESS_TTL = 2_000
const hex = (n: number): string => randomBytes(n).toString('hex')

interface Answer { status: number, code: string | undefined }

t.test('a right revoked upstream is refused from the first request after clientAccessTtl, checked with the token server and the caller\'s login', { skip }, async t => {
  const work = await makeTempDir('revocation')
  t.teardown(() => removeTempDir(work))
  const users = {
    admin: { password: `admin-${hex(12)}`, pull: ['**'], push: ['**'] },
    alice: { password: `alice-${hex(12)}`, pull: ['org/shared'] },
    bob: { password: `bob-${hex(12)}`, pull: ['org/shared'] }
  }
  const tokens = await TokenServer.start({ dir: work, users })
  t.teardown(() => tokens.close())
  const registry = await ReferenceRegistry.start({ label: 'ghcr.io', tokenAuth: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.certPath } })
  t.teardown(() => registry.close())
  const layout = await writeOciLayout(join(work, 'org-shared'), { tag: 'v1', seed: `org/shared-${hex(4)}`, platforms: [amd64], layerSizes: [32 * 1024, 4096] })
  await new Skopeo(work).push(layout.dir, 'v1', `${registry.host}/org/shared:v1`, { creds: { user: 'admin', password: users.admin.password } })
  const blobs = layout.images.flatMap(i => [i.config.digest, ...i.layers.map(l => l.digest)])

  const mirror = await startMirror(t, {
    upstreams: {
      'ghcr.io': { url: registry.url, authHosts: [new URL(tokens.realm).host], clientCredentials: 'passthrough', clientAccessTtl: CLIENT_ACCESS_TTL }
    },
    auth: { maxFailures: 1000 },
    metrics: { token: `metrics-${hex(8)}` }
  })
  const get = async (path: string, bearer: string): Promise<Answer> => {
    const res = await request(mirror.url + path, { headers: { accept: ACCEPT, authorization: bearer } })
    const body = await res.body.text()
    let code: string | undefined
    try {
      code = (JSON.parse(body) as { errors?: Array<{ code: string }> }).errors?.[0]?.code
    } catch {}
    return { status: res.statusCode, code }
  }
  const login = async (user: 'alice' | 'bob'): Promise<string> => {
    const basic = Buffer.from(`${user}:${users[user].password}`).toString('base64')
    const res = await request(`${mirror.url}/auth/token?service=registry-mirror`, { headers: { authorization: `Basic ${basic}` } })
    t.equal(res.statusCode, 200, `${user} logs in`)
    return `Bearer ${(await res.body.json() as { token: string }).token}`
  }
  /** The manifest by tag, then every blob, as a pull asks: the answers in that order. */
  const pull = async (bearer: string): Promise<Answer[]> => {
    const answers = [await get('/v2/org/shared/manifests/v1', bearer)]
    for (const digest of blobs) answers.push(await get(`/v2/org/shared/blobs/${digest}`, bearer))
    return answers
  }
  const bob = await login('bob')
  const alice = await login('alice')

  t.same((await pull(bob)).map(a => a.status), blobs.map(() => 200).concat(200), 'bob pulls org/shared')
  t.ok(tokens.from('bob').some(r => r.scopes.includes('repository:org/shared:pull') && r.granted.includes('org/shared:pull')), 'with a 300 s token the token server granted him')

  tokens.setUser('bob', { password: users.bob.password, pull: [] })
  const revoked = tokens.requests.length
  // Past clientAccessTtl from the check of his pull, which asked before the pull's first answer.
  await sleep(CLIENT_ACCESS_TTL + 500)

  const after = await pull(bob)
  t.same(after.map(a => `${a.status} ${a.code ?? ''}`), after.map(() => '403 DENIED'), 'the very next manifest request and every blob after it: 403 DENIED')
  const asked = tokens.requests.slice(revoked)
  t.ok(asked.some(r => r.user === 'bob' && r.scopes.includes('repository:org/shared:pull') && r.status === 200 && r.granted.length === 0),
    'the re-check asked the token server with bob\'s login, which granted nothing')
  t.notOk(asked.some(r => r.user === 'admin' || r.user === undefined), 'and with no other login')

  t.same((await pull(alice)).map(a => a.status), blobs.map(() => 200).concat(200), 'alice, whose right stands, still pulls org/shared')
})
