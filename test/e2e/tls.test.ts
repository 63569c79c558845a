// The mirror over TLS, with the real clients configured the way the README's
// "TLS" section tells users to make them trust a private CA: dockerd through
// /etc/docker/certs.d/<host:port>/ca.crt, containerd through `ca` (and
// `client`) in hosts.toml, podman through a cert dir and a mirror entry
// without `insecure = true`, skopeo through --src-cert-dir. Each pulls the
// upstream's digests; with another CA's certificate the same pull fails, so
// the verification is real. Then, with tls.clientCA set, the same clients get
// in with a client certificate that CA signed, and are refused without one.
//
// The mirror is reached directly (no TrafficRecorder, which speaks plain HTTP
// only), on an address outside 127.0.0.0/8 when the machine has one: dockerd
// takes every registry and mirror in 127.0.0.0/8 for insecure and then reads
// nothing in certs.d (a wrong CA pulls just as well, and no client certificate
// is sent), so on loopback its part would prove nothing.

import t from 'tap'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { requireTools } from '../../harness/tools.js'
import { World, type TestImage } from '../../harness/world.js'
import { makeCA, type Pem } from '../../harness/certs.js'
import { Dockerd, writeDockerCerts, removeDockerCerts } from '../../harness/dockerd.js'
import { Containerd } from '../../harness/containerd.js'
import { Podman } from '../../harness/podman.js'
import { Skopeo } from '../../harness/skopeo.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { pullAndCheck, type PullingClient } from '../../harness/pull-scenario.js'
import { mirrorKind } from '../../harness/mirror.js'
import { nonLoopbackAddress } from '../../harness/ports.js'

const skip = requireTools(t, ['openssl', 'docker-registry', 'skopeo', 'containerd', 'ctr', 'dockerd', 'docker', 'podman'], { root: true }) ||
  (mirrorKind() === 'reference' ? 'E2E_MIRROR=reference: the reference proxy runs without TLS' : false)

/** What Go's crypto/x509 says of a certificate no trusted CA signed. */
const UNKNOWN_AUTHORITY = /x509: certificate signed by unknown authority/
/** What a Go client hears when the mirror wants a certificate it did not send (TLS 1.3: certificate_required; 1.2: bad_certificate). */
const CERTIFICATE_REFUSED = /remote error: tls: (certificate required|bad certificate)/

/** A directory as skopeo's --src-cert-dir and podman's --cert-dir want it: ca.crt, client.cert, client.key. */
async function certDir (parent: string, name: string, files: { ca: Pem, client?: Pem }): Promise<string> {
  const dir = join(parent, name)
  await mkdir(dir)
  await writeFile(join(dir, 'ca.crt'), files.ca.cert)
  if (files.client !== undefined) {
    await writeFile(join(dir, 'client.cert'), files.client.cert)
    await writeFile(join(dir, 'client.key'), files.client.key, { mode: 0o600 })
  }
  return dir
}

/** Where the mirror listens: outside loopback if the machine can, and why dockerd's part is skipped if not. */
function listenAddress (): { address: string, dockerdSkip: string | false } {
  const address = nonLoopbackAddress()
  return address === undefined
    ? { address: '127.0.0.1', dockerdSkip: 'no IPv4 address outside 127.0.0.0/8, and dockerd checks no certificate in there' }
    : { address, dockerdSkip: false }
}

function firstImage (world: World): TestImage {
  const first = world.images[0]
  if (first === undefined) throw new Error('no test images')
  return first
}

/** skopeo names the mirror itself: host/library/multi for Docker Hub, host/ghcr.io/org/app for the rest. */
function atMirror (world: World, image: TestImage, by: 'tag' | 'digest' = 'tag'): string {
  const repository = image.registry === 'docker.io'
    ? `${world.mirror.host}/${image.repository}`
    : `${world.mirror.locationFor(image.registry)}/${image.repository}`
  return by === 'tag' ? `${repository}:${image.tag}` : `${repository}@${image.digest}`
}

function dockerdClient (dockerd: Dockerd): PullingClient {
  return {
    name: 'dockerd',
    // Short Docker Hub names, as users type them: registry-mirrors serve Docker Hub only.
    reference: image => `${image.repository.replace(/^library\//, '')}:${image.tag}`,
    pull: async reference => { await dockerd.pull(reference) },
    digestsOf: async reference => await dockerd.digestsOf(reference),
    removeAll: async () => { await dockerd.removeAll() }
  }
}

