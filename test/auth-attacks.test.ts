// The mirror's logins under attack, each test the attack as it was tried on
// the code before (issue 16): tokens that outlived their user, a mirror
// password sent upstream under a mistyped name, user names told apart by the
// time or the words of a refusal, a flood from many addresses that locked
// every user out, and a flood of guesses relayed to the passthrough upstream.
// Clients come from distinct loopback addresses (127.0.0.x) where the
// address matters; upstreams are servers of the test's own that count what
// reached them.

import t from 'tap'
import { once } from 'node:events'
import { copyFile, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import bcrypt from 'bcryptjs'
import { Agent, request } from 'undici'
import { setUser } from '../lib/auth/htpasswd.js'
import { FailureCounter } from '../lib/auth/failure-counter.js'
import { prefix64 } from '../lib/ip-address.js'
import { LoginChecks } from '../lib/auth/login-checks.js'
import { TooManyRequestsError } from '../lib/errors.js'
import { RateLimit } from '../lib/limiter.js'
import { loadConfig } from '../lib/config/load.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror, type Teardown, type TestMirror } from './helpers/mirror.js'

const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`

interface Answer { status: number, body: string, headers: Record<string, unknown> }

async function get (url: string, authorization?: string, dispatcher?: Agent): Promise<Answer> {
  const res = await request(url, { headers: authorization === undefined ? {} : { authorization }, dispatcher, headersTimeout: 60_000 })
  return { status: res.statusCode, body: await res.body.text(), headers: res.headers }
}

/** A token from the mirror's token endpoint for this login. */
async function tokenFor (mirror: TestMirror, authorization: string): Promise<string> {
  const answer = await get(`${mirror.url}/auth/token`, authorization)
  if (answer.status !== 200) throw new Error(`no token: ${answer.status} ${answer.body}`)
  return `Bearer ${(JSON.parse(answer.body) as { token: string }).token}`
}

async function tempDir (t: Teardown, name: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${name}-`))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

/** Replaces the htpasswd file whole and waits until the mirror has read it again. */
async function replaceUsers (mirror: TestMirror, htpasswd: string, change: (next: string) => Promise<void>): Promise<void> {
  const reloads = mirror.logs.filter(l => l.msg === 'htpasswd file reloaded').length
  const next = `${htpasswd}.next`
  await copyFile(htpasswd, next)
  await change(next)
  await rename(next, htpasswd)
  const until = Date.now() + 10_000
  while (mirror.logs.filter(l => l.msg === 'htpasswd file reloaded').length === reloads) {
    if (Date.now() > until) throw new Error('the mirror did not read the htpasswd file again')
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

/** An agent whose connections come from this loopback address. */
function from (t: Teardown, address: string): Agent {
  const agent = new Agent({ connect: { localAddress: address } })
  t.teardown(async () => await agent.close())
  return agent
}

interface Seen { path: string, authorization: string | undefined }

/**
 * A registry wanting Basic credentials, as some private registries do: alice
 * (password "a-pass") reads team/*, anyone open/*. Every request is counted;
 * `stall` holds login checks (GET /v2/) unanswered until it is cleared.
 */
async function startBasicUpstream (t: Teardown): Promise<{ url: string, seen: Seen[], logins: () => Seen[], control: { stall: boolean, open: number, most: number }, release: () => void }> {
  const seen: Seen[] = []
  const control = { stall: false, open: 0, most: 0 }
  const held: Array<() => void> = []
  const server = createServer((req, res) => {
    req.resume()
    const url = new URL(req.url ?? '/', 'http://x')
    seen.push({ path: url.pathname, authorization: req.headers.authorization })
    const answer = (): void => {
      const alice = req.headers.authorization === basic('alice', 'a-pass')
      const name = /^\/v2\/(.+)\/tags\/list$/.exec(url.pathname)?.[1]
      const readable = url.pathname === '/v2/' ? alice : name !== undefined && (name.startsWith('open/') || (alice && name.startsWith('team/')))
      if (!readable) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="private"', 'content-type': 'application/json' })
        res.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
        return
      }
      const body = JSON.stringify(url.pathname === '/v2/' ? {} : { name, tags: ['v1'] })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(body)
    }
    if (url.pathname === '/v2/' && req.headers.authorization !== undefined) {
      control.open++
      control.most = Math.max(control.most, control.open)
      res.once('close', () => { control.open-- })
      if (control.stall) {
        held.push(answer)
        return
      }
    }
    answer()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    for (const release of held.splice(0)) release()
    server.closeAllConnections()
    server.close()
    await once(server, 'close')
  })
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    logins: () => seen.filter(s => s.path === '/v2/' && s.authorization !== undefined),
    control,
    release: () => { for (const answer of held.splice(0)) answer() }
  }
}

