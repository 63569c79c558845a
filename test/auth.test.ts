// Client authentication and access rules: users from an htpasswd file (made
// with the mirror's own `htpasswd` command code), Basic credentials checked
// and remembered, failures bounded per address, and rules that decide who
// may pull which repository, applied to manifests, blobs, tag lists,
// referrers and the catalog, with the OCI error envelope.

import t from 'tap'
import { copyFile, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { HtpasswdFile, parseHtpasswd, setUser } from '../lib/auth/htpasswd.js'
import { ConfigError } from '../lib/errors.js'
import { createLogger } from '../lib/log.js'
import { runCli } from './helpers/child-mirror.js'
import { rejectedBy } from './helpers/throws.js'
import { AccessRules } from '../lib/auth/access-rules.js'
import { TokenIssuer } from '../lib/auth/tokens.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'
import type { YamlAccess, YamlAuth } from './helpers/config.js'
import { sample } from './helpers/prometheus.js'

function basic (user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

const ALICE = basic('alice', 'alice password')
const BOB = basic('bob', 'bob password')

/** Only public Docker Hub images for anonymous callers; acme's for alice; nothing else for anyone. */
const RULES: YamlAccess = {
  rules: [
    { repositories: ['docker.io/library/*'], users: ['anonymous', '*'], pull: true },
    { repositories: ['ghcr.io/acme/**'], users: ['alice'], pull: true }
  ],
  default: 'deny'
}

async function scene (t: { teardown: (fn: () => unknown) => void }, auth: YamlAuth = {}, access: YamlAccess = RULES) {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-auth-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  await setUser(htpasswd, 'bob', 'bob password')
  const hub = await startFakeRegistry()
  const ghcr = await startFakeRegistry()
  t.teardown(async () => { await hub.close(); await ghcr.close() })
  const mirror = await startMirror(t, {
    upstreams: { 'docker.io': hub.url, 'ghcr.io': ghcr.url },
    auth: { htpasswd, ...auth },
    access,
    metrics: { token: 'metrics-token' }
  })
  const get = async (path: string, authorization?: string) => {
    const res = await request(mirror.url + path, { headers: authorization === undefined ? {} : { authorization } })
    const text = await res.body.text()
    return { status: res.statusCode, headers: res.headers, text, json: (): unknown => JSON.parse(text) }
  }
  return { dir, htpasswd, hub, ghcr, mirror, get }
}

t.test('access rules: patterns, users, anonymous, order and the default', async t => {
  const rules = new AccessRules({
    rules: [
      { repositories: ['ghcr.io/acme/secret'], users: ['*'], pull: false },
      { repositories: ['docker.io/library/*', 'quay.io/*/tools'], users: ['anonymous', '*'], pull: true },
      { repositories: ['ghcr.io/acme/**'], users: ['alice'], pull: true }
    ],
    defaultPull: false
  })
  t.ok(rules.mayPull(undefined, 'docker.io/library/alpine'), 'anonymous, by a rule naming anonymous')
  t.notOk(rules.mayPull(undefined, 'docker.io/library/sub/alpine'), '* stays within one segment')
  t.ok(rules.mayPull('bob', 'quay.io/team/tools'))
  t.ok(rules.mayPull('alice', 'ghcr.io/acme/app'))
  t.ok(rules.mayPull('alice', 'ghcr.io/acme/a/b/c'), '** spans segments')
  t.notOk(rules.mayPull('alice', 'ghcr.io/acme'), '** is one segment or more')
  t.notOk(rules.mayPull('alice', 'ghcr.io/acme/secret'), 'the first matching rule decides')
  t.notOk(rules.mayPull('bob', 'ghcr.io/acme/app'), 'a user the rule does not name')
  t.notOk(rules.mayPull(undefined, 'ghcr.io/acme/app'), '* is any authenticated user, never anonymous')
  t.notOk(rules.mayPull('alice', 'docker.io/bitnami/redis'), 'no rule: the default')
  t.ok(new AccessRules({ rules: [], defaultPull: true }).mayPull(undefined, 'x/y'), 'default pull')
})

t.test('/v2/ challenges callers without credentials, takes the right ones, refuses wrong ones', async t => {
  const { mirror, get } = await scene(t)
  const anonymous = await get('/v2/')
  t.equal(anonymous.status, 401)
  t.equal(anonymous.headers['www-authenticate'], `Bearer realm="${mirror.url}/auth/token",service="registry-mirror"`, 'the token flow, at the mirror\'s own endpoint')
  t.equal(anonymous.headers['docker-distribution-api-version'], 'registry/2.0')
  t.match(anonymous.json(), { errors: [{ code: 'UNAUTHORIZED' }] })
  t.equal((await get('/v2/', ALICE)).status, 200)
  const wrong = await get('/v2/', basic('alice', 'not it'))
  t.equal(wrong.status, 401)
  t.match(wrong.headers['www-authenticate'], /^Bearer realm=/)
  t.equal((await get('/v2/', basic('mallory', 'alice password'))).status, 401, 'an unknown user')
  t.equal((await get('/v2/', 'Digest abc')).status, 401, 'a scheme the mirror does not take')
  t.equal((await get('/v2/', 'Basic !!!')).status, 401, 'unreadable credentials')
  const failed = mirror.logs.filter(l => l.msg === 'login failed')
  t.ok(failed.some(l => l.user === 'alice' && l.address === '127.0.0.1' && l.reason === 'bad-credentials'), 'a failure is logged with user and address')
  t.notMatch(mirror.logText(), /not it|alice password/, 'no password in the logs')
  const metrics = (await get('/metrics', 'Bearer metrics-token')).text
  t.equal(sample(metrics, 'registry_mirror_auth_failures_total', { reason: 'bad-credentials' }), 2)
  t.equal(sample(metrics, 'registry_mirror_auth_failures_total', { reason: 'unsupported-scheme' }), 1)
  t.equal(sample(metrics, 'registry_mirror_auth_failures_total', { reason: 'malformed' }), 1)
})

t.test('the token flow: a token for a login, an anonymous one without, each pulling what its caller may', async t => {
  const { hub, ghcr, mirror, get } = await scene(t, { tokenTtl: '10s' })
  makeImage(hub, 'library/alpine', 'v1', { layers: [100] })
  makeImage(ghcr, 'acme/app', 'v1', { layers: [100] })
  const token = async (authorization?: string): Promise<{ status: number, token: string, body: Record<string, unknown> }> => {
    const res = await get('/auth/token?service=registry-mirror&scope=repository:ghcr.io/acme/app:pull', authorization)
    const body = res.status === 200 ? res.json() as Record<string, unknown> : {}
    return { status: res.status, token: typeof body.token === 'string' ? body.token : '', body }
  }
  const alice = await token(ALICE)
  t.equal(alice.status, 200)
  t.match(alice.body, { access_token: alice.token, expires_in: 10, issued_at: /^\d{4}-/ })
  t.equal((await get('/v2/', `Bearer ${alice.token}`)).status, 200, 'docker login: the token takes /v2/')
  t.equal((await get('/v2/ghcr.io/acme/app/manifests/v1', `Bearer ${alice.token}`)).status, 200, 'alice\'s token pulls what alice may')

  const anonymous = await token()
  t.equal(anonymous.status, 200, 'no credentials: an anonymous token')
  t.equal((await token('Basic Og==')).status, 200, 'an empty Basic pair (containers/image without a login) is anonymous too')
  t.equal((await get('/v2/library/alpine/manifests/v1', `Bearer ${anonymous.token}`)).status, 200, 'an anonymous token pulls what anonymous callers may')
  t.equal((await get('/v2/library/alpine/manifests/v1', 'Basic Og==')).status, 200)
  const short = await get('/v2/ghcr.io/acme/app/manifests/v1', `Bearer ${anonymous.token}`)
  t.equal(short.status, 401, 'and no more: log in')
  t.match(short.headers['www-authenticate'], /scope="repository:ghcr\.io\/acme\/app:pull",error="insufficient_scope"$/)

  const wrong = await token(basic('alice', 'nope'))
  t.equal(wrong.status, 401, 'a wrong password gets no token')
  t.equal(wrong.token, '')
  const tampered = alice.token.replace(/^./, c => c === 'e' ? 'f' : 'e')
  const bad = await get('/v2/ghcr.io/acme/app/manifests/v1', `Bearer ${tampered}`)
  t.equal(bad.status, 401, 'a token not signed by this mirror')
  t.match(bad.headers['www-authenticate'], /error="invalid_token"/)
  const other = await scene(t)
  t.equal((await other.get('/v2/', `Bearer ${alice.token}`)).status, 401, 'another mirror\'s key: not taken')
  t.notMatch(mirror.logText(), new RegExp(alice.token.slice(-20).replace(/[-]/g, '\\-')), 'tokens are not logged')
  const metrics = (await get('/metrics', 'Bearer metrics-token')).text
  t.equal(sample(metrics, 'registry_mirror_auth_failures_total', { reason: 'invalid-token' }), 1)
})

t.test('manifests, blobs, tags and referrers follow the rules: 401 to log in, 403 for a user not allowed', async t => {
  const { hub, ghcr, mirror, get } = await scene(t)
  const pub = makeImage(hub, 'library/alpine', 'v1', { layers: [1000] })
  const priv = makeImage(ghcr, 'acme/app', 'v1', { layers: [2000] })
  const paths = (repo: string, img: typeof pub): string[] => [
    `/v2/${repo}/manifests/v1`,
    `/v2/${repo}/manifests/${img.manifestDigest}`,
    `/v2/${repo}/blobs/${img.layerDigests[0] ?? ''}`,
    `/v2/${repo}/tags/list`,
    `/v2/${repo}/referrers/${img.manifestDigest}`
  ]
  for (const path of paths('library/alpine', pub)) {
    t.equal((await get(path)).status, 200, `anonymous: ${path}`)
  }
  for (const path of paths('ghcr.io/acme/app', priv)) {
    const anonymous = await get(path)
    t.equal(anonymous.status, 401, `anonymous is asked to log in: ${path}`)
    t.equal(anonymous.headers['www-authenticate'], `Bearer realm="${mirror.url}/auth/token",service="registry-mirror",scope="repository:ghcr.io/acme/app:pull"`)
    t.match(anonymous.json(), { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required to pull ghcr.io/acme/app' }] })
    const bob = await get(path, BOB)
    t.equal(bob.status, 403, `bob is refused: ${path}`)
    t.match(bob.json(), { errors: [{ code: 'DENIED', message: 'bob may not pull ghcr.io/acme/app' }] })
    t.equal((await get(path, ALICE)).status, 200, `alice: ${path}`)
  }
  t.ok(mirror.logs.some(l => l.msg === 'pull denied by the access rules' && l.user === 'bob' && l.repository === 'ghcr.io/acme/app' && l.address === '127.0.0.1'), 'a denial is logged with user, address and repository')
  t.ok(mirror.logs.some(l => l.msg === 'request' && l.user === 'alice'), 'request lines name the user')
  const metrics = (await get('/metrics', 'Bearer metrics-token')).text
  t.equal(sample(metrics, 'registry_mirror_access_denied_total', { reason: 'not-allowed' }), 5)
  t.equal(sample(metrics, 'registry_mirror_access_denied_total', { reason: 'login-required' }), 5)
})

t.test('a private layer cached for alice cannot be read through a name anonymous callers may read', async t => {
  const { hub, ghcr, get } = await scene(t)
  makeImage(hub, 'library/alpine', 'v1', { layers: [1000] })
  const priv = makeImage(ghcr, 'acme/app', 'v1', { layers: [3000] })
  const layer = priv.layerDigests[0] ?? ''
  t.equal((await get(`/v2/ghcr.io/acme/app/blobs/${layer}`, ALICE)).status, 200, 'cached for alice')
  const before = ghcr.requests.length
  const through = await get(`/v2/library/alpine/blobs/${layer}`)
  t.equal(through.status, 404, 'under a public name it is unknown: the layer does not belong there')
  t.notOk(through.text.includes((priv.layers[0] ?? Buffer.alloc(0)).toString('latin1').slice(0, 50)), 'no byte of it')
  t.equal(ghcr.requests.length, before, 'and ghcr.io was not asked')
  const hub404 = hub.requests.filter(r => r.path.includes(layer))
  t.ok(hub404.length > 0, 'docker.io was asked whether library/alpine has it, and said no')
})

t.test('the catalog lists only what the caller may read', async t => {
  const { hub, ghcr, get } = await scene(t)
  makeImage(hub, 'library/alpine', 'v1', { layers: [100] })
  makeImage(ghcr, 'acme/app', 'v1', { layers: [100] })
  await get('/v2/library/alpine/manifests/v1')
  await get('/v2/ghcr.io/acme/app/manifests/v1', ALICE)
  t.same((await get('/v2/_catalog')).json(), { repositories: ['docker.io/library/alpine'] }, 'anonymous')
  t.same((await get('/v2/_catalog', BOB)).json(), { repositories: ['docker.io/library/alpine'] }, 'bob')
  t.same((await get('/v2/_catalog', ALICE)).json(), { repositories: ['docker.io/library/alpine', 'ghcr.io/acme/app'] }, 'alice')
})

t.test('anonymous access limited to client networks', async t => {
  const { hub, get } = await scene(t, { anonymousNetworks: ['10.0.0.0/8', 'fd00::/8'] })
  makeImage(hub, 'library/alpine', 'v1', { layers: [100] })
  const refused = await get('/v2/library/alpine/manifests/v1')
  t.equal(refused.status, 401, 'anonymous from 127.0.0.1 is asked to log in, even for a public image')
  t.match(refused.json(), { errors: [{ code: 'UNAUTHORIZED', message: 'log in: anonymous access is not allowed from this network' }] })
  t.equal((await get('/v2/_catalog')).status, 401)
  t.equal((await get('/v2/library/alpine/manifests/v1', BOB)).status, 200, 'a user is let in from anywhere')

  const local = await scene(t, { anonymousNetworks: ['127.0.0.0/8'] })
  makeImage(local.hub, 'library/alpine', 'v1', { layers: [100] })
  t.equal((await local.get('/v2/library/alpine/manifests/v1')).status, 200, 'from an allowed network, anonymous pulls')
})

t.test('failed logins are bounded per address; the right password waits out the window too', async t => {
  const { get, mirror } = await scene(t, { maxFailures: 3, failureWindow: '2s' })
  for (let i = 0; i < 3; i++) t.equal((await get('/v2/', basic('alice', `guess ${i}`))).status, 401)
  const limited = await get('/v2/', ALICE)
  t.equal(limited.status, 429, 'past maxFailures, nothing is checked')
  t.match(limited.json(), { errors: [{ code: 'TOOMANYREQUESTS' }] })
  t.match(limited.headers['retry-after'], /^[12]$/)
  t.equal((await get('/v2/library/alpine/tags/list')).status, 404, 'anonymous requests are not held up by it')
  await new Promise(resolve => setTimeout(resolve, 2100))
  t.equal((await get('/v2/', ALICE)).status, 200, 'after the window, the right password works again')
  const metrics = (await get('/metrics', 'Bearer metrics-token')).text
  t.equal(sample(metrics, 'registry_mirror_auth_failures_total', { reason: 'rate-limited' }), 1)
  t.ok(mirror.logs.filter(l => l.msg === 'login failed').length >= 3)
})

t.test('the htpasswd file is read again when it changes: a new user logs in, a changed password is refused at once', async t => {
  const { htpasswd, get, mirror } = await scene(t, { reloadInterval: '100ms' })
  t.equal((await get('/v2/', ALICE)).status, 200, 'alice, remembered from here on')
  // Both changes in one replacement of the file, so that no reload sees one without the other.
  const next = `${htpasswd}.next`
  await copyFile(htpasswd, next)
  await setUser(next, 'carol', 'carol password')
  await setUser(next, 'alice', 'a new password')
  await rename(next, htpasswd)
  const until = Date.now() + 5000
  while (!mirror.logs.some(l => l.msg === 'htpasswd file reloaded') && Date.now() < until) await new Promise(resolve => setTimeout(resolve, 25))
  t.equal((await get('/v2/', basic('carol', 'carol password'))).status, 200, 'the new user')
  t.equal((await get('/v2/', ALICE)).status, 401, 'the old password, though remembered, is not trusted after the change')
  t.equal((await get('/v2/', basic('alice', 'a new password'))).status, 200)
})

t.test('without an access section, users pull everything and anonymous callers nothing', async t => {
  const { hub, get } = await scene(t, {}, {})
  makeImage(hub, 'library/alpine', 'v1', { layers: [100] })
  t.equal((await get('/v2/library/alpine/manifests/v1')).status, 401)
  t.equal((await get('/v2/library/alpine/manifests/v1', BOB)).status, 200)
})

t.test('registry-mirror htpasswd adds a user or changes a password, read from stdin, and refuses what it cannot take', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-htpasswd-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'htpasswd')
  const added = await runCli(['htpasswd', file, 'alice'], 'first password\n')
  t.equal(added.code, 0, added.stderr)
  t.equal(added.stdout, `added alice in ${file}\n`)
  t.equal((await stat(file)).mode & 0o777, 0o600, 'a new file is its owner\'s only')
  t.equal((await runCli(['htpasswd', file, 'bob'], 'bob password')).code, 0, 'no line ending needed')
  const changed = await runCli(['htpasswd', file, 'alice'], 'second password\r\nignored\n')
  t.equal(changed.stdout, `changed the password of alice in ${file}\n`)
  const users = parseHtpasswd(await readFile(file, 'utf8'), file)
  t.same([...users.keys()], ['alice', 'bob'], 'one entry per user, in order')
  const log = createLogger('silent', process.stderr)
  const loaded = await HtpasswdFile.load(file, log, 60_000)
  t.teardown(() => loaded.stop())
  t.ok(await loaded.verify('alice', 'second password'), 'the new password, without its CR')
  t.notOk(await loaded.verify('alice', 'first password'))
  t.ok(await loaded.verify('bob', 'bob password'))
  t.notOk(await loaded.verify('nobody', 'bob password'))
  t.notMatch(await readFile(file, 'utf8'), /password/, 'only hashes on disk')

  const empty = await runCli(['htpasswd', file, 'carol'], '')
  t.equal(empty.code, 1)
  t.equal(empty.stderr, 'registry-mirror: the password is empty\n')
  t.match((await runCli(['htpasswd', file, 'a:b'], 'pw\n')).stderr, /"a:b" is not a user name/)
  t.match((await runCli(['htpasswd', file], 'pw\n')).stderr, /htpasswd takes a file and a user/)
  await writeFile(join(dir, 'md5'), 'dave:$apr1$abc$def\n')
  t.match((await runCli(['htpasswd', join(dir, 'md5'), 'erin'], 'pw\n')).stderr, /md5 line 1: the entry for dave is not bcrypt; only bcrypt entries are accepted/)
  t.equal(await readFile(join(dir, 'md5'), 'utf8'), 'dave:$apr1$abc$def\n', 'a file it cannot parse is left as it was')
})

t.test('a bad htpasswd file stops the start with auth.htpasswd named', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-htpasswd-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const cases: Array<[string, string | undefined, RegExp]> = [
    ['a missing file', undefined, /auth\.htpasswd: cannot read .*htpasswd: ENOENT/],
    ['a plain-text password', 'alice:secret\n', /auth\.htpasswd: .*htpasswd line 1: the entry for alice is not bcrypt/],
    ['a line without a colon', '# users\nalice\n', /auth\.htpasswd: .*htpasswd line 2: expected user:hash/]
  ]
  for (const [what, text, message] of cases) {
    const file = join(dir, 'htpasswd')
    await rm(file, { force: true })
    if (text !== undefined) await writeFile(file, text)
    const err = await rejectedBy(t, startMirror(t, { upstreams: { 'docker.io': 'http://127.0.0.1:9' }, auth: { htpasswd: file }, metrics: { enabled: false } }), ConfigError, what)
    t.match(err?.message, message, what)
  }
})

t.test('a flood of logins from many addresses gets 429 past the bcrypt checks that can wait, and the right login still works after', async t => {
  const { get, mirror } = await scene(t, { maxFailures: 1000 })
  // 200 made-up logins at once: two are checked at a time, 64 may wait, the rest are turned away at once.
  const answers = await Promise.all(Array.from({ length: 200 }, async (_, i) => (await get('/v2/', basic(`user${i}`, 'guess'))).status))
  const limited = answers.filter(s => s === 429).length
  t.ok(limited > 0 && answers.every(s => s === 401 || s === 429), `${limited} turned away with 429, the rest refused with 401`)
  t.ok(answers.filter(s => s === 401).length <= 2 + 64 + 40, 'no more checked than run and wait, give or take those that finished meanwhile')
  t.equal((await get('/v2/', ALICE)).status, 200)
  t.notMatch(mirror.logText(), /guess/)
})

t.test('no client credential reaches the disk or the logs', async t => {
  const { hub, ghcr, mirror, get } = await scene(t)
  makeImage(hub, 'library/alpine', 'v1', { layers: [1000] })
  const priv = makeImage(ghcr, 'acme/app', 'v1', { layers: [2000] })
  for (const authorization of [ALICE, BOB, basic('alice', 'wrong guess')]) {
    await get('/v2/', authorization)
    await get('/v2/ghcr.io/acme/app/manifests/v1', authorization)
    await get(`/v2/ghcr.io/acme/app/blobs/${priv.layerDigests[0] ?? ''}`, authorization)
    await get('/v2/library/alpine/manifests/v1', authorization)
  }
  mirror.flushAccess()
  const secrets = ['alice password', 'bob password', 'wrong guess', ALICE.slice(6), BOB.slice(6)]
  const files: string[] = []
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name)
      if (entry.isDirectory()) await walk(path)
      else files.push(path)
    }
  }
  await walk(mirror.storage)
  t.ok(files.some(f => f.endsWith('index.db')), 'the index is among the files searched')
  for (const file of files) {
    const bytes = await readFile(file)
    for (const secret of secrets) t.notOk(bytes.includes(secret), `${secret.slice(0, 5)}… is not in ${file.slice(mirror.storage.length)}`)
  }
  for (const secret of secrets) t.notOk(mirror.logText().includes(secret), `${secret.slice(0, 5)}… is not in the logs`)
})

