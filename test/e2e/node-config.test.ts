// registry-mirror node-config against the real clients: it writes certs.d
// hosts.toml files that ctr (--hosts-dir) pulls through the mirror with,
// keeping a site's own host entry, and a registries.conf.d drop-in that
// podman reads (as CRI-O does). Then the mirror stops answering (its port
// swallows connections, the way an unreachable mirror does): one more pass
// takes the entries out, and ctr pulls from the registries directly without
// waiting on the mirror.

import t from 'tap'
import { createServer, type Socket } from 'node:net'
import { once } from 'node:events'
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parse } from 'smol-toml'
import { requireTools } from '../../harness/tools.js'
import { World } from '../../harness/world.js'
import { Containerd } from '../../harness/containerd.js'
import { Podman } from '../../harness/podman.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { runCli } from '../helpers/child-mirror.js'

const skip = requireTools(t, ['docker-registry', 'skopeo', 'containerd', 'ctr', 'podman'], { root: true })

function hostKeys (text: string): string[] {
  const host = parse(text).host
  return typeof host === 'object' && host !== null && !Array.isArray(host) && !(host instanceof Date) ? Object.keys(host) : []
}

t.test('node-config points ctr and podman at the mirror while it answers, and takes it out when it stops', { skip }, async t => {
  const world = await World.create(t)
  const containerd = await Containerd.start()
  t.teardown(() => containerd.close())
  const work = await makeTempDir('node-config')
  t.teardown(() => removeTempDir(work))
  const certs = containerd.hostsDir
  const home = join(work, 'home')
  const dropIns = join(home, '.config', 'containers', 'registries.conf.d')
  await mkdir(dropIns, { recursive: true })
  const podman = await Podman.create([], { home })
  t.teardown(() => podman.close())

  const docker = world.upstreams.get('docker.io')
  const ghcr = world.upstreams.get('ghcr.io')
  if (docker === undefined || ghcr === undefined) throw new Error('the world has no docker.io or ghcr.io upstream')
  // The site's own files, each with a host entry of its own standing for the registry (the real ones
  // are out of reach here). containerd before 1.7.32 ignores a hosts.toml without a [host] table, server and all.
  await mkdir(join(certs, 'docker.io'), { recursive: true })
  await mkdir(join(certs, 'ghcr.io'), { recursive: true })
  const dockerOriginal = `# the site's registry for docker.io\nserver = "https://registry-1.docker.io"\n[host."${docker.url}"]\n  capabilities = ["pull", "resolve"]\n`
  const ghcrOriginal = `server = "https://ghcr.io"\n\n# the site's ghcr.io cache\n[host."${ghcr.url}"]\n  capabilities = ["pull", "resolve"]\n`
  await writeFile(join(certs, 'docker.io', 'hosts.toml'), dockerOriginal)
  await writeFile(join(certs, 'ghcr.io', 'hosts.toml'), ghcrOriginal)
  // containerd's CRI plugin set to read this certs dir (ctr is told with --hosts-dir).
  const config = join(work, 'config.toml')
  await writeFile(config, `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${certs}"\n`)
  const statusFile = join(work, 'status.json')
  const configure = async (): Promise<{ code: number | null, stdout: string, stderr: string }> => await runCli([
    'node-config', '--mirror', world.mirror.url, '--registries', 'docker.io,ghcr.io',
    '--certs-dir', certs, '--crio-dir', dropIns, '--containerd-config', config, '--status-file', statusFile,
    '--probe-timeout', '1s', '--once'
  ])

  const up = await configure()
  t.equal(up.code, 0, `configured (${up.stdout}${up.stderr})`)
  const status = JSON.parse(await readFile(statusFile, 'utf8')) as { containerd: { version: string, versionSource: string, throughMirror: string, dialTimeout: string | null } }
  t.match(status.containerd, { versionSource: 'binary', throughMirror: 'yes' }, `the installed containerd (${status.containerd.version}) reads the certs dir`)
  t.same(hostKeys(await readFile(join(certs, 'ghcr.io', 'hosts.toml'), 'utf8')), [world.mirror.url, ghcr.url], 'the mirror first, the site\'s host kept after it')
  t.same(await readdir(dropIns), ['50-registry-mirror.conf'])

  const multi = world.image('docker.io', 'library/multi')
  const app = world.image('ghcr.io', 'org/app')
  let seen = world.mirror.requests().length
  await containerd.pull(multi.byTag)
  await containerd.pull(app.byTag)
  const ctrRequests = world.mirror.requests().slice(seen)
  t.ok(ctrRequests.some(r => r.path === '/v2/library/multi/manifests/v1' && r.uri.includes('ns=docker.io')), 'ctr resolved docker.io/library/multi at the mirror, with ?ns=docker.io')
  t.ok(ctrRequests.some(r => /^\/v2\/org\/app\/blobs\/sha256:/.test(r.path) && r.uri.includes('ns=ghcr.io')), 'and fetched ghcr.io/org/app\'s blobs from it, with ?ns=ghcr.io')
  t.equal((await containerd.image(multi.byTag)).digest, multi.digest)

  seen = world.mirror.requests().length
  await podman.pull(multi.byTag)
  const podmanRequests = world.mirror.requests().slice(seen)
  t.ok(podmanRequests.some(r => r.path.startsWith('/v2/docker.io/library/multi/manifests/')), 'podman read the drop-in and asked the mirror with the path prefix')
  t.ok((await podman.digestsOf(multi.byTag)).includes(multi.digest), 'podman pulled the image the upstream has')
  await containerd.removeAll()

  // The mirror stops answering: its port still takes connections but nothing ever answers,
  // which costs containerd its dial and response waits on every request while hosts.toml names it.
  const port = Number(new URL(world.mirror.url).port)
  await world.mirror.close()
  const sockets = new Set<Socket>()
  const blackhole = createServer(socket => { sockets.add(socket); socket.on('error', () => {}) })
  blackhole.listen(port, '127.0.0.1')
  await once(blackhole, 'listening')
  t.teardown(() => { for (const socket of sockets) socket.destroy(); blackhole.close() })

  const down = await configure()
  t.equal(down.code, 0, `taking the mirror out is a clean pass (${down.stdout}${down.stderr})`)
  t.match(down.stdout, /does not answer \(no answer within 1000 ms\)/)
  t.equal(await readFile(join(certs, 'docker.io', 'hosts.toml'), 'utf8'), dockerOriginal, 'docker.io\'s file is as the site wrote it')
  t.equal(await readFile(join(certs, 'ghcr.io', 'hosts.toml'), 'utf8'), ghcrOriginal, 'so is ghcr.io\'s, its own host kept')
  t.same(await readdir(dropIns), [], 'the drop-in is gone')

  const probed = sockets.size
  const marks = await world.markUpstreams()
  const started = Date.now()
  await containerd.pull(multi.byTag)
  await containerd.pull(app.byTag)
  const seconds = (Date.now() - started) / 1000
  t.ok(seconds < 10, `ctr pulled both images from the registries directly in ${seconds.toFixed(1)} s, not waiting on the mirror`)
  t.equal(sockets.size, probed, 'ctr never connected to the dead mirror (only the probe did)')
  const direct = await world.upstreamRequestsSince(marks)
  t.ok(direct.some(line => line.startsWith('docker.io GET /v2/library/multi/blobs/')), 'docker.io\'s blobs came from the site\'s host for it')
  t.ok(direct.some(line => line.startsWith('ghcr.io GET /v2/org/app/blobs/')), 'and ghcr.io\'s from its own')
})