t.test('a token of ours ends with its user: removed from the htpasswd file, or given a new password, the next request after the reload gets 401', async t => {
  const dir = await tempDir(t, 'token-revocation')
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  await setUser(htpasswd, 'bob', 'bob password')
  const registry = await startFakeRegistry()
  t.teardown(async () => await registry.close())
  makeImage(registry, 'acme/app', 'v1', { layers: [100] })
  const mirror = await startMirror(t, {
    upstreams: { 'ghcr.io': registry.url },
    auth: { htpasswd, reloadInterval: '100ms' },
    metrics: { enabled: false }
  })
  const tags = `${mirror.url}/v2/ghcr.io/acme/app/tags/list`
  const alice = await tokenFor(mirror, basic('alice', 'alice password'))
  const bob = await tokenFor(mirror, basic('bob', 'bob password'))
  t.equal((await get(tags, alice)).status, 200, 'alice pulls with her token')
  t.equal((await get(tags, bob)).status, 200, 'bob too')

  await replaceUsers(mirror, htpasswd, async next => {
    const kept = (await readFile(next, 'utf8')).split('\n').filter(line => !line.startsWith('alice:')).join('\n')
    await writeFile(next, kept)
  })
  const removed = await get(tags, alice)
  t.equal(removed.status, 401, 'alice left the file: her token no longer works')
  t.match(String(removed.headers['www-authenticate']), /error="invalid_token"/, 'and the client is told to get a new one')
  t.equal((await get(`${mirror.url}/auth/token`, basic('alice', 'alice password'))).status, 401, 'which she cannot')
  t.equal((await get(tags, bob)).status, 200, 'bob\'s token, his entry unchanged, still works')

  await replaceUsers(mirror, htpasswd, async next => { await setUser(next, 'bob', 'a new password') })
  t.equal((await get(tags, bob)).status, 401, 'bob\'s password changed: the token from the old one no longer works')
  t.equal((await get(tags, await tokenFor(mirror, basic('bob', 'a new password')))).status, 200, 'a token from the new password does')
})

t.test('a fleet sharing auth.tokenKeyEnv accepts a token only for a user its own file lists with the same entry', async t => {
  const dir = await tempDir(t, 'token-fleet')
  const registry = await startFakeRegistry()
  t.teardown(async () => await registry.close())
  makeImage(registry, 'acme/app', 'v1', { layers: [100] })
  const first = join(dir, 'first')
  await setUser(first, 'alice', 'alice password')
  await setUser(first, 'carol', 'carol password')
  await setUser(first, 'dave', 'dave password')
  // The second mirror's file: alice's very entry, no carol, and dave with another password.
  const second = join(dir, 'second')
  await writeFile(second, (await readFile(first, 'utf8')).split('\n').filter(line => line.startsWith('alice:')).join('\n') + '\n')
  await setUser(second, 'dave', 'another password')
  const start = async (htpasswd: string): Promise<TestMirror> => await startMirror(t, {
    upstreams: { 'ghcr.io': registry.url },
    auth: { htpasswd, tokenKeyEnv: 'MIRROR_TEST_FLEET_KEY' },
    env: { MIRROR_TEST_FLEET_KEY: 'k'.repeat(44) },
    metrics: { enabled: false }
  })
  const a = await start(first)
  const b = await start(second)
  const tags = '/v2/ghcr.io/acme/app/tags/list'
  const alice = await tokenFor(a, basic('alice', 'alice password'))
  t.equal((await get(b.url + tags, alice)).status, 200, 'alice, listed alike on both, is taken by the other mirror')
  const carol = await tokenFor(a, basic('carol', 'carol password'))
  t.equal((await get(a.url + tags, carol)).status, 200, 'carol pulls where she is listed')
  t.equal((await get(b.url + tags, carol)).status, 401, 'a mirror whose file does not list carol refuses her token')
  const dave = await tokenFor(a, basic('dave', 'dave password'))
  t.equal((await get(b.url + tags, dave)).status, 401, 'nor does one that lists dave with another password take his')
  t.equal((await get(b.url + tags, await tokenFor(b, basic('dave', 'another password')))).status, 200)
})