function ctrClient (containerd: Containerd): PullingClient {
  return {
    name: 'ctr',
    reference: image => image.byTag,
    pull: async reference => { await containerd.pull(reference) },
    digestsOf: async reference => [(await containerd.image(reference)).digest],
    removeAll: async () => { await containerd.removeAll() }
  }
}

function podmanClient (podman: Podman): PullingClient {
  return {
    name: 'podman',
    reference: image => image.byTag,
    pull: async reference => { await podman.pull(reference) },
    digestsOf: async reference => await podman.digestsOf(reference),
    removeAll: async () => { await podman.removeAll() }
  }
}

/** podman's registries.conf for the mirror: path-prefix locations, TLS verified (no insecure = true). */
function podmanMirrors (world: World): Array<{ registry: string, location: string, tls: boolean }> {
  return world.mirror.registries.map(registry => ({ registry, location: world.mirror.locationFor(registry), tls: true }))
}

/** skopeo copying each image out of the mirror into a fresh dir: layout, verifying with certDir. */
function skopeoClient (world: World, skopeo: Skopeo, work: string, certDir: string): PullingClient {
  const pulled = new Map<string, string>()
  let copies = 0
  return {
    name: 'skopeo',
    reference: (image, by) => atMirror(world, image, by),
    pull: async reference => {
      const { digest } = await skopeo.pullToDir(reference, join(work, `copy-${++copies}`), { certDir })
      pulled.set(reference, digest)
    },
    digestsOf: async reference => {
      const digest = pulled.get(reference)
      return digest === undefined ? [] : [digest]
    },
    removeAll: async () => {}
  }
}

t.test('dockerd, containerd, podman and skopeo trust the mirror\'s private CA where the README says to put it', { skip }, async t => {
  const certs = await makeTempDir('tls')
  t.teardown(() => removeTempDir(certs))
  const { address, dockerdSkip } = listenAddress()
  const ca = await makeCA(certs, 'ca')
  const server = await ca.issueServer('mirror', [address, '127.0.0.1', 'localhost'])
  const other = await makeCA(certs, 'other-ca')
  const trusted = await certDir(certs, 'trusted', { ca })
  const wrong = await certDir(certs, 'wrong', { ca: other })

  const world = await World.create(t, { tls: { cert: server.certPath, key: server.keyPath }, address })
  const mirror = world.mirror
  const first = firstImage(world)
  t.ok(mirror.url.startsWith(`https://${address}:`), `the mirror logs an https:// url: ${mirror.url}`)

  await t.test('dockerd: registry-mirrors https://, the CA in /etc/docker/certs.d/<host:port>/ca.crt, read at each pull', { skip: dockerdSkip }, async t => {
    const dockerd = await Dockerd.start({ mirrors: [mirror.url] })
    t.teardown(() => dockerd.close())
    // Written after dockerd started, and replaced while it runs: no restart in between.
    t.teardown(() => removeDockerCerts(mirror.host))
    await writeDockerCerts(mirror.host, { ca: other.cert })
    await t.rejects(dockerd.pull('multi:v1'), UNKNOWN_AUTHORITY, 'with another CA\'s certificate there, dockerd refuses the mirror (and Docker Hub is out of reach)')
    await writeDockerCerts(mirror.host, { ca: ca.cert })
    for (const image of world.imagesOf('docker.io')) await pullAndCheck(t, world, dockerdClient(dockerd), image, 'tag')
  })

  await t.test('containerd: ca = "..." in hosts.toml', async t => {
    const containerd = await Containerd.start()
    t.teardown(() => containerd.close())
    for (const registry of mirror.registries) await containerd.addHost({ registry, host: mirror.url, ca: other.certPath })
    await t.rejects(containerd.pull(first.byTag), UNKNOWN_AUTHORITY, 'with another CA in hosts.toml, ctr refuses the mirror')
    for (const registry of mirror.registries) await containerd.addHost({ registry, host: mirror.url, ca: ca.certPath })
    for (const image of world.images) await pullAndCheck(t, world, ctrClient(containerd), image, 'tag')
  })

  await t.test('podman: a mirror location with a path prefix, no insecure = true, and podman pull --cert-dir', async t => {
    const misled = await Podman.create(podmanMirrors(world), { certDir: wrong })
    t.teardown(() => misled.close())
    await t.rejects(misled.pull(first.byTag), UNKNOWN_AUTHORITY, 'with another CA in the cert dir, podman refuses the mirror')
    const podman = await Podman.create(podmanMirrors(world), { certDir: trusted })
    t.teardown(() => podman.close())
    for (const image of world.images) await pullAndCheck(t, world, podmanClient(podman), image, 'tag')
  })

  await t.test('skopeo: --src-cert-dir with ca.crt', async t => {
    const work = await makeTempDir('skopeo')
    t.teardown(() => removeTempDir(work))
    const skopeo = new Skopeo(work)
    await t.rejects(skopeo.pullToDir(atMirror(world, first), join(work, 'refused'), { certDir: wrong }), UNKNOWN_AUTHORITY,
      'with another CA in the cert dir, skopeo refuses the mirror')
    for (const image of world.images) await pullAndCheck(t, world, skopeoClient(world, skopeo, work, trusted), image, 'tag')
  })
})

