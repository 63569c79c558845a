// Passthrough mode in detail, against a small upstream of the test's own that
// wants Basic credentials as some private registries do (the token flow with
// the reference registry is test/e2e/passthrough.test.ts): whose login goes
// upstream and whose never does, what is remembered, what an offline mirror
// and an upstream that fails answer, and the config that is refused.

import t from 'tap'
import { once } from 'node:events'
import { createHash } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { setUser } from '../lib/auth/htpasswd.js'
import { TokenIssuer } from '../lib/auth/tokens.js'
import { ConfigError } from '../lib/errors.js'
import { loadConfig } from '../lib/config/load.js'
import { startMirror, type Teardown } from './helpers/mirror.js'

const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`

interface Seen { method: string, path: string, authorization: string | undefined }

/** What the upstream does, changed while it runs. */
interface Behaviour {
  /** A Bearer challenge naming this realm instead of the Basic one (a hostile upstream sending logins elsewhere). */
  realm?: string
  /** Hold every /v2/ (login check) request unanswered. */
  stallLogins?: boolean
}

/**
 * A registry wanting Basic credentials: alice (password "a-pass") reads team/*,
 * anyone reads open/*. `status` overrides the answer for a path (500s, 429s).
 */
async function startUpstream (t: Teardown): Promise<{ url: string, seen: Seen[], status: Map<string, number>, behaviour: Behaviour, stop: () => Promise<void> }> {
  const seen: Seen[] = []
  const status = new Map<string, number>()
  const behaviour: Behaviour = {}
  const server = createServer((req, res) => {
    req.resume()
    const url = new URL(req.url ?? '/', 'http://x')
    seen.push({ method: req.method ?? '', path: url.pathname, authorization: req.headers.authorization })
    if (behaviour.stallLogins === true && url.pathname === '/v2/') return
    const forced = status.get(url.pathname)
    if (forced !== undefined) {
      res.writeHead(forced, { 'content-type': 'application/json', ...(forced === 429 ? { 'retry-after': '7' } : {}) })
      res.end('{"errors":[{"code":"UNKNOWN","message":"forced"}]}')
      return
    }
    const alice = req.headers.authorization === basic('alice', 'a-pass')
    const blob = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(url.pathname)
    const name = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname)?.[1] ?? blob?.[1]
    const readable = url.pathname === '/v2/' ? alice : name !== undefined && (name.startsWith('open/') || (alice && name.startsWith('team/')))
    if (!readable) {
      res.writeHead(401, { 'www-authenticate': behaviour.realm === undefined ? 'Basic realm="private"' : `Bearer realm="${behaviour.realm}",service="x"`, 'content-type': 'application/json' })
      res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
      return
    }
    if (blob !== null) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 3, 'docker-content-digest': blob[2] ?? '' })
      res.end(req.method === 'HEAD' ? undefined : 'abc')
      return
    }
    if (name === 'team/missing') {
      res.writeHead(404, { 'content-type': 'application/json' })
      res.end('{"errors":[{"code":"NAME_UNKNOWN","message":"no such repository"}]}')
      return
    }
    const body = Buffer.from(JSON.stringify(url.pathname === '/v2/' ? {} : { name, tags: ['v1'] }))
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
    res.end(body)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const stop = async (): Promise<void> => {
    if (!server.listening) return
    server.closeAllConnections()
    server.close()
    await once(server, 'close')
  }
  t.teardown(stop)
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, status, behaviour, stop }
}

async function get (url: string, authorization?: string): Promise<{ status: number, body: string, headers: Record<string, unknown> }> {
  const res = await request(url, { headers: authorization === undefined ? {} : { authorization } })
  return { status: res.statusCode, body: await res.body.text(), headers: res.headers }
}

t.test('a Basic upstream gets the client\'s own login, never the mirror\'s; anonymous callers are asked to log in', async t => {
  const upstream = await startUpstream(t)
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough', username: 'mirror-user', password: 'mirror-pass' } },
    metrics: { enabled: false }
  })
  const tags = `${mirror.url}/v2/team/app/tags/list`
  const mine = await get(tags, basic('alice', 'a-pass'))
  t.equal(mine.status, 200, 'alice sends Basic straight to the mirror')
  t.same(JSON.parse(mine.body), { name: 'team/app', tags: ['v1'] })
  t.ok(upstream.seen.every(s => s.authorization === undefined || s.authorization === basic('alice', 'a-pass')), 'upstream saw alice\'s login or none')
  t.notOk(upstream.seen.some(s => s.authorization === basic('mirror-user', 'mirror-pass')), 'never the mirror\'s own')

  const anonymous = await get(tags)
  t.equal(anonymous.status, 401, 'anonymous: log in')
  t.match(String(anonymous.headers['www-authenticate']), /scope="repository:team\/app:pull"/)
  t.equal((await get(`${mirror.url}/v2/open/app/tags/list`)).status, 200, 'what anyone may read, anonymously')

  const before = upstream.seen.length
  t.equal((await get(tags, basic('alice', 'wrong'))).status, 401, 'a wrong password: 401')
  t.ok(upstream.seen.slice(before).some(s => s.authorization === basic('alice', 'wrong')), 'checked with the upstream')
  t.ok(mirror.logs.some(l => l.msg === 'login failed' && l.user === 'alice'), 'the failure is logged, with the user name')
})

t.test('a mirror user\'s password never goes upstream: to a passthrough upstream it is anonymous; names in the upstream\'s login form are upstream logins', async t => {
  const upstream = await startUpstream(t)
  const dir = await mkdtemp(join(tmpdir(), 'passthrough-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'dora', 'dora-pass')
  const hub = await startUpstream(t)
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough' }, 'hub.example': hub.url },
    defaultUpstream: 'hub.example',
    auth: { htpasswd },
    access: { rules: [{ repositories: ['hub.example/**'], users: ['dora'], pull: true }], default: 'deny' },
    metrics: { token: 'metrics-token' }
  })
  const dora = basic('dora', 'dora-pass')
  t.equal((await get(`${mirror.url}/v2/registry.example/open/app/tags/list`, dora)).status, 200, 'dora reads what anyone may')
  const refused = await get(`${mirror.url}/v2/registry.example/team/app/tags/list`, dora)
  t.equal(refused.status, 401, 'and is asked for an upstream login for the rest')
  t.notOk(upstream.seen.some(s => s.authorization?.includes(Buffer.from('dora:').toString('base64').slice(0, 6)) === true), 'her credentials never reached the upstream')
  t.equal((await get(`${mirror.url}/v2/hub.example/open/app/tags/list`, dora)).status, 200, 'the rules let her read hub.example')

  const seen = upstream.seen.length
  t.equal((await get(`${mirror.url}/v2/registry.example/team/app/tags/list`, basic('alice', 'a-pass'))).status, 401, 'a name the htpasswd file lacks is still a mirror login, refused here')
  t.equal(upstream.seen.slice(seen).filter(s => s.authorization !== undefined).length, 0, 'and never sent upstream')
  const alice = basic('registry.example/alice', 'a-pass')
  t.equal((await get(`${mirror.url}/v2/registry.example/team/app/tags/list`, alice)).status, 200, 'in the upstream\'s login form (registry.example/alice), it is an upstream login')
  t.ok(upstream.seen.some(s => s.authorization === basic('alice', 'a-pass')), 'sent upstream as alice, without the prefix')
  const elsewhere = await get(`${mirror.url}/v2/hub.example/open/app/tags/list`, alice)
  t.equal(elsewhere.status, 403, 'which the rules treat as anonymous elsewhere')
  t.match(elsewhere.body, /alice is a login for registry\.example/)
  t.equal(hub.seen.filter(s => s.path !== '/v2/').every(s => s.authorization === undefined), true, 'and which never reaches another upstream')
})

t.test('answers are remembered: a yes for clientAccessTtl, a no briefly; 404 not at all; failures say what happened', async t => {
  const upstream = await startUpstream(t)
  let clock = 1_000_000
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough', clientAccessTtl: 30_000 } },
    metrics: { enabled: false },
    hooks: { now: () => clock }
  })
  const alice = basic('alice', 'a-pass')
  const tags = `${mirror.url}/v2/team/app/tags/list`
  t.equal((await get(tags, alice)).status, 200)
  const probes = (): number => upstream.seen.filter(s => s.path === '/v2/team/app/tags/list').length
  const afterFirst = probes()
  t.equal(afterFirst, 2, 'the check (n=1), then the list itself')
  t.equal((await get(tags, alice)).status, 200)
  t.equal(probes(), afterFirst + 1, 'inside its time: the list only')
  clock += 31_000
  t.equal((await get(tags, alice)).status, 200)
  t.equal(probes(), afterFirst + 3, 'past it: checked again')

  const missing = await get(`${mirror.url}/v2/team/missing/tags/list`, alice)
  t.equal(missing.status, 404, 'upstream has no such repository')
  t.match(missing.body, /NAME_UNKNOWN/)

  // Two requests at once under one login: the check the first started finds no tag list; the second, a blob, is asked for itself.
  const digest = `sha256:${'ab'.repeat(32)}`
  const [list, head] = await Promise.all([
    get(`${mirror.url}/v2/team/missing/tags/list`, alice),
    request(`${mirror.url}/v2/team/missing/blobs/${digest}`, { method: 'HEAD', headers: { authorization: alice } })
  ])
  await head.body.dump()
  t.equal(list.status, 404)
  t.equal(head.statusCode, 200, 'the blob, checked on its own once the shared check found nothing')

  upstream.status.set('/v2/team/broken/tags/list', 500)
  const broken = await get(`${mirror.url}/v2/team/broken/tags/list`, alice)
  t.equal(broken.status, 503, 'upstream failing: 503')
  upstream.status.set('/v2/team/limited/tags/list', 429)
  const limited = await get(`${mirror.url}/v2/team/limited/tags/list`, alice)
  t.equal(limited.status, 429, 'upstream rate limiting: 429, passed on')

  const anonymous = `${mirror.url}/v2/team/other/tags/list`
  t.equal((await get(anonymous)).status, 401)
  const seen = upstream.seen.length
  for (let i = 0; i < 20; i++) t.equal((await get(anonymous)).status, 401)
  t.equal(upstream.seen.length, seen, 'a flood of refused requests asks upstream nothing more inside the no\'s time')
})

t.test('upstream down: logins and new checks are refused with 503 saying why; an offline mirror serves nothing of a passthrough upstream', async t => {
  const upstream = await startUpstream(t)
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough' } },
    metrics: { enabled: false }
  })
  const alice = basic('alice', 'a-pass')
  t.equal((await get(`${mirror.url}/v2/team/app/tags/list`, alice)).status, 200)
  await upstream.stop()
  const token = await get(`${mirror.url}/auth/token`, basic('zed', 'z-pass'))
  t.equal(token.status, 503, 'a login that cannot be checked')
  t.match(token.body, /the login cannot be checked: upstream registry\.example does not answer/)
  const remembered = await get(`${mirror.url}/auth/token`, alice)
  t.equal(remembered.status, 200, 'a login the upstream took lately still gets a token')

  const offlineStorage = await mkdtemp(join(tmpdir(), 'passthrough-offline-'))
  t.teardown(() => rm(offlineStorage, { recursive: true, force: true }))
  const config = join(offlineStorage, 'mirror.config.yml')
  await writeFile(config, `listen: 127.0.0.1:0\nstorage:\n  path: ${offlineStorage}/data\nupstreams:\n  registry.example:\n    url: ${upstream.url}\n    clientCredentials: passthrough\nmetrics:\n  enabled: false\noffline: true\n`)
  const loaded = await loadConfig({ file: config })
  t.ok(loaded.auth !== undefined, 'passthrough alone turns on the token flow')
  t.equal(loaded.auth?.htpasswd, undefined, 'with no users of the mirror\'s own')
})

t.test('a token carries a passthrough login sealed: readable by the mirror that issued it only, and not forgeable', async t => {
  const issuer = new TokenIssuer(60_000)
  const issued = issuer.issue(undefined, { login: { username: 'alice', password: 's3cret' } })
  t.notOk(Buffer.from(issued.token.split('.')[0] ?? '', 'base64url').toString('utf8').includes('s3cret'), 'the password is not readable in the token')
  t.same(issuer.verify(issued.token), { caller: undefined, login: { username: 'alice', password: 's3cret' } })
  t.equal(new TokenIssuer(60_000).verify(issued.token), undefined, 'another key: not ours')
  const [payload = '', signature = ''] = issued.token.split('.')
  const body = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { login: string }
  const flipped = Buffer.from(body.login, 'base64url')
  flipped[flipped.length - 1] = (flipped[flipped.length - 1] ?? 0) ^ 1
  const forged = Buffer.from(JSON.stringify({ ...body, login: flipped.toString('base64url') })).toString('base64url')
  t.equal(issuer.verify(`${forged}.${signature}`), undefined, 'a changed payload fails its signature')
})

t.test('mirrors behind one balancer share auth.tokenKeyEnv: a token one issued, login sealed inside, is good at the others', async t => {
  const secret = 'k'.repeat(44)
  const a = new TokenIssuer(60_000, Date.now, TokenIssuer.keyFrom(secret))
  const b = new TokenIssuer(60_000, Date.now, TokenIssuer.keyFrom(secret))
  const issued = a.issue(undefined, { login: { username: 'alice', password: 'pw' } })
  t.same(b.verify(issued.token), { caller: undefined, login: { username: 'alice', password: 'pw' } })
  t.same(b.verify(a.issue('dora').token), { caller: 'dora' })
  t.equal(new TokenIssuer(60_000, Date.now, TokenIssuer.keyFrom('x'.repeat(44))).verify(issued.token), undefined, 'another secret: not ours')

  const dir = await mkdtemp(join(tmpdir(), 'passthrough-key-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'mirror.config.yml')
  await writeFile(file, 'upstreams:\n  a.example:\n    url: https://a.example\n    clientCredentials: passthrough\nauth:\n  tokenKeyEnv: MIRROR_TOKEN_KEY\nmetrics:\n  enabled: false\n')
  const loaded = await loadConfig({ file, env: { MIRROR_TOKEN_KEY: secret } })
  t.equal(loaded.auth?.tokenKey, secret)
  await t.rejects(loadConfig({ file, env: {} }), /auth\.tokenKeyEnv: environment variable MIRROR_TOKEN_KEY is not set or empty/)
  await t.rejects(loadConfig({ file, env: { MIRROR_TOKEN_KEY: 'short' } }), /holds 5 characters; a token key needs at least 32/)
})

t.test('config: one passthrough upstream at most, a known mode, and access rules still need users', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'passthrough-config-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const problems = async (yaml: string): Promise<string[]> => {
    const file = join(dir, 'mirror.config.yml')
    await writeFile(file, yaml)
    try {
      await loadConfig({ file })
      return []
    } catch (err) {
      if (err instanceof ConfigError) return [...err.problems]
      throw err
    }
  }
  const two = await problems('upstreams:\n  a.example:\n    url: https://a.example\n    clientCredentials: passthrough\n  b.example:\n    url: https://b.example\n    clientCredentials: passthrough\nmetrics:\n  enabled: false\n')
  t.match(two.join('\n'), /at most one upstream may set clientCredentials: passthrough/)
  const bogus = await problems('upstreams:\n  a.example:\n    url: https://a.example\n    clientCredentials: shared\n')
  t.match(bogus.join('\n'), /upstreams\.a\.example\.clientCredentials/)
  const rules = await problems('upstreams:\n  a.example:\n    url: https://a.example\n    clientCredentials: passthrough\naccess:\n  default: deny\nmetrics:\n  enabled: false\n')
  t.match(rules.join('\n'), /access: needs auth\.htpasswd/)
  const ttl = await problems('upstreams:\n  a.example:\n    url: https://a.example\n    clientCredentials: passthrough\n    clientAccessTtl: 10ms\nmetrics:\n  enabled: false\n')
  t.match(ttl.join('\n'), /clientAccessTtl/)
})

t.test('a hostile upstream cannot take a login elsewhere: a token realm off its hosts gets nothing, and the client a 503', async t => {
  const upstream = await startUpstream(t)
  const elsewhere: Array<string | undefined> = []
  const thief = createServer((req, res) => { elsewhere.push(req.headers.authorization); res.end('{"token":"x"}') })
  thief.listen(0, '127.0.0.1')
  await once(thief, 'listening')
  t.teardown(() => { thief.closeAllConnections(); thief.close() })
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough' } },
    metrics: { enabled: false }
  })
  upstream.behaviour.realm = `http://127.0.0.1:${(thief.address() as AddressInfo).port}/token`
  const login = await get(`${mirror.url}/auth/token`, basic('alice', 'a-pass'))
  t.equal(login.status, 503, 'the login cannot be checked there')
  t.match(login.body, /not one of its hosts/)
  const pull = await get(`${mirror.url}/v2/team/app/tags/list`)
  t.equal(pull.status, 503, 'nor an anonymous check')
  t.same(elsewhere, [], 'the other host was never asked, with or without the login')
})