t.test('two namespaces: names not in the upstream\'s login form never go upstream, whatever they are; the login form does, without its prefix', async t => {
  const upstream = await startBasicUpstream(t)
  const dir = await tempDir(t, 'namespaces')
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'dora', 'dora mirror password')
  await setUser(htpasswd, 'erin', 'erin mirror password')
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough' } },
    auth: { htpasswd, reloadInterval: '100ms', maxFailures: 1000 },
    metrics: { enabled: false }
  })
  await replaceUsers(mirror, htpasswd, async next => {
    await writeFile(next, (await readFile(next, 'utf8')).split('\n').filter(line => !line.startsWith('erin:')).join('\n'))
  })
  const tags = `${mirror.url}/v2/registry.example/team/app/tags/list`
  const attempts: Array<[string, string, string]> = [
    ['a removed user', 'erin', 'erin mirror password'],
    ['a typo', 'dorra', 'dora mirror password'],
    ['a capitalised name', 'Dora', 'dora mirror password'],
    ['a name the upstream knows, not in its login form', 'alice', 'a-pass']
  ]
  for (const [what, user, password] of attempts) {
    t.equal((await get(`${mirror.url}/auth/token`, basic(user, password))).status, 401, `${what} (${user}) gets no token`)
    t.equal((await get(tags, basic(user, password))).status, 401, `${what} is refused a pull`)
  }
  t.same(upstream.seen.filter(s => s.authorization !== undefined), [], 'not one of those credentials reached the upstream')
  t.notOk(upstream.seen.some(s => s.path === '/v2/'), 'nor was any login checked there')

  await replaceUsers(mirror, htpasswd, async next => { await setUser(next, 'registry.example/frank', 'frank mirror password') })
  t.equal((await get(`${mirror.url}/auth/token`, basic('registry.example/frank', 'frank mirror password'))).status, 200, 'a listed name in the login form is still a mirror user')
  t.same(upstream.seen.filter(s => s.authorization !== undefined), [], 'and his password stayed here')

  const login = basic('registry.example/alice', 'a-pass')
  t.equal((await get(tags, login)).status, 200, 'registry.example/alice is alice\'s upstream login')
  t.ok(upstream.seen.length > 0 && upstream.seen.every(s => s.authorization === undefined || s.authorization === basic('alice', 'a-pass')), 'which went upstream as alice, without the prefix')
  t.equal((await get(tags, basic('dora', 'dora mirror password'))).status, 401, 'dora, a mirror user, is anonymous to the upstream: asked to log in for its private repositories')
  t.ok(upstream.seen.every(s => s.authorization === undefined || s.authorization === basic('alice', 'a-pass')), 'and her password stayed here')
})