t.test('with tls.clientCA, the clients get in with a client certificate that CA signed, and only with one', { skip }, async t => {
  const certs = await makeTempDir('mtls')
  t.teardown(() => removeTempDir(certs))
  const { address, dockerdSkip } = listenAddress()
  const ca = await makeCA(certs, 'ca')
  const server = await ca.issueServer('mirror', [address, '127.0.0.1', 'localhost'])
  const clients = await makeCA(certs, 'clients-ca')
  const builder = await clients.issueClient('builder')
  const caOnly = await certDir(certs, 'ca-only', { ca })
  const withClient = await certDir(certs, 'builder', { ca, client: builder })

  const world = await World.create(t, { tls: { cert: server.certPath, key: server.keyPath, clientCA: clients.certPath }, address })
  const mirror = world.mirror
  const first = firstImage(world)

  await t.test('dockerd: client.cert and client.key beside ca.crt in /etc/docker/certs.d/<host:port>/', { skip: dockerdSkip }, async t => {
    const dockerd = await Dockerd.start({ mirrors: [mirror.url] })
    t.teardown(() => dockerd.close())
    t.teardown(() => removeDockerCerts(mirror.host))
    await writeDockerCerts(mirror.host, { ca: ca.cert })
    await t.rejects(dockerd.pull('multi:v1'), CERTIFICATE_REFUSED, 'without a client certificate, the mirror refuses dockerd')
    await writeDockerCerts(mirror.host, { ca: ca.cert, client: builder })
    for (const image of world.imagesOf('docker.io')) await pullAndCheck(t, world, dockerdClient(dockerd), image, 'tag')
  })

  await t.test('containerd: client = [["crt", "key"]] in hosts.toml', async t => {
    const containerd = await Containerd.start()
    t.teardown(() => containerd.close())
    for (const registry of mirror.registries) await containerd.addHost({ registry, host: mirror.url, ca: ca.certPath })
    await t.rejects(containerd.pull(first.byTag), CERTIFICATE_REFUSED, 'without a client certificate, the mirror refuses ctr')
    for (const registry of mirror.registries) await containerd.addHost({ registry, host: mirror.url, ca: ca.certPath, client: [builder.certPath, builder.keyPath] })
    for (const image of world.images) await pullAndCheck(t, world, ctrClient(containerd), image, 'tag')
  })

  await t.test('podman: client.cert and client.key beside ca.crt in the --cert-dir', async t => {
    const refused = await Podman.create(podmanMirrors(world), { certDir: caOnly })
    t.teardown(() => refused.close())
    await t.rejects(refused.pull(first.byTag), CERTIFICATE_REFUSED, 'without a client certificate, the mirror refuses podman')
    const podman = await Podman.create(podmanMirrors(world), { certDir: withClient })
    t.teardown(() => podman.close())
    for (const image of world.images) await pullAndCheck(t, world, podmanClient(podman), image, 'tag')
  })

  await t.test('skopeo: client.cert and client.key beside ca.crt in --src-cert-dir', async t => {
    const work = await makeTempDir('skopeo')
    t.teardown(() => removeTempDir(work))
    const skopeo = new Skopeo(work)
    // Signed by the server's CA, not the client CA: Go offers no certificate whose issuer
    // the mirror's CertificateRequest does not name, so the mirror sees none (test/tls.test.ts
    // shows the mirror refusing one that is presented).
    const stranger = await certDir(certs, 'stranger', { ca, client: await ca.issueClient('stranger') })
    await t.rejects(skopeo.pullToDir(atMirror(world, first), join(work, 'no-cert'), { certDir: caOnly }), CERTIFICATE_REFUSED,
      'without a client certificate, the mirror refuses skopeo')
    await t.rejects(skopeo.pullToDir(atMirror(world, first), join(work, 'stranger'), { certDir: stranger }), CERTIFICATE_REFUSED,
      'with only a client certificate another CA signed, skopeo is refused too')
    for (const image of world.images) await pullAndCheck(t, world, skopeoClient(world, skopeo, work, withClient), image, 'tag')
  })
})
