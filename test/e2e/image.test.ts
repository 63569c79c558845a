// The Docker image, built from the Dockerfile as a user builds it, on a
// dockerd of the test's own. The node:22 base images cannot be pulled here,
// so harness/node-base-image.sh makes stand-ins (Debian bookworm and Node 22
// from the npm registry, as the official images are). The container then runs
// with users and a metrics token, as a site exposing it would, and must report
// healthy (its health check must not mistake /v2/'s login challenge for a
// failure), run as the unprivileged node user with the allocator setting the
// README's Memory section gives, serve a login's pull from a reference
// registry upstream, and stop cleanly on docker stop.

import t from 'tap'
import { chmod, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import { requireTools } from '../../harness/tools.js'
import { ReferenceRegistry } from '../../harness/reference-registry.js'
import { Dockerd, overlayWorks } from '../../harness/dockerd.js'
import { Skopeo } from '../../harness/skopeo.js'
import { amd64, writeOciLayout } from '../../harness/oci-layout.js'
import { freePort } from '../../harness/ports.js'
import { run } from '../../harness/process.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { waitFor } from '../../harness/wait.js'
import { setUser } from '../../lib/auth/htpasswd.js'

const skip = requireTools(t, ['dockerd', 'docker', 'containerd', 'debootstrap', 'docker-registry', 'skopeo'], { root: true })
// The stand-in base images (debootstrap) and the build (npm ci and better-sqlite3 on vfs) take
// about 7 minutes on a quiet machine and twice that on a busy one: more than tap's 15 minutes
// per file allows, though within the steps' own bounds (15 and 20 minutes).
t.setTimeout(40 * 60_000)
const root = fileURLToPath(new URL('../..', import.meta.url))
const IMAGE = 'registry-mirror:e2e'

t.test('the image builds on Node 22, runs as node, is healthy with auth on, serves a pull, and stops cleanly', { skip }, async t => {
  const work = await makeTempDir('image')
  t.teardown(() => removeTempDir(work))
  const upstream = await ReferenceRegistry.start({ label: 'docker.io' })
  t.teardown(() => upstream.close())
  const skopeo = new Skopeo(work)
  const layout = await writeOciLayout(join(work, 'layout'), { tag: 'v1', seed: `image-${randomBytes(4).toString('hex')}`, platforms: [amd64], layerSizes: [256 * 1024] })
  await skopeo.push(layout.dir, 'v1', `${upstream.host}/library/app:v1`)

  // overlay2 where the kernel allows it: on vfs each of the build's steps copies the whole
  // root filesystem (node_modules included), which took the build from minutes to a quarter hour.
  const storageDriver = await overlayWorks() ? 'overlay2' : 'vfs'
  const dockerd = await Dockerd.start({ storageDriver })
  t.teardown(() => dockerd.close())
  let started = Date.now()
  const took = (): string => { const s = ((Date.now() - started) / 1000).toFixed(0); started = Date.now(); return `${s} s` }
  await run(join(root, 'harness', 'node-base-image.sh'), [dockerd.socket], { timeoutMs: 900_000 })
  t.comment(`stand-in base images: ${took()}`)
  await dockerd.docker(['build', '--network', 'host', '--tag', IMAGE, root], 1_200_000)
  t.comment(`docker build on ${storageDriver}: ${took()}`)
  t.pass('docker build succeeds')

  // The config a site mounts: its own port, users, and a metrics token (auth requires one).
  const config = join(work, 'config')
  await mkdir(config)
  const password = `alice-${randomBytes(12).toString('hex')}`
  await setUser(join(config, 'htpasswd'), 'alice', password)
  const port = await freePort()
  await writeFile(join(config, 'config.yml'), [
    `listen: 127.0.0.1:${port}`,
    'storage:',
    '  path: /var/lib/registry-mirror',
    'upstreams:',
    '  docker.io:',
    `    url: ${upstream.url}`,
    'auth:',
    '  htpasswd: htpasswd',
    'metrics:',
    `  token: metrics-${randomBytes(8).toString('hex')}`,
    ''
  ].join('\n'))
  // The container's user (node, uid 1000) reads the mounted files.
  await chmod(work, 0o755)
  await chmod(config, 0o755)
  await chmod(join(config, 'htpasswd'), 0o644)
  await chmod(join(config, 'config.yml'), 0o644)

  const name = `mirror-e2e-${randomBytes(4).toString('hex')}`
  await dockerd.docker(['run', '--detach', '--name', name, '--network', 'host',
    '--health-interval', '1s', '--health-start-period', '1s',
    '--env', `MIRROR_HEALTH_URL=http://127.0.0.1:${port}/healthz`,
    '--volume', `${config}:/etc/registry-mirror:ro`, IMAGE])
  t.teardown(async () => { await dockerd.docker(['rm', '--force', name]).catch(() => {}) })

  const inspect = async (format: string): Promise<string> => (await dockerd.docker(['inspect', '--format', format, name])).stdout.trim()
  await waitFor('the container to report healthy', async () => {
    const status = await inspect('{{.State.Health.Status}}')
    if (status === 'unhealthy') throw new Error(`unhealthy: ${await inspect('{{json .State.Health.Log}}')}`)
    return status === 'healthy'
  }, { timeoutMs: 60_000, intervalMs: 500 })
  t.pass('healthy, with /v2/ answering 401 to anyone without a login')

  t.equal((await dockerd.docker(['exec', name, 'id', '-u'])).stdout.trim(), '1000', 'runs as node (uid 1000)')
  t.match(await inspect('{{json .Config.Env}}'), /"MALLOC_MMAP_THRESHOLD_=131072"/, 'with the allocator setting of README, Memory')
  t.match((await dockerd.docker(['exec', name, 'node', '--version'])).stdout, /^v22\./, 'on Node 22')

  const pulled = await skopeo.pullToDir(`127.0.0.1:${port}/library/app:v1`, join(work, 'pulled'), { creds: { user: 'alice', password } })
  t.equal(pulled.digest, layout.top.digest, 'alice pulls the upstream\'s digest through the container')

  await dockerd.docker(['stop', '--time', '20', name], 60_000)
  t.equal(await inspect('{{.State.ExitCode}}'), '0', 'docker stop: a clean exit')
  const logs = await dockerd.docker(['logs', name])
  t.notOk(`${logs.stdout}${logs.stderr}`.includes(password), 'no password in the container\'s log')
})