t.test('hostile clients: a flood of made-up logins reaches upstream at clientLoginRate at most, failures from one address stop reaching upstream, odd input never reaches it', async t => {
  const upstream = await startUpstream(t)
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough' } },
    auth: { maxFailures: 3 },
    limits: { maxRequestsPerClient: 1000 },
    metrics: { enabled: false }
  })
  upstream.behaviour.stallLogins = true
  const flood = Array.from({ length: 100 }, async (_, i) => await request(`${mirror.url}/auth/token`, { headers: { authorization: basic(`user${i}`, 'pw') }, headersTimeout: 60_000 }))
  await new Promise(resolve => setTimeout(resolve, 500))
  const logins = upstream.seen.filter(s => s.path === '/v2/').length
  t.ok(logins <= 5, `at most clientLoginRate (5) logins asked upstream (${logins})`)
  upstream.behaviour.stallLogins = false
  await upstream.stop()
  const statuses = await Promise.all(flood.map(async p => { const r = await p; await r.body.dump(); return r.statusCode }))
  t.ok(statuses.filter(s => s === 429).length >= 36, 'the rest were told to come back (429)')

  const fresh = await startUpstream(t)
  const second = await startMirror(t, {
    upstreams: { 'registry.example': { url: fresh.url, clientCredentials: 'passthrough' } },
    auth: { maxFailures: 3 },
    metrics: { enabled: false }
  })
  const huge = await get(`${second.url}/v2/team/app/tags/list`, basic('mallory', 'x'.repeat(5000)))
  t.equal(huge.status, 401, 'a login over 4096 bytes is refused')
  t.match(huge.body, /at most 4096 bytes/)
  const odd = await get(`${second.url}/v2/team/app/manifests/..%2f..%2fv2`)
  t.equal(odd.status, 400, 'a reference that is not one is refused')
  t.equal(fresh.seen.length, 0, 'neither reached upstream')
  // The oversized login was one failure of this address; two more reach maxFailures.
  for (let i = 0; i < 2; i++) t.equal((await get(`${second.url}/auth/token`, basic('alice', `wrong-${i}`))).status, 401)
  const asked = fresh.seen.length
  const limited = await get(`${second.url}/auth/token`, basic('alice', 'a-pass'))
  t.equal(limited.status, 429, 'past maxFailures, even the right password waits')
  t.equal(fresh.seen.length, asked, 'and upstream is not asked')
})

t.test('a full disk: a passthrough blob is served uncached, fetched with the client\'s own login, to it alone', async t => {
  const upstream = await startUpstream(t)
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough' } },
    metrics: { enabled: false },
    hooks: { freeBytes: async () => 0 }
  })
  const digest = `sha256:${createHash('sha256').update('abc').digest('hex')}`
  const blob = `${mirror.url}/v2/team/app/blobs/${digest}`
  const mine = await get(blob, basic('alice', 'a-pass'))
  t.equal(mine.status, 200)
  t.equal(mine.body, 'abc')
  t.equal(mine.headers['x-mirror-cache'], 'miss')
  const gets = upstream.seen.filter(s => s.method === 'GET' && s.path.includes('/blobs/'))
  t.same(gets.map(s => s.authorization), [basic('alice', 'a-pass')], 'one GET upstream, with alice\'s login')
  t.equal((await get(blob)).status, 401, 'anonymous: nothing, cached or not')
  t.equal((await get(blob, basic('alice', 'a-pass'))).headers['x-mirror-cache'], 'miss', 'nothing was cached')
})