t.test('the token endpoint takes an OAuth2 password form (containerd asks so first) with the same checks as Basic, and refuses other grants with 400', async t => {
  const dir = await tempDir(t, 'oauth-form')
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  const registry = await startFakeRegistry()
  t.teardown(async () => await registry.close())
  makeImage(registry, 'acme/app', 'v1', { layers: [100] })
  const mirror = await startMirror(t, { upstreams: { 'ghcr.io': registry.url }, auth: { htpasswd, maxFailures: 2 }, metrics: { enabled: false } })
  const post = async (body: string, type = 'application/x-www-form-urlencoded'): Promise<Answer> => {
    const res = await request(`${mirror.url}/auth/token`, { method: 'POST', headers: { 'content-type': type }, body })
    return { status: res.statusCode, body: await res.body.text(), headers: res.headers }
  }
  const form = (fields: Record<string, string>): string => new URLSearchParams(fields).toString()
  const granted = await post(form({ grant_type: 'password', username: 'alice', password: 'alice password', service: 'registry-mirror', scope: 'repository:ghcr.io/acme/app:pull', client_id: 'containerd-client' }))
  t.equal(granted.status, 200, granted.body)
  const answer = JSON.parse(granted.body) as { access_token: string, expires_in: number, scope: string }
  t.equal(answer.scope, 'repository:ghcr.io/acme/app:pull', 'the scope asked for, echoed')
  t.ok(answer.expires_in > 0)
  t.equal((await get(`${mirror.url}/v2/ghcr.io/acme/app/tags/list`, `Bearer ${answer.access_token}`)).status, 200, 'a token alice pulls with')

  const wrong = await post(form({ grant_type: 'password', username: 'alice', password: 'a guess' }))
  t.equal(wrong.status, 401, 'a wrong password: 401, as with Basic')
  t.match(wrong.body, /the user name or password is wrong/)
  const refresh = await post(form({ grant_type: 'refresh_token', refresh_token: 'x' }))
  t.equal(refresh.status, 400, 'no refresh tokens: 400, on which containerd asks by GET')
  t.match(JSON.parse(refresh.body), { errors: [{ code: 'UNSUPPORTED', message: /grant_type "refresh_token" is not taken here: only password/ }] })
  t.equal((await post('{"username":"alice"}', 'application/json')).status, 400, 'not a form')
  t.equal((await post(form({ grant_type: 'password', username: 'alice', password: 'x'.repeat(20_000) }))).status, 400, 'a form over 16 KiB')
  t.equal((await post(form({ grant_type: 'password', username: 'alice', password: 'guess 2' }))).status, 401)
  t.equal((await post(form({ grant_type: 'password', username: 'alice', password: 'alice password' }))).status, 429, 'failures count as they do for Basic: past maxFailures, 429')
  t.notOk(mirror.logText().includes('alice password'), 'the password is not logged')

  // A form that trickles: its headers promise 100 bytes, 10 come, then nothing.
  const { hostname, port } = new URL(mirror.url)
  const socket = connect(Number(port), hostname)
  t.teardown(() => socket.destroy())
  await once(socket, 'connect')
  const started = Date.now()
  socket.write('POST /auth/token HTTP/1.1\r\nHost: mirror\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type')
  let reply = ''
  socket.on('data', chunk => { reply += String(chunk) })
  await once(socket, 'close')
  t.match(reply, /^HTTP\/1\.1 400 /, 'a form that does not arrive is answered 400')
  t.match(reply, /did not arrive within 10 s/)
  t.ok(Date.now() - started < 15_000, 'after its 10 s, and the connection closed')
})

t.test('the login form: clientLoginPrefix, checked, and only on a passthrough upstream', async t => {
  const dir = await tempDir(t, 'login-prefix')
  const file = join(dir, 'mirror.config.yml')
  const write = async (upstream: string): Promise<void> => await writeFile(file, `upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n${upstream}metrics:\n  enabled: false\n`)
  await write('    clientCredentials: passthrough\n')
  t.equal((await loadConfig({ file, env: {} })).upstreams.get('ghcr.io')?.passthrough?.loginPrefix, 'ghcr.io/', 'the upstream\'s host and a slash by default')
  await write('    clientCredentials: passthrough\n    clientLoginPrefix: "gh+"\n    clientLoginRate: 2\n    clientLoginConcurrency: 1\n')
  t.match((await loadConfig({ file, env: {} })).upstreams.get('ghcr.io')?.passthrough, { loginPrefix: 'gh+', loginRate: 2, loginConcurrency: 1 })
  await write('    clientCredentials: passthrough\n    clientLoginPrefix: "gh:"\n')
  await t.rejects(loadConfig({ file, env: {} }), /upstreams\.ghcr\.io\.clientLoginPrefix: expected the start of a user name \(1 to 64 characters, no colon or white space\)/)
  await write('    clientLoginPrefix: "gh/"\n    clientLoginRate: 0\n')
  const err = await loadConfig({ file, env: {} }).then(() => undefined, (e: unknown) => e)
  t.match(String(err), /upstreams\.ghcr\.io\.clientLoginPrefix: only with clientCredentials: passthrough/)
  t.match(String(err), /upstreams\.ghcr\.io\.clientLoginRate/)
  await writeFile(file, 'upstreams:\n  "localhost:5001":\n    url: http://localhost:5001\n    clientCredentials: passthrough\nmetrics:\n  enabled: false\n')
  t.equal((await loadConfig({ file, env: {} })).upstreams.get('localhost:5001')?.passthrough?.loginPrefix, 'localhost/', 'a port is left out: a user name has no colon')
  await writeFile(file, 'upstreams:\n  "[::1]:5001":\n    url: http://[::1]:5001\n    clientCredentials: passthrough\nmetrics:\n  enabled: false\n')
  await t.rejects(loadConfig({ file, env: {} }), /upstreams\.\[::1\]:5001\.clientLoginPrefix: needed: \[::1\]:5001 holds a colon even without its port/, 'an IPv6 upstream names its own')
})

