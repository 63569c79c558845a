// The mirror with users and access rules, as the README's "Users and access
// rules" section sets them up, and the real clients logging in the way it
// tells them to: docker login, podman login, skopeo --src-creds, ctr --user.
// One world: TLS (docker sends Basic credentials to no plain-HTTP registry
// outside insecure-registries, and Basic credentials belong under TLS anyway),
// users alice and bob in an htpasswd file, and the rules
//   docker.io/library/*  anonymous and every user   pull
//   ghcr.io/org/**       alice                      pull
//   anything else        denied
// Each client pulls what it may (checked against the upstream's digest) and
// is refused what it may not: 401 without (or with wrong) credentials, 403
// DENIED for bob. Afterwards no password may appear in the mirror's data
// directory or its logs.
//
// Anonymous pulls of docker.io/library/* work for every client: dockerd's
// registry-mirrors (which never sends credentials to a mirror) and
// containers/image follow /v2/'s Bearer challenge to the mirror's token
// endpoint and get an anonymous token; containerd sends no credentials until
// a request is challenged. (With a Basic challenge, as the mirror first had,
// dockerd skipped the mirror and containers/image sent an empty Basic pair.)

import t from 'tap'
import { mkdir, writeFile, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { requireTools } from '../../harness/tools.js'
import { World, type TestImage } from '../../harness/world.js'
import { makeCA, type Pem } from '../../harness/certs.js'
import { Dockerd, writeDockerCerts, removeDockerCerts } from '../../harness/dockerd.js'
import { Containerd } from '../../harness/containerd.js'
import { Podman } from '../../harness/podman.js'
import { Skopeo } from '../../harness/skopeo.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { filesUnder } from '../../harness/files.js'
import { mirrorKind } from '../../harness/mirror.js'
import { nonLoopbackAddress } from '../../harness/ports.js'
import { randomBytes } from 'node:crypto'
import { setUser } from '../../lib/auth/htpasswd.js'

const skip = requireTools(t, ['openssl', 'docker-registry', 'skopeo', 'containerd', 'ctr', 'dockerd', 'docker', 'podman'], { root: true }) ||
  (mirrorKind() === 'reference' ? 'E2E_MIRROR=reference: the reference proxy has no users or access rules' : false)

/** What clients print for the mirror's 401 (ctr, after an anonymous token falls short: insufficient_scope). */
const UNAUTHORIZED = /401|unauthorized|insufficient_scope/i
/** What clients print for the mirror's 403 DENIED. */
const DENIED = /403|denied/i
/** podman login prints no status for a refused password. */
const LOGIN_REFUSED = /invalid username\/password|401|unauthorized/i

/** The lines of a failure worth showing: the client's own (not the command line), and dockerd's reason for leaving the mirror. */
function reason (err: unknown): string {
  if (!(err instanceof Error)) return String(err)
  const [client = '', daemonLog = ''] = err.message.split(/\n--- /)
  const lines = client.split('\n').slice(1).filter(line => line.trim() !== '' && !line.includes('trying next host'))
  // dockerd went past the mirror to Docker Hub: its log says why.
  const why = client.includes('registry-1.docker.io') ? daemonLog.split('\n').filter(line => line.includes('Attempting next endpoint') && !line.includes('registry-1.docker.io')).slice(-1) : []
  return [...lines, ...why].join(' / ')
}

const randomHex = (bytes: number): string => randomBytes(bytes).toString('hex')

async function certDir (parent: string, name: string, ca: Pem): Promise<string> {
  const dir = join(parent, name)
  await mkdir(dir)
  await writeFile(join(dir, 'ca.crt'), ca.cert)
  return dir
}

function only<T> (items: readonly T[], what: string): T {
  const first = items[0]
  if (first === undefined) throw new Error(`no ${what}`)
  return first
}


t.test('clients log in to the mirror, and the access rules decide what each may pull', { skip }, async t => {
  const work = await makeTempDir('auth')
  t.teardown(() => removeTempDir(work))
  const address = nonLoopbackAddress()
  const ca = await makeCA(work, 'ca')
  const server = await ca.issueServer('mirror', [address ?? '127.0.0.1', '127.0.0.1', 'localhost'])
  const trusted = await certDir(work, 'trusted', ca)

  // Fresh passwords each run, so that finding one in the mirror's files means the mirror wrote it.
  const alice = { name: 'alice', password: `alice-${randomHex(12)}` }
  const bob = { name: 'bob', password: `bob-${randomHex(12)}` }
  const wrong = `wrong-${randomHex(12)}`
  /** Every password the clients send, as typed and as a Basic header carries it with its user. */
  const secrets = [[alice.name, alice.password], [bob.name, bob.password], [alice.name, wrong]]
    .flatMap(([user, password]) => [password ?? '', Buffer.from(`${user ?? ''}:${password ?? ''}`).toString('base64')])
  const htpasswd = join(work, 'htpasswd')
  await setUser(htpasswd, alice.name, alice.password)
  await setUser(htpasswd, bob.name, bob.password)

  const world = await World.create(t, {
    tls: { cert: server.certPath, key: server.keyPath },
    address: address ?? '127.0.0.1',
    // The refusals below fail a few logins from this one address: stay clear of the 429.
    auth: { htpasswd, maxFailures: 1000 },
    access: {
      rules: [
        { repositories: ['docker.io/library/*'], users: ['anonymous', '*'], pull: true },
        { repositories: ['ghcr.io/org/**'], users: ['alice'], pull: true }
      ],
      default: 'deny'
    }
  })
  const mirror = world.mirror
  const hub: TestImage = only(world.imagesOf('docker.io'), 'docker.io image')
  const app: TestImage = world.image('ghcr.io', 'org/app')
  /** host:port/ghcr.io/org/app:v1, the path-prefix form that names the registry. */
  const appAtMirror = `${mirror.locationFor('ghcr.io')}/${app.repository}:${app.tag}`
  const hubAtMirror = `${mirror.host}/${hub.repository}:${hub.tag}`

  await t.test('dockerd: registry-mirrors pulls a docker.io/library image anonymously; docker login; HOST:PORT/ghcr.io/... as alice, not bob', { skip: address === undefined ? 'no IPv4 address outside 127.0.0.0/8: dockerd would take the mirror for insecure and send no credentials' : false }, async t => {
    const dockerd = await Dockerd.start({ mirrors: [mirror.url] })
    t.teardown(() => dockerd.close())
    t.teardown(() => removeDockerCerts(mirror.host))
    await writeDockerCerts(mirror.host, { ca: ca.cert })

    const short = `${hub.repository.replace(/^library\//, '')}:${hub.tag}`
    const anonymous = await dockerd.pull(short).then(() => undefined, (err: unknown) => err)
    t.equal(anonymous, undefined, `docker pull ${short} through registry-mirrors (dockerd sends no credentials to a mirror) works`)
    if (anonymous === undefined) t.same(await dockerd.digestsOf(short), [hub.digest], `${short} has the upstream's digest`)
    else t.comment(`docker pull ${short} via registry-mirrors: ${reason(anonymous)}`)

    const refusedLogin = await dockerd.login(mirror.host, alice.name, wrong).then(() => undefined, (err: unknown) => err)
    t.match(refusedLogin, { message: UNAUTHORIZED }, 'docker login with a wrong password fails with 401 Unauthorized')
    t.comment(`docker login, wrong password: ${reason(refusedLogin)}`)
    t.notMatch(refusedLogin, { message: new RegExp(wrong) }, 'the password is not in the error')

    await dockerd.login(mirror.host, alice.name, alice.password)
    t.pass('docker login as alice succeeds')
    await dockerd.pull(appAtMirror)
    t.same(await dockerd.digestsOf(appAtMirror), [app.digest], `docker pull ${appAtMirror} as alice gets the upstream's digest`)

    await dockerd.removeAll()
    await dockerd.login(mirror.host, bob.name, bob.password)
    t.pass('docker login as bob succeeds (the password is right; /v2/ lets any user in)')
    const refusedPull = await dockerd.pull(appAtMirror).then(() => undefined, (err: unknown) => err)
    t.match(refusedPull, { message: DENIED }, `bob is refused ${appAtMirror}: 403 denied`)
    t.comment(`docker pull as bob: ${reason(refusedPull)}`)
    await dockerd.pull(hubAtMirror)
    t.same(await dockerd.digestsOf(hubAtMirror), [hub.digest], `bob may pull ${hubAtMirror} (docker.io/library/* is for every user)`)
  })

  await t.test('podman: podman login as alice, then a ghcr.io/org image through the path-prefix mirror location; refused without', async t => {
    const mirrors = mirror.registries.map(registry => ({ registry, location: mirror.locationFor(registry), tls: true }))
    const podman = await Podman.create(mirrors, { certDir: trusted })
    t.teardown(() => podman.close())
    const refused = await podman.pull(app.byTag).then(() => undefined, (err: unknown) => err)
    t.match(refused, { message: UNAUTHORIZED }, `without a login, podman pull ${app.byTag} is refused: 401 unauthorized`)
    t.comment(`podman pull, no login: ${reason(refused)}`)

    const wrongLogin = await podman.login(mirror.host, alice.name, wrong).then(() => undefined, (err: unknown) => err)
    t.match(wrongLogin, { message: LOGIN_REFUSED }, 'podman login with a wrong password fails: "invalid username/password"')
    t.comment(`podman login, wrong password: ${reason(wrongLogin)}`)
    await podman.login(mirror.host, alice.name, alice.password)
    t.pass('podman login as alice succeeds')
    await podman.pull(app.byTag)
    t.ok((await podman.digestsOf(app.byTag)).includes(app.digest), `podman pull ${app.byTag} as alice gets the upstream's digest`)

    await podman.removeAll()
    await podman.login(mirror.host, bob.name, bob.password)
    const denied = await podman.pull(app.byTag).then(() => undefined, (err: unknown) => err)
    t.match(denied, { message: DENIED }, `logged in as bob, podman pull ${app.byTag} is refused: 403 denied`)
    t.comment(`podman pull as bob: ${reason(denied)}`)
    await podman.logout(mirror.host)
    const hubAnonymous = await podman.pull(hub.byTag).then(() => undefined, (err: unknown) => err)
    t.equal(hubAnonymous, undefined, `logged out, podman pull ${hub.byTag} (docker.io/library/* is open to anonymous) works`)
    if (hubAnonymous !== undefined) t.comment(`podman pull ${hub.byTag}, no login: ${reason(hubAnonymous)}`)
  })

  await t.test('skopeo: --src-creds alice pulls a ghcr.io/org image; wrong password, bob and anonymous are refused; docker.io/library is open', async t => {
    const skopeo = new Skopeo(work)
    let copies = 0
    const pull = async (reference: string, creds?: { user: string, password: string }): Promise<string> =>
      (await skopeo.pullToDir(reference, join(work, `copy-${++copies}`), { certDir: trusted, creds })).digest
    const refusal = async (reference: string, creds?: { user: string, password: string }): Promise<unknown> =>
      await pull(reference, creds).then(() => undefined, (err: unknown) => err)

    t.equal(await pull(appAtMirror, { user: alice.name, password: alice.password }), app.digest, `--src-creds alice:... ${appAtMirror} gets the upstream's digest`)
    const wrongPassword = await refusal(appAtMirror, { user: alice.name, password: wrong })
    t.match(wrongPassword, { message: UNAUTHORIZED }, 'a wrong password is refused: 401 unauthorized')
    t.notMatch(wrongPassword, { message: new RegExp(wrong) }, 'the password is not in the error')
    const asBob = await refusal(appAtMirror, { user: bob.name, password: bob.password })
    t.match(asBob, { message: DENIED }, 'bob is refused: 403 denied')
    const anonymous = await refusal(appAtMirror)
    t.match(anonymous, { message: UNAUTHORIZED }, 'anonymous is refused the ghcr.io/org image: 401 unauthorized')
    for (const [what, err] of [['wrong password', wrongPassword], ['bob', asBob], ['anonymous', anonymous]] as const) {
      t.comment(`skopeo, ${what}: ${reason(err)}`)
    }
    const hubAnonymous = await pull(hubAtMirror).then(digest => digest, (err: unknown) => err)
    t.equal(hubAnonymous, hub.digest, `anonymous (--src-no-creds) ${hubAtMirror} gets the upstream's digest`)
    if (typeof hubAnonymous !== 'string') t.comment(`skopeo, anonymous ${hubAtMirror}: ${reason(hubAnonymous)}`)
  })

  await t.test('containerd: ctr images pull --user alice:... of a ghcr.io/org image via hosts.toml with ca; refused without --user', async t => {
    const containerd = await Containerd.start()
    t.teardown(() => containerd.close())
    for (const registry of mirror.registries) await containerd.addHost({ registry, host: mirror.url, ca: ca.certPath })
    const refused = await containerd.pull(app.byTag).then(() => undefined, (err: unknown) => err)
    t.match(refused, { message: UNAUTHORIZED }, `ctr images pull ${app.byTag} without --user is refused: 401 unauthorized`)
    t.comment(`ctr pull, no --user: ${reason(refused)}`)
    const asBob = await containerd.pull(app.byTag, { user: bob }).then(() => undefined, (err: unknown) => err)
    t.match(asBob, { message: DENIED }, 'with --user bob:... it is refused: 403 denied')
    t.comment(`ctr pull, --user bob: ${reason(asBob)}`)
    t.equal((await containerd.pull(app.byTag, { user: alice })).digest, app.digest, `ctr images pull --user alice:... ${app.byTag} gets the upstream's digest`)
    t.equal((await containerd.pull(hub.byTag)).digest, hub.digest, `ctr images pull ${hub.byTag} without --user gets the upstream's digest`)
  })

  await t.test('no password is in the mirror\'s data directory or its logs', async t => {
    const files = mirror.files
    if (files === undefined) throw new Error('the mirror does not say where its files are')
    const paths = [...await filesUnder(files.data), ...files.logs]
    const found: string[] = []
    let bytes = 0
    for (const path of paths) {
      const content = await readFile(path)
      bytes += content.length
      for (const secret of secrets) if (content.includes(secret)) found.push(`${path}: ${secret}`)
    }
    t.same(found, [], `no password (plain or in a Basic header) in ${paths.length} files, ${bytes} bytes`)
    t.ok(paths.length > 2 && bytes > 0, 'the mirror did write files to look through')
  })
})