t.test('tokens expire, and carry nothing but their subject and expiry', async t => {
  let now = 1_000_000
  const issuer = new TokenIssuer(60_000, () => now)
  const issued = issuer.issue('alice')
  t.equal(issued.expiresIn, 60)
  t.same(issuer.verify(issued.token), { caller: 'alice' })
  t.same(issuer.verify(issuer.issue(undefined).token), { caller: undefined }, 'an anonymous token')
  t.same(JSON.parse(Buffer.from(issued.token.split('.')[0] ?? '', 'base64url').toString()), { sub: 'alice', exp: 1_060_000 })
  now += 60_000
  t.equal(issuer.verify(issued.token), undefined, 'expired')
  for (const junk of ['', 'a.b', 'a.b.c', 'x'.repeat(2000), `${Buffer.from('{"sub":"root","exp":9e15}').toString('base64url')}.${issued.token.split('.')[1] ?? ''}`]) {
    t.equal(issuer.verify(junk), undefined, `refused: ${junk.slice(0, 20)}`)
  }
})

t.test('a Host header that could break the challenge is not echoed into it', async t => {
  const { mirror } = await scene(t)
  const { port } = new URL(mirror.url)
  const res = await request(`${mirror.url}/v2/`, { headers: { host: 'evil.example",error="x' } })
  await res.body.dump()
  t.equal(res.statusCode, 401)
  t.equal(res.headers['www-authenticate'], `Bearer realm="http://127.0.0.1:${port}/auth/token",service="registry-mirror"`, 'the address the request came in on instead')
})
