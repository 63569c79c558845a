// Private images in passthrough mode (`clientCredentials: passthrough`),
// against distribution's reference registry run with token authentication
// and a token server of the test's own (harness/token-server.ts) that knows
// who may read what:
//   admin   pushes and pulls everything (the images are pushed with it)
//   alice   pulls org/private and org/shared
//   bob     pulls org/shared
//   carol   pulls org/private (logs in, then finds the upstream down)
//   anyone  pulls public/*
// Each caller gets only what the upstream lets it read, cached content
// included; cached content is fetched once and shared; the upstream's own
// access log and the token server count what reached them. The mirror has
// credentials of its own for the upstream (admin's), which must never be used
// for a client. No password may appear in the data directory or the logs.

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { request } from 'undici'
import { requireTools } from '../../harness/tools.js'
import { ReferenceRegistry } from '../../harness/reference-registry.js'
import { TokenServer } from '../../harness/token-server.js'
import { Skopeo } from '../../harness/skopeo.js'
import { amd64, writeOciLayout, type OciLayout } from '../../harness/oci-layout.js'
import { isBlobGet } from '../../harness/access-log.js'
import { Podman } from '../../harness/podman.js'
import { Containerd } from '../../harness/containerd.js'
import { missingRequirements } from '../../harness/tools.js'
import { Dockerd, writeDockerCerts, removeDockerCerts } from '../../harness/dockerd.js'
import { makeCA } from '../../harness/certs.js'
import { nonLoopbackAddress } from '../../harness/ports.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { filesUnder } from '../../harness/files.js'
import { startMirror } from '../helpers/mirror.js'

const skip = requireTools(t, ['openssl', 'docker-registry', 'skopeo'])

const ACCEPT = 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
const hex = (n: number): string => randomBytes(n).toString('hex')

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: Buffer }


function errorCode (answer: Answer): string | undefined {
  try {
    return (JSON.parse(answer.body.toString('utf8')) as { errors?: Array<{ code: string }> }).errors?.[0]?.code
  } catch {
    return undefined
  }
}

