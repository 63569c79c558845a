// Two namespaces of user names on one mirror: the mirror's own users (an
// htpasswd file) and logins for its passthrough upstream, written in the
// upstream's login form (README, "Private images (passthrough)"). The upstream
// is distribution's reference registry behind the test's token server
// (harness/token-server.ts), keyed `ghcr.io`, so its login form is `ghcr.io/NAME`;
// the mirror serves TLS on a non-loopback address, as docker sends logins to
// no other. Real clients log in the way the README tells them to:
//   ghcr.io/alice   docker login, podman login, skopeo --src-creds, ctr --user:
//                   each pulls org/private, which only alice may read upstream;
//                   the token server sees alice, without the prefix
//   dora, erin      the mirror's users: they log in with their mirror passwords
//                   and read what the upstream gives anyone (public/app), as
//                   anonymous to it; dora's name and password never reach it
//   dorra, Dora     dora's password under a typo'd and a capitalised name, and
//   erin            erin's once she is gone from the htpasswd file: the mirror
//                   refuses the login, and neither the token server nor the
//                   registry gets a single request meanwhile
// The token server knows dorra, Dora and erin with those very passwords (the
// same person's account upstream, say), so a forwarded login would succeed:
// each refusal is the mirror's own. No password may appear in the mirror's
// data directory or logs.

import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { requireTools } from '../../harness/tools.js'
import { mirrorKind } from '../../harness/mirror.js'
import { ReferenceRegistry } from '../../harness/reference-registry.js'
import { TokenServer, type TokenRequest } from '../../harness/token-server.js'
import { Skopeo } from '../../harness/skopeo.js'
import { Podman } from '../../harness/podman.js'
import { Containerd } from '../../harness/containerd.js'
import { Dockerd, writeDockerCerts, removeDockerCerts } from '../../harness/dockerd.js'
import { amd64, writeOciLayout, type OciLayout } from '../../harness/oci-layout.js'
import { makeCA } from '../../harness/certs.js'
import { nonLoopbackAddress } from '../../harness/ports.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { filesUnder } from '../../harness/files.js'
import { waitFor } from '../../harness/wait.js'
import { setUser } from '../../lib/auth/htpasswd.js'
import { startMirror } from '../helpers/mirror.js'

const skip = requireTools(t, ['openssl', 'docker-registry', 'skopeo', 'containerd', 'ctr', 'dockerd', 'docker', 'podman'], { root: true }) ||
  (mirrorKind() === 'reference' ? 'E2E_MIRROR=reference: the reference proxy has no users or passthrough logins' : false)

const hex = (n: number): string => randomBytes(n).toString('hex')
const credsOf = (login: { name: string, password: string }): { user: string, password: string } => ({ user: login.name, password: login.password })
const basic = (user: string, password: string): string => Buffer.from(`${user}:${password}`).toString('base64')

/** The key of the passthrough upstream, and so its login form: `ghcr.io/` (a host without a port, and a slash). */
const UPSTREAM = 'ghcr.io'
const PREFIX = `${UPSTREAM}/`

/** What clients print when the mirror refuses a login. */
const LOGIN_REFUSED = /401|unauthorized|invalid username\/password/i

/** A failure's first lines, without the command line (which names the password's placeholder only) or the daemon log. */
function reason (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const [client = ''] = err.message.split(/\n--- /)
  return client.split('\n').slice(1).filter(line => line.trim() !== '').slice(0, 3).join(' / ')
}

async function refusal (attempt: Promise<unknown>): Promise<unknown> {
  return await attempt.then(() => undefined, (err: unknown) => err)
}