/** The middle of the numbers. */
function median (values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] ?? 0
}

t.test('no enumeration: a wrong password costs the same for a listed and a made-up name, and reads the same', async t => {
  const dir = await tempDir(t, 'enumeration')
  const htpasswd = join(dir, 'htpasswd')
  // As `htpasswd -B` writes them: cost 5.
  await writeFile(htpasswd, ['alice', 'bob', 'carol'].map(user => `${user}:${bcrypt.hashSync(`${user} password`, 5)}`).join('\n') + '\n')
  const timing = await startMirror(t, {
    upstreams: { 'docker.io': 'http://127.0.0.1:9' },
    auth: { htpasswd, maxFailures: 1000 },
    metrics: { enabled: false }
  })
  const upstream = await startBasicUpstream(t)
  const passthrough = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough' } },
    auth: { htpasswd, maxFailures: 1000 },
    metrics: { enabled: false }
  })
  const timed = async (mirror: TestMirror, user: string, i: number): Promise<{ ms: number, answer: Answer }> => {
    const started = process.hrtime.bigint()
    // A new wrong password each time: a repeated one is answered from memory.
    const answer = await get(`${mirror.url}/v2/`, basic(user, `guess ${i}`))
    return { ms: Number(process.hrtime.bigint() - started) / 1e6, answer }
  }
  const listed: number[] = []
  const unlisted: number[] = []
  const messages = new Set<string>()
  for (let i = 0; i < 12; i++) {
    for (const [user, times] of [['alice', listed], [`nobody${i}`, unlisted]] as const) {
      const { ms, answer } = await timed(timing, user, i)
      t.equal(answer.status, 401)
      times.push(ms)
      messages.add(answer.body)
      messages.add((await timed(passthrough, user, i)).answer.body)
    }
  }
  t.equal(messages.size, 1, `one answer for both, with and without a passthrough upstream: ${[...messages].join(' | ')}`)
  // Before, a made-up name was checked at cost 10: about 30 times a cost-5 check.
  t.ok(median(unlisted) < median(listed) * 3 + 15, `made-up names ${median(unlisted).toFixed(1)} ms, a listed one ${median(listed).toFixed(1)} ms (medians of 12)`)
  t.equal(upstream.logins().length, 0, 'none of it went upstream')
})

t.test('a flood of bad logins from 100 addresses: every listed user with the right password still logs in', async t => {
  const dir = await tempDir(t, 'login-flood')
  const htpasswd = join(dir, 'htpasswd')
  const users = ['u1', 'u2', 'u3', 'u4', 'u5', 'u6']
  for (const user of users) await setUser(htpasswd, user, `${user} password`)
  const mirror = await startMirror(t, {
    upstreams: { 'docker.io': 'http://127.0.0.1:9' },
    auth: { htpasswd },
    limits: { maxRequestsPerClient: 1000 },
    metrics: { enabled: false }
  })
  let flooding = true
  const statuses = new Map<number, number>()
  const attacker = async (address: string, n: number): Promise<void> => {
    const agent = from(t, address)
    for (let i = 0; flooding; i++) {
      const answer = await get(`${mirror.url}/auth/token`, basic(`made-up-${n}-${i}`, 'guess'), agent)
      statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1)
      // An address past maxFailures gets 429 at once; it keeps knocking, as an attacker would.
      if (answer.status === 429) await new Promise(resolve => setTimeout(resolve, 5))
    }
  }
  const flood = Array.from({ length: 100 }, async (_, n) => { await attacker(`127.0.0.${n + 2}`, n) })
  await new Promise(resolve => setTimeout(resolve, 1000))
  const real = from(t, '127.0.0.200')
  const logins = await Promise.all(users.map(async user => (await get(`${mirror.url}/auth/token`, basic(user, `${user} password`), real)).status))
  flooding = false
  await Promise.all(flood)
  t.ok((statuses.get(429) ?? 0) > 0, `the flood was turned away (${statuses.get(429) ?? 0} × 429, ${statuses.get(401) ?? 0} × 401)`)
  t.same(logins, users.map(() => 200), 'all six users logged in meanwhile')
})