t.test('passthrough: each client reads only what the upstream lets its own login read, cached content included', { skip }, async t => {
  const work = await makeTempDir('passthrough')
  t.teardown(() => removeTempDir(work))
  const users = {
    admin: { password: `admin-${hex(12)}`, pull: ['**'], push: ['**'] },
    alice: { password: `alice-${hex(12)}`, pull: ['org/private', 'org/shared'] },
    bob: { password: `bob-${hex(12)}`, pull: ['org/shared'] },
    carol: { password: `carol-${hex(12)}`, pull: ['org/private'] }
  }
  const wrong = `wrong-${hex(12)}`
  const tokens = await TokenServer.start({ dir: work, users, anonymousPull: ['public/*'] })
  t.teardown(() => tokens.close())
  const registry = await ReferenceRegistry.start({ label: 'ghcr.io', tokenAuth: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.certPath } })
  t.teardown(() => registry.close())

  const skopeo = new Skopeo(work)
  const images: Record<string, OciLayout> = {}
  for (const repository of ['org/private', 'org/shared', 'public/app']) {
    const layout = await writeOciLayout(join(work, repository.replace('/', '-')), { tag: 'v1', seed: `${repository}-${hex(4)}`, platforms: [amd64], layerSizes: [64 * 1024, 4096] })
    await skopeo.push(layout.dir, 'v1', `${registry.host}/${repository}:v1`, { creds: { user: 'admin', password: users.admin.password } })
    images[repository] = layout
  }
  const image = (repository: string): OciLayout => {
    const layout = images[repository]
    if (layout === undefined) throw new Error(repository)
    return layout
  }
  const blobsOf = (repository: string): string[] => image(repository).images.flatMap(i => [i.config.digest, ...i.layers.map(l => l.digest)])

  let offset = 0
  const mirror = await startMirror(t, {
    upstreams: {
      // The token server is a host of its own: named in authHosts, as auth.docker.io is for Docker Hub.
      'ghcr.io': { url: registry.url, authHosts: [new URL(tokens.realm).host], clientCredentials: 'passthrough', clientAccessTtl: 60_000, username: 'admin', password: users.admin.password }
    },
    auth: { maxFailures: 1000 },
    metrics: { token: `metrics-${hex(8)}` },
    hooks: { now: () => Date.now() + offset }
  })
  const pushed = tokens.requests.length
  const base = mirror.url

  const get = async (path: string, authorization?: string, method: 'GET' | 'HEAD' = 'GET'): Promise<Answer> => {
    const res = await request(base + path, { method, headers: { accept: ACCEPT, ...(authorization === undefined ? {} : { authorization }) } })
    return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) }
  }
  const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
  /** The mirror's token for a login (or anonymous), as a client gets it after /v2/'s challenge. */
  const login = async (user?: string, password?: string): Promise<Answer & { bearer: string }> => {
    const answer = await get('/auth/token?service=registry-mirror', user === undefined ? undefined : basic(user, password ?? ''))
    const token = answer.status === 200 ? (JSON.parse(answer.body.toString('utf8')) as { token: string }).token : ''
    return { ...answer, bearer: `Bearer ${token}` }
  }
  /** Manifest by tag, then every blob: what a pull asks. */
  const pull = async (repository: string, bearer: string): Promise<number[]> => {
    const statuses = [(await get(`/v2/${repository}/manifests/v1`, bearer)).status]
    for (const digest of blobsOf(repository)) statuses.push((await get(`/v2/${repository}/blobs/${digest}`, bearer)).status)
    return statuses
  }

  await t.test('/v2/ challenges; a wrong password is refused at the token endpoint, checked with the upstream', async t => {
    const challenge = await get('/v2/')
    t.equal(challenge.status, 401)
    t.match(String(challenge.headers['www-authenticate']), /^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/auth\/token",service="registry-mirror"/)
    const refused = await login('alice', wrong)
    t.equal(refused.status, 401, 'a wrong password: 401')
    t.equal(errorCode(refused), 'UNAUTHORIZED')
    t.ok(tokens.requests.slice(pushed).some(r => r.user === 'alice' && r.status === 401), 'the upstream\'s token server was asked, and said no')
    t.equal((await login('mallory', 'x')).status, 401, 'a user the upstream does not know: 401')
  })

  const alice = await login('alice', users.alice.password)
  const bob = await login('bob', users.bob.password)
  const carol = await login('carol', users.carol.password)
  const anonymous = await login()
  t.equal(alice.status, 200, 'alice logs in')
  t.equal(bob.status, 200, 'bob logs in')
  t.equal(carol.status, 200, 'carol logs in')
  t.equal(anonymous.status, 200, 'an anonymous token')
  t.equal((await get('/v2/', alice.bearer)).status, 200, '/v2/ with alice\'s token')

  await t.test('alice pulls org/private: the digests the upstream serves, fetched with her own login', async t => {
    const mark = await registry.mark()
    const manifest = await get('/v2/org/private/manifests/v1', alice.bearer)
    t.equal(manifest.status, 200)
    t.equal(manifest.headers['docker-content-digest'], image('org/private').top.digest)
    t.same((await pull('org/private', alice.bearer)).filter(s => s !== 200), [], 'every blob')
    const gets = (await registry.requestsSince(mark)).filter(isBlobGet)
    t.equal(gets.length, blobsOf('org/private').length, 'each blob fetched from upstream once')
  })

  await t.test('bob may not read org/private, even what the cache holds: 403 DENIED, asked of the upstream with his login', async t => {
    const manifest = await get('/v2/org/private/manifests/v1', bob.bearer)
    t.equal(manifest.status, 403)
    t.equal(errorCode(manifest), 'DENIED')
    for (const digest of blobsOf('org/private')) t.equal((await get(`/v2/org/private/blobs/${digest}`, bob.bearer)).status, 403, `blob ${digest.slice(0, 19)}`)
    t.equal((await get('/v2/org/private/tags/list', bob.bearer)).status, 403, 'tags')
    t.equal((await get(`/v2/org/private/manifests/${image('org/private').top.digest}`, bob.bearer)).status, 403, 'by digest')
    t.ok(tokens.from('bob').some(r => r.scopes.includes('repository:org/private:pull') && r.granted.length === 0), 'the upstream granted bob nothing for org/private')
  })

  await t.test('anonymous callers are asked to log in for org/private, and read public/app', async t => {
    const refused = await get('/v2/org/private/manifests/v1', anonymous.bearer)
    t.equal(refused.status, 401)
    t.match(String(refused.headers['www-authenticate']), /scope="repository:org\/private:pull",error="insufficient_scope"/)
    t.equal((await get('/v2/org/private/manifests/v1')).status, 401, 'with no token at all')
    t.same((await pull('public/app', anonymous.bearer)).filter(s => s !== 200), [], 'public/app, anonymously')
  })

  await t.test('a layer of org/private is not readable through org/shared, which bob may read', async t => {
    const layer = blobsOf('org/private')[1] ?? ''
    const answer = await get(`/v2/org/shared/blobs/${layer}`, bob.bearer)
    t.equal(answer.status, 404, 'upstream has no such blob in org/shared')
    t.equal(errorCode(answer), 'BLOB_UNKNOWN')
  })

  await t.test('org/shared is cached once and shared by bob and alice; the second pull reaches upstream only for the check', async t => {
    const mark = await registry.mark()
    t.same((await pull('org/shared', bob.bearer)).filter(s => s !== 200), [], 'bob pulls')
    const afterBob = await registry.requestsSince(mark)
    t.equal(afterBob.filter(isBlobGet).length, blobsOf('org/shared').length, 'each blob once')
    const second = await registry.mark()
    const tokensBefore = tokens.requests.length
    t.same((await pull('org/shared', alice.bearer)).filter(s => s !== 200), [], 'alice pulls')
    const afterAlice = await registry.requestsSince(second)
    t.equal(afterAlice.filter(isBlobGet).length, 0, 'no blob from upstream: the cache')
    const asked = afterAlice.filter(r => r.status === 200).map(r => `${r.method} ${r.path}`)
    t.same(asked, ['HEAD /v2/org/shared/manifests/v1'], 'one check with alice\'s login; her blobs follow its yes')
    t.same(tokens.requests.slice(tokensBefore).map(r => r.user), ['alice'], 'one token, for alice')
  })

  await t.test('the catalog lists only what the upstream let the caller read, within clientAccessTtl', async t => {
    const list = async (bearer: string): Promise<string[]> => (JSON.parse((await get('/v2/_catalog', bearer)).body.toString('utf8')) as { repositories: string[] }).repositories
    t.same(await list(alice.bearer), ['ghcr.io/org/private', 'ghcr.io/org/shared'])
    t.same(await list(bob.bearer), ['ghcr.io/org/shared'])
  })

  await t.test('a yes is remembered for clientAccessTtl, then asked again', async t => {
    const mark = await registry.mark()
    t.equal((await get(`/v2/org/private/blobs/${blobsOf('org/private')[0] ?? ''}`, alice.bearer)).status, 200)
    t.same((await registry.requestsSince(mark)).length, 0, 'inside its time: nothing asked')
    offset += 61_000
    const again = await login('alice', users.alice.password)
    t.equal((await get(`/v2/org/private/blobs/${blobsOf('org/private')[0] ?? ''}`, again.bearer)).status, 200)
    const asked = (await registry.requestsSince(mark)).filter(r => r.status === 200).map(r => `${r.method} ${r.path}`)
    t.same(asked, [`HEAD /v2/org/private/blobs/${blobsOf('org/private')[0] ?? ''}`], 'past it: one HEAD')
    alice.bearer = again.bearer
  })

  await t.test('the mirror\'s own credentials for the upstream were never used for a client', async t => {
    t.same(tokens.requests.slice(pushed).filter(r => r.user === 'admin'), [], 'no token request as admin')
    t.ok(tokens.requests.slice(pushed).every(r => r.user === undefined || ['alice', 'bob', 'carol', 'mallory'].includes(r.user)))
  })

  await t.test('a real client: skopeo logs in with --src-creds and copies what its login may read', async t => {
    const location = `${base.replace(/^http:\/\//, '')}`
    const dir = join(work, 'skopeo-alice')
    const { digest } = await skopeo.pullToDir(`${location}/org/private:v1`, dir, { creds: { user: 'alice', password: users.alice.password } })
    t.equal(digest, image('org/private').top.digest, 'alice gets the upstream\'s digest')
    await t.rejects(skopeo.pullToDir(`${location}/org/private:v1`, join(work, 'skopeo-bob'), { creds: { user: 'bob', password: users.bob.password } }), /denied|403/i, 'bob is refused')
    await t.rejects(skopeo.pullToDir(`${location}/org/private:v1`, join(work, 'skopeo-anon')), /unauthorized|401|denied/i, 'anonymous is refused')
  })

  const daemons = missingRequirements(['podman', 'containerd', 'ctr'], { root: true })
  const daemonSkip = daemons.length === 0 ? false : `needs ${daemons.join(', ')}`

  await t.test('podman logs in to the mirror with its upstream login and pulls through a path-prefix mirror location', { skip: daemonSkip }, async t => {
    const host = base.replace(/^http:\/\//, '')
    const podman = await Podman.create([{ registry: 'ghcr.io', location: `${host}/ghcr.io` }])
    t.teardown(() => podman.close())
    await podman.podman(['login', '--authfile', podman.authFile, '--tls-verify=false', '--username', 'alice', '--password-stdin', host], 60_000, { input: users.alice.password, secrets: [users.alice.password] })
    await podman.pull('ghcr.io/org/private:v1')
    t.ok((await podman.digestsOf('ghcr.io/org/private:v1')).includes(image('org/private').top.digest), 'alice\'s pull has the upstream\'s digest')
    await podman.podman(['logout', '--authfile', podman.authFile, host], 60_000)
    await podman.podman(['login', '--authfile', podman.authFile, '--tls-verify=false', '--username', 'bob', '--password-stdin', host], 60_000, { input: users.bob.password, secrets: [users.bob.password] })
    await podman.remove('ghcr.io/org/private:v1')
    await t.rejects(podman.pull('ghcr.io/org/private:v1'), /denied|403|unauthorized/i, 'bob is refused, though the mirror has the image')
  })

  await t.test('containerd: ctr --user pulls with its upstream login through hosts.toml (?ns=ghcr.io)', { skip: daemonSkip }, async t => {
    const containerd = await Containerd.start()
    t.teardown(() => containerd.close())
    await containerd.addHost({ registry: 'ghcr.io', host: base })
    const pulled = await containerd.pull('ghcr.io/org/shared:v1', { user: { name: 'bob', password: users.bob.password } })
    t.equal(pulled.digest, image('org/shared').top.digest, 'bob pulls org/shared, which he may read')
    await t.rejects(containerd.pull('ghcr.io/org/private:v1', { user: { name: 'bob', password: users.bob.password } }), /denied|403|unauthorized|401/i, 'and not org/private')
  })

  const address = nonLoopbackAddress()
  const dockerSkip = missingRequirements(['dockerd', 'docker'], { root: true }).length > 0
    ? 'needs dockerd and docker, as root'
    : address === undefined ? 'no IPv4 address outside 127.0.0.0/8: dockerd would take the mirror for insecure and send no credentials' : false

  await t.test('docker login to the mirror\'s host with the upstream login, then docker pull HOST:PORT/ghcr.io/...: over TLS, as docker sends logins', { skip: dockerSkip }, async t => {
    const ca = await makeCA(work, 'ca')
    const cert = await ca.issueServer('mirror', [address ?? '127.0.0.1'])
    const secure = await startMirror(t, {
      upstreams: { 'ghcr.io': { url: registry.url, authHosts: [new URL(tokens.realm).host], clientCredentials: 'passthrough' } },
      listen: `${address ?? '127.0.0.1'}:0`,
      tls: { cert: cert.certPath, key: cert.keyPath },
      auth: { maxFailures: 1000 },
      metrics: { token: `metrics-${hex(8)}` }
    })
    const host = new URL(secure.url).host
    await writeDockerCerts(host, { ca: ca.cert })
    t.teardown(() => removeDockerCerts(host))
    const dockerd = await Dockerd.start()
    t.teardown(() => dockerd.close())
    await t.rejects(dockerd.login(host, 'alice', wrong), /401|unauthorized/i, 'a wrong password: docker login fails')
    await dockerd.login(host, 'alice', users.alice.password)
    await dockerd.pull(`${host}/ghcr.io/org/private:v1`)
    t.ok((await dockerd.digestsOf(`${host}/ghcr.io/org/private:v1`)).includes(image('org/private').top.digest), 'alice\'s pull has the upstream\'s digest')
    await dockerd.logout(host)
    await dockerd.login(host, 'bob', users.bob.password)
    await t.rejects(dockerd.pull(`${host}/ghcr.io/org/private:v1`), /denied|403/i, 'bob is refused')
    const text = secure.logText()
    for (const password of [users.alice.password, users.bob.password, wrong]) t.notOk(text.includes(password), 'no password in this mirror\'s logs')
  })

  await t.test('with the upstream down, a yes inside its time is honoured and new checks are refused, saying so', async t => {
    await registry.stop()
    t.equal((await get(`/v2/org/private/manifests/${image('org/private').top.digest}`, alice.bearer)).status, 200, 'alice, inside her time: from the cache')
    const refused = await get(`/v2/org/private/manifests/${image('org/private').top.digest}`, carol.bearer)
    t.equal(refused.status, 503, 'carol, never checked: 503')
    t.equal(errorCode(refused), 'UNAVAILABLE')
    t.match(refused.body.toString('utf8'), /for upstream ghcr\.io to say, and it cannot be asked now/)
    await registry.start()
  })

  await t.test('no password is on disk or in the logs', async t => {
    await mirror.close()
    const secrets = Object.entries(users).flatMap(([user, { password }]) => [password, Buffer.from(`${user}:${password}`).toString('base64')])
    secrets.push(wrong)
    const text = mirror.logText()
    for (const secret of secrets) t.notOk(text.includes(secret), 'not in the logs')
    for (const file of await filesUnder(mirror.storage)) {
      const bytes = await readFile(file)
      for (const secret of secrets) t.notOk(bytes.includes(secret), `not in ${file.slice(mirror.storage.length)}`)
    }
    t.ok(text.includes('"upstreamUser":"alice"'), 'requests are logged with the upstream user name')
  })
})