t.test('a mirror user\'s password never reaches the passthrough upstream, whatever name it is typed with; ghcr.io/NAME logins do, from every client', { skip }, async t => {
  const started = Date.now()
  const work = await makeTempDir('namespaces')
  t.teardown(() => removeTempDir(work))

  // Fresh passwords each run, so that finding one in the mirror's files means the mirror wrote it.
  /** alice's account upstream; she logs in to the mirror only with access tokens. */
  const alice = { name: 'alice', password: `alice-${hex(12)}` }
  // One access token per client, as a GitHub user has one per machine: each client's login is new to the
  // mirror (which remembers a login the upstream took, and its upstream tokens, by an HMAC of the pair),
  // so each is checked with the upstream afresh, and the token server sees alice ask for each.
  const aliceTokens = { skopeo: `alice-skopeo-${hex(12)}`, docker: `alice-docker-${hex(12)}`, podman: `alice-podman-${hex(12)}`, ctr: `alice-ctr-${hex(12)}` }
  const dora = { name: 'dora', password: `dora-${hex(12)}` }
  const erin = { name: 'erin', password: `erin-${hex(12)}` }
  const admin = { name: 'admin', password: `admin-${hex(12)}` }
  /** Names a person could type with dora's or erin's mirror password; none may reach the upstream. */
  const strays = [{ name: 'dorra', password: dora.password }, { name: 'Dora', password: dora.password }, { name: 'erin', password: erin.password }]

  const tokens = await TokenServer.start({
    dir: work,
    users: {
      admin: { password: admin.password, pull: ['**'], push: ['**'] },
      alice: { password: alice.password, accessTokens: Object.values(aliceTokens), pull: ['org/private', 'public/*'] },
      // Were the mirror to forward these, the upstream would take them.
      dorra: { password: dora.password, pull: ['org/private'] },
      Dora: { password: dora.password, pull: ['org/private'] },
      erin: { password: erin.password, pull: ['org/private'] }
    },
    anonymousPull: ['public/*']
  })
  t.teardown(() => tokens.close())
  const registry = await ReferenceRegistry.start({ label: UPSTREAM, tokenAuth: { realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, rootCertBundle: tokens.certPath } })
  t.teardown(() => registry.close())

  const skopeo = new Skopeo(work)
  const images: Record<string, OciLayout> = {}
  for (const repository of ['org/private', 'public/app']) {
    const layout = await writeOciLayout(join(work, repository.replace('/', '-')), { tag: 'v1', seed: `${repository}-${hex(4)}`, platforms: [amd64], layerSizes: [64 * 1024, 4096] })
    await skopeo.push(layout.dir, 'v1', `${registry.host}/${repository}:v1`, { creds: { user: admin.name, password: admin.password } })
    images[repository] = layout
  }
  const digestOf = (repository: string): string => {
    const layout = images[repository]
    if (layout === undefined) throw new Error(repository)
    return layout.top.digest
  }

  const htpasswd = join(work, 'htpasswd')
  await setUser(htpasswd, dora.name, dora.password)
  await setUser(htpasswd, erin.name, erin.password)

  const address = nonLoopbackAddress()
  const ca = await makeCA(work, 'ca')
  const server = await ca.issueServer('mirror', [address ?? '127.0.0.1', '127.0.0.1'])
  const trusted = join(work, 'trusted')
  await mkdir(trusted)
  await writeFile(join(trusted, 'ca.crt'), ca.cert)

  const mirror = await startMirror(t, {
    upstreams: {
      // No port in the key: the login form is `ghcr.io/` (a prefix holds no colon; a key with a port needs clientLoginPrefix).
      [UPSTREAM]: { url: registry.url, authHosts: [new URL(tokens.realm).host], clientCredentials: 'passthrough' }
    },
    listen: `${address ?? '127.0.0.1'}:0`,
    tls: { cert: server.certPath, key: server.keyPath },
    // The refusals below are failed logins from one address: stay clear of the 429. Removing erin takes effect within 200 ms.
    auth: { htpasswd, maxFailures: 1000, reloadInterval: '200ms' },
    metrics: { token: `metrics-${hex(8)}` }
  })
  const host = new URL(mirror.url).host
  const pushed = tokens.requests.length
  const since = (mark: number): TokenRequest[] => tokens.requests.slice(mark)

  /** Runs the attempts, then checks that neither the token server nor the registry received anything meanwhile. */
  const reachesNoUpstream = async (t: Test, what: string, attempts: () => Promise<void>): Promise<void> => {
    const tokenMark = tokens.requests.length
    const registryMark = await registry.mark()
    await attempts()
    t.same(since(tokenMark).map(r => `${r.user ?? 'anonymous'} ${r.status}`), [], `${what}: no request reached the token server`)
    t.same((await registry.requestsSince(registryMark)).map(r => `${r.method} ${r.uri} ${r.status}`), [], `${what}: no request reached the registry`)
  }
  /** The token server saw alice, without the prefix, and said yes; no one else but anonymous callers (ctr asks anonymously first). */
  const askedAsAlice = (t: Test, mark: number, client: string): void => {
    const asked = since(mark)
    t.ok(asked.some(r => r.user === alice.name && r.status === 200), `${client}: the token server saw alice (not ${PREFIX}alice) asking, and said yes`)
    t.same(asked.filter(r => r.user !== alice.name && r.user !== undefined).map(r => r.user), [], `${client}: and no other name`)
    t.comment(`${client}: token requests ${JSON.stringify(asked.map(r => [r.user ?? 'anonymous', r.status, r.scopes.join(' ')]))}`)
  }
  /** What the mirror logged about the logins it saw since a position in its log: the names exactly as each client sent them. */
  const loginsSeen = (mark: number): string[] => mirror.logs.slice(mark)
    .filter(line => line.msg === 'login failed' || (line.msg === 'request' && typeof line.path === 'string' && line.path.startsWith('/auth/token')))
    .map(line => line.msg === 'login failed' ? `refused ${String(line.user)}` : `${String(line.method)} ${String(line.status)} user=${String(line.user ?? '-')} upstreamUser=${String(line.upstreamUser ?? '-')}`)

  await t.test(`skopeo --src-creds '${PREFIX}alice:...' copies org/private with the upstream's digest`, async t => {
    const mark = tokens.requests.length
    const logMark = mirror.logs.length
    const { digest } = await skopeo.pullToDir(`${host}/${UPSTREAM}/org/private:v1`, join(work, 'skopeo-alice'), { certDir: trusted, creds: { user: `${PREFIX}alice`, password: aliceTokens.skopeo } })
    t.equal(digest, digestOf('org/private'), 'the upstream\'s digest')
    askedAsAlice(t, mark, 'skopeo')
    t.comment(`skopeo, as the mirror saw it: ${loginsSeen(logMark).join(', ')}`)
  })

  const dockerSkip = address === undefined ? 'no IPv4 address outside 127.0.0.0/8: dockerd would take the mirror for insecure and send no credentials' : false
  let dockerd: Dockerd | undefined
  const docker = async (): Promise<Dockerd> => {
    if (dockerd !== undefined) return dockerd
    await writeDockerCerts(host, { ca: ca.cert })
    t.teardown(() => removeDockerCerts(host))
    const started = await Dockerd.start()
    t.teardown(() => started.close())
    dockerd = started
    return started
  }

  await t.test(`docker login HOST:PORT -u ${PREFIX}alice, then docker pull HOST:PORT/${UPSTREAM}/org/private:v1`, { skip: dockerSkip }, async t => {
    const d = await docker()
    const mark = tokens.requests.length
    const logMark = mirror.logs.length
    await d.login(host, `${PREFIX}alice`, aliceTokens.docker)
    t.pass(`docker login -u ${PREFIX}alice succeeds`)
    const reference = `${host}/${UPSTREAM}/org/private:v1`
    await d.pull(reference)
    t.ok((await d.digestsOf(reference)).includes(digestOf('org/private')), 'the upstream\'s digest')
    askedAsAlice(t, mark, 'docker')
    t.comment(`docker, as the mirror saw it: ${loginsSeen(logMark).join(', ')}`)
    await d.logout(host)
  })

  await t.test(`podman login -u ${PREFIX}alice, then a pull through the path-prefix mirror location over TLS`, async t => {
    const podman = await Podman.create([{ registry: UPSTREAM, location: `${host}/${UPSTREAM}`, tls: true }], { certDir: trusted })
    t.teardown(() => podman.close())
    const mark = tokens.requests.length
    const logMark = mirror.logs.length
    await podman.login(host, `${PREFIX}alice`, aliceTokens.podman)
    t.pass(`podman login -u ${PREFIX}alice succeeds`)
    await podman.pull(`${UPSTREAM}/org/private:v1`)
    t.ok((await podman.digestsOf(`${UPSTREAM}/org/private:v1`)).includes(digestOf('org/private')), 'the upstream\'s digest')
    askedAsAlice(t, mark, 'podman')
    t.comment(`podman, as the mirror saw it: ${loginsSeen(logMark).join(', ')}`)

    await podman.logout(host)
    await reachesNoUpstream(t, 'podman login dorra', async () => {
      const refused = await refusal(podman.login(host, 'dorra', dora.password))
      t.match(refused, { message: LOGIN_REFUSED }, 'podman login -u dorra with dora\'s password fails')
      t.comment(`podman login dorra: ${reason(refused)}`)
    })
  })

  await t.test(`ctr images pull --user '${PREFIX}alice:...' through hosts.toml with ca`, async t => {
    const containerd = await Containerd.start()
    t.teardown(() => containerd.close())
    await containerd.addHost({ registry: UPSTREAM, host: mirror.url, ca: ca.certPath })
    const mark = tokens.requests.length
    const logMark = mirror.logs.length
    const pulled = await containerd.pull(`${UPSTREAM}/org/private:v1`, { user: { name: `${PREFIX}alice`, password: aliceTokens.ctr } })
    t.equal(pulled.digest, digestOf('org/private'), 'the upstream\'s digest')
    askedAsAlice(t, mark, 'ctr')
    const seen = loginsSeen(logMark)
    t.comment(`ctr, as the mirror saw it: ${seen.join(', ')}`)
    // containerd asks for its token by POST (an OAuth2 password grant) when it has a login; the mirror takes it.
    t.ok(seen.some(line => line === 'POST 200 user=- upstreamUser=alice'), 'ctr\'s OAuth2 form got its token at once')
    t.notOk(seen.some(line => line.startsWith('POST 404') || line.startsWith('POST 400')), 'and was not sent back to GET')
  })

  await t.test('dora, a mirror user, logs in with her mirror password and reads what the upstream gives anyone; her login never goes upstream', async t => {
    const mark = tokens.requests.length
    const { digest } = await skopeo.pullToDir(`${host}/${UPSTREAM}/public/app:v1`, join(work, 'skopeo-dora'), { certDir: trusted, creds: credsOf(dora) })
    t.equal(digest, digestOf('public/app'), `skopeo --src-creds dora:... ${UPSTREAM}/public/app: the upstream's digest`)
    const refused = await refusal(skopeo.pullToDir(`${host}/${UPSTREAM}/org/private:v1`, join(work, 'skopeo-dora-private'), { certDir: trusted, creds: credsOf(dora) }))
    t.match(refused, { message: /401|unauthorized|denied|403/i }, 'and not org/private: to the upstream she is anonymous')
    t.comment(`skopeo as dora, org/private: ${reason(refused)}`)
    if (dockerSkip === false) {
      const d = await docker()
      await d.login(host, dora.name, dora.password)
      t.pass('docker login -u dora succeeds')
      const reference = `${host}/${UPSTREAM}/public/app:v1`
      await d.pull(reference)
      t.ok((await d.digestsOf(reference)).includes(digestOf('public/app')), `docker pull ${UPSTREAM}/public/app as dora: the upstream's digest`)
      await d.logout(host)
    }
    t.same(since(mark).filter(r => r.user !== undefined).map(r => r.user), [], 'every request the token server got meanwhile was anonymous')
    t.ok(since(mark).length > 0, 'and it was asked (anonymously) about public/app and org/private')
  })

  await t.test('erin logs in while the htpasswd file lists her', async t => {
    const { digest } = await skopeo.pullToDir(`${host}/${UPSTREAM}/public/app:v1`, join(work, 'skopeo-erin'), { certDir: trusted, creds: credsOf(erin) })
    t.equal(digest, digestOf('public/app'), 'skopeo --src-creds erin:...')
    if (dockerSkip === false) {
      await (await docker()).login(host, erin.name, erin.password)
      t.pass('docker login -u erin succeeds')
      await (await docker()).logout(host)
    }
    // The file without erin, replaced whole as an editor or `htpasswd -D` would.
    const kept = (await readFile(htpasswd, 'utf8')).split('\n').filter(line => !line.startsWith(`${erin.name}:`)).join('\n')
    await writeFile(`${htpasswd}.new`, kept)
    await rename(`${htpasswd}.new`, htpasswd)
    await waitFor('the mirror to re-read the htpasswd file', () => mirror.logs.some(line => line.msg === 'htpasswd file reloaded' && line.users === 1), { timeoutMs: 10_000 })
    t.pass('erin is removed, and the mirror has re-read the file')
  })

  await t.test('dora\'s password under dorra and Dora, and erin\'s once she is gone: the mirror refuses each login, and nothing reaches the upstream', async t => {
    const logMark = mirror.logs.length
    for (const stray of strays) {
      await reachesNoUpstream(t, `${stray.name} with a mirror password`, async () => {
        if (dockerSkip === false) {
          const refused = await refusal((await docker()).login(host, stray.name, stray.password))
          t.match(refused, { message: LOGIN_REFUSED }, `docker login -u ${stray.name} fails`)
          t.notMatch(refused, { message: new RegExp(stray.password) }, 'the password is not in the error')
          t.comment(`docker login ${stray.name}: ${reason(refused)}`)
        }
        const refused = await refusal(skopeo.pullToDir(`${host}/${UPSTREAM}/public/app:v1`, join(work, `skopeo-${stray.name}`), { certDir: trusted, creds: { user: stray.name, password: stray.password } }))
        t.match(refused, { message: /401|unauthorized/i }, `skopeo --src-creds ${stray.name}:... is refused, even for public/app`)
        t.comment(`skopeo ${stray.name}: ${reason(refused)}`)
      })
    }
    const seen = loginsSeen(logMark)
    for (const stray of strays) t.ok(seen.includes(`refused ${stray.name}`), `the mirror got the name ${stray.name} as typed, and refused it`)
    t.comment(`as the mirror saw them: ${seen.join(', ')}`)
  })

  await t.test('over the whole run, the upstream saw only alice (without the prefix), admin\'s pushes, and anonymous callers', async t => {
    const users = new Set(since(pushed).map(r => r.user ?? 'anonymous'))
    t.same([...users].sort(), ['alice', 'anonymous'], 'alice and anonymous callers: no ghcr.io/alice, dora, dorra, Dora or erin')
    t.ok(mirror.logs.some(line => line.msg === 'request' && line.upstreamUser === alice.name), 'the mirror logs alice\'s requests with upstreamUser alice')
  })

  await t.test('no password is in the mirror\'s data directory or its logs', async t => {
    await mirror.close()
    const typed = [...Object.values(aliceTokens).flatMap(token => [[`${PREFIX}alice`, token], [alice.name, token]]), [dora.name, dora.password], [erin.name, erin.password], ...strays.map(s => [s.name, s.password])]
    const secrets = [...new Set(typed.flatMap(([user = '', password = '']) => [password, basic(user, password)]))]
    const text = mirror.logText()
    const found: string[] = []
    for (const secret of secrets) if (text.includes(secret)) found.push(`logs: ${secret}`)
    const files = await filesUnder(mirror.storage)
    for (const file of files) {
      const bytes = await readFile(file)
      for (const secret of secrets) if (bytes.includes(secret)) found.push(`${file}: ${secret}`)
    }
    t.same(found, [], `no password (plain or in a Basic header) in the logs or ${files.length} files`)
    t.ok(text.length > 0 && files.length > 0, 'the mirror did write logs and files to look through')
    t.comment(`the whole test took ${Math.round((Date.now() - started) / 1000)} s`)
  })
})