t.test('failures count per address and per IPv6 /64: a network of many addresses is bounded too', async t => {
  let now = 0
  const counter = new FailureCounter({ maxFailures: 2, window: 60_000, now: () => now })
  counter.record('10.0.0.1')
  counter.record('10.0.0.1')
  t.throws(() => counter.check('10.0.0.1'), TooManyRequestsError, 'an address past its failures')
  t.doesNotThrow(() => counter.check('10.0.0.2'), 'its IPv4 neighbour is another client')
  for (let i = 1; i <= 8; i++) {
    t.doesNotThrow(() => counter.check(`2001:db8:1:2::${i.toString(16)}`), `address ${i} of the /64 may try`)
    counter.record(`2001:db8:1:2::${i.toString(16)}`)
  }
  t.throws(() => counter.check('2001:db8:1:2:ffff::1'), /too many failed logins from this network/, 'past four times maxFailures, the whole /64 waits')
  t.doesNotThrow(() => counter.check('2001:db8:1:3::1'), 'the next /64 does not')
  now += 60_001
  t.doesNotThrow(() => counter.check('2001:db8:1:2::1'), 'after the window, it may try again')
  t.equal(prefix64('2001:db8::1'), '2001:db8:0:0')
  t.equal(prefix64('2001:0DB8:0000:0001:0:0:0:1'), '2001:db8:0:1')
  t.equal(prefix64('::1'), '0:0:0:0')
  t.equal(prefix64('fe80::1%eth0'), 'fe80:0:0:0')
  t.equal(prefix64('64:ff9b::192.0.2.1'), '64:ff9b:0:0')
  t.equal(prefix64('1:2:3'), undefined, 'not an address')
})

t.test('behind a trusted balancer, bad logins from many addresses of one IPv6 /64 stop at four times maxFailures for the whole /64', async t => {
  const dir = await tempDir(t, 'ipv6-flood')
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  const mirror = await startMirror(t, {
    upstreams: { 'docker.io': 'http://127.0.0.1:9' },
    auth: { htpasswd, maxFailures: 2 },
    limits: { trustedProxies: ['127.0.0.1/32'] },
    metrics: { enabled: false }
  })
  const login = async (client: string, password: string): Promise<number> => {
    const res = await request(`${mirror.url}/auth/token`, { headers: { authorization: basic('alice', password), 'x-forwarded-for': client } })
    await res.body.dump()
    return res.statusCode
  }
  // Each address of the /64 fails twice (its own bound); the /64 as a whole may fail 8 times.
  const statuses: number[] = []
  for (let host = 1; host <= 6; host++) {
    for (let i = 0; i < 2; i++) statuses.push(await login(`2001:db8:1:2::${host}`, `guess ${host} ${i}`))
  }
  t.same(statuses.slice(0, 8), Array(8).fill(401), 'eight failures from four addresses are checked')
  t.same(statuses.slice(8), Array(4).fill(429), 'then the /64 is refused, whichever of its addresses asks')
  t.equal(await login('2001:db8:1:2:ffff:ffff:ffff:ffff', 'alice password'), 429, 'even with the right password, until the window ends')
  t.equal(await login('2001:db8:1:3::1', 'alice password'), 200, 'the next /64 logs in')
  t.ok(mirror.logs.some(l => l.msg === 'login failed' && l.address === '2001:db8:1:2::1'), 'failures are logged with the forwarded address')
})

t.test('bcrypt checks: listed names are served first, each name may have only a few waiting, and past the bounds a 429 at once', async t => {
  const checks = new LoginChecks({ atOnce: 1, waiting: 3, waitingPerName: 2 })
  const order: string[] = []
  let release: () => void = () => {}
  const blocker = checks.run('unlisted', 'x', async () => await new Promise<void>(resolve => { release = resolve }))
  const queued = [
    checks.run('unlisted', 'm1', async () => { order.push('m1') }),
    checks.run('unlisted', 'm2', async () => { order.push('m2') }),
    checks.run('unlisted', 'm3', async () => { order.push('m3') }),
    checks.run('listed', 'alice', async () => { order.push('alice') }),
    checks.run('listed', 'alice', async () => { order.push('alice') })
  ]
  await t.rejects(checks.run('unlisted', 'm4', async () => {}), TooManyRequestsError, 'the made-up names\' lane is full')
  await t.rejects(checks.run('listed', 'alice', async () => {}), TooManyRequestsError, 'alice has her share waiting')
  const bob = checks.run('listed', 'bob', async () => { order.push('bob') })
  release()
  await Promise.all([blocker, ...queued, bob])
  t.same(order, ['alice', 'alice', 'bob', 'm1', 'm2', 'm3'], 'listed names first, each lane in order')
  t.equal(checks.waiting('listed') + checks.waiting('unlisted'), 0)
})

t.test('the passthrough upstream gets a repeated bad login once, and distinct ones no faster than clientLoginRate and clientLoginConcurrency', async t => {
  const upstream = await startBasicUpstream(t)
  const mirror = await startMirror(t, {
    upstreams: { 'registry.example': { url: upstream.url, clientCredentials: 'passthrough', clientLoginRate: 2, clientLoginConcurrency: 1 } },
    auth: { maxFailures: 100_000 },
    limits: { maxRequestsPerClient: 1000 },
    metrics: { enabled: false }
  })
  const token = `${mirror.url}/auth/token`
  for (let i = 0; i < 20; i++) t.equal((await get(token, basic('mallory', 'the same guess'))).status, 401)
  t.equal(upstream.logins().length, 1, 'twenty tries of one bad login: the upstream was asked once')

  const started = Date.now()
  const answers = await Promise.all(Array.from({ length: 200 }, async (_, i) => await get(token, basic(`guess${i}`, `pw${i}`))))
  const seconds = (Date.now() - started) / 1000
  const asked = upstream.logins().length - 1
  t.ok(asked <= 2 + 2 * Math.ceil(seconds), `200 distinct logins at once: ${asked} asked upstream in ${seconds.toFixed(1)} s (2 a second, 2 at once in a burst)`)
  const limited = answers.filter(a => a.status === 429)
  t.ok(limited.length >= 200 - asked, 'the rest got 429')
  t.match(limited[0]?.body, /upstream registry\.example is asked to check at most 2 logins a second/)
  t.ok(Number(limited[0]?.headers['retry-after']) >= 1)
  t.ok(answers.every(a => a.status === 401 || a.status === 429))
  const boundLines = mirror.logs.filter(l => typeof l.msg === 'string' && l.msg.startsWith('login checks at their bound'))
  t.ok(boundLines.length >= 1 && boundLines.length <= 2, `${limited.length} turned away, logged in ${boundLines.length} line(s), not one each`)

  upstream.control.stall = true
  await new Promise(resolve => setTimeout(resolve, 1100))
  const stalled = Array.from({ length: 2 }, async (_, i) => await get(token, basic(`slow${i}`, 'pw')))
  await new Promise(resolve => setTimeout(resolve, 300))
  t.equal(upstream.control.open, 1, 'with the upstream slow, one check at a time')
  upstream.control.stall = false
  upstream.release()
  t.same((await Promise.all(stalled)).map(a => a.status), [401, 401], 'both checked in turn')
  t.equal(upstream.control.most, 1, 'never more than clientLoginConcurrency at once')
})

t.test('a rate: bursts up to the rate, then one per 1/rate seconds', async t => {
  let now = 0
  const rate = new RateLimit(2, () => now)
  t.equal(rate.take(), 0)
  t.equal(rate.take(), 0)
  t.equal(rate.take(), 500, 'empty: the next in half a second')
  now += 500
  t.equal(rate.take(), 0)
  t.throws(() => new RateLimit(0), /a rate must be a positive number/)
})
