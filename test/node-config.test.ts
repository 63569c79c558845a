// registry-mirror node-config: hosts.toml merged and restored byte for byte,
// malformed files left alone and reported, unwritable directories reported
// and retried, two configurators racing on one directory, the CRI-O drop-in,
// the containerd version and config read for whether pulls really use the
// mirror, and the probe of a real mirror that then goes away. Runs without
// root; the real containerd and podman are in test/e2e/node-config.test.ts.

import t, { type Test } from 'tap'
import { createServer, type Server } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { parse, type TomlTable } from 'smol-toml'
import { createLogger } from '../lib/log.js'
import { nodeConfigOptions, type NodeConfigArgs } from '../lib/node-config/options.js'
import { NodeConfigurator, type NodeStatus } from '../lib/node-config/node-config.js'
import { addMirror, removeMirror } from '../lib/node-config/hosts-toml.js'
import { askContainerdBinary, parseContainerdVersion, readsDialTimeout, type ContainerdVersion } from '../lib/node-config/containerd-version.js'
import { readContainerdConfig } from '../lib/node-config/containerd-config.js'
import { containerdVerdict } from '../lib/node-config/verdict.js'
import { probeMirror } from '../lib/node-config/probe.js'
import { kubernetesNode, STATUS_ANNOTATION } from '../lib/node-config/kubernetes.js'
import { DROP_IN } from '../lib/node-config/crio.js'
import { makeCA } from '../harness/certs.js'
import { requireTools } from '../harness/tools.js'
import { runCli } from './helpers/child-mirror.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'
import { tempDir } from './helpers/temp-dir.js'

/** A server on 127.0.0.1:0 answering GET /v2/ with this status (a registry, a login wall, a web server). */
async function answering (t: Test, status: number): Promise<string> {
  const server = createServer((req, res) => {
    res.writeHead(req.url === '/v2/' ? status : 404, { 'content-type': 'application/json' })
    res.end('{}')
  })
  return await listen(t, server)
}

async function listen (t: Test, server: Server): Promise<string> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** A port nothing listens on: a server started and closed again. */
async function deadUrl (): Promise<string> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  await new Promise(resolve => server.close(resolve))
  return `http://127.0.0.1:${port}`
}

interface Scene {
  readonly dir: string
  readonly certs: string
  readonly crio: string
  readonly statusFile: string
  readonly logs: Array<Record<string, unknown>>
  configurator: (args?: NodeConfigArgs) => NodeConfigurator
}

async function scene (t: Test, mirror: string, base: NodeConfigArgs = {}): Promise<Scene> {
  const dir = await tempDir(t, 'node-config')
  const certs = join(dir, 'certs.d')
  const crio = join(dir, 'registries.conf.d')
  await mkdir(certs)
  await mkdir(crio)
  // containerd's CRI plugin reading this certs dir, so that pulls really go through the mirror once configured.
  await writeFile(join(dir, 'config.toml'), `version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "${certs}"\n`)
  const statusFile = join(dir, 'run', 'status.json')
  const logs: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') logs.push(JSON.parse(line) as Record<string, unknown>)
      cb()
    }
  })
  const log = createLogger('info', sink)
  return {
    dir,
    certs,
    crio,
    statusFile,
    logs,
    configurator: (args = {}) => new NodeConfigurator({
      options: nodeConfigOptions({
        mirror,
        registries: 'docker.io,ghcr.io',
        'certs-dir': certs,
        'status-file': statusFile,
        'containerd-config': join(dir, 'config.toml'),
        'containerd-version': '2.1.4',
        'probe-timeout': '1s',
        ...base,
        ...args
      }),
      log
    })
  }
}

function hostKeys (text: string): string[] {
  const table = parse(text)
  const host = table.host
  return typeof host === 'object' && host !== null && !Array.isArray(host) && !(host instanceof Date) ? Object.keys(host) : []
}

function withoutMarkedLines (text: string): string {
  const out: string[] = []
  let inside = false
  for (const line of text.split('\n')) {
    if (line.startsWith('# >>> registry-mirror node-config')) inside = true
    else if (line.startsWith('# <<< registry-mirror node-config')) inside = false
    else if (!inside) out.push(line)
  }
  return out.join('\n')
}

async function statusOf (s: Scene): Promise<NodeStatus> {
  return JSON.parse(await readFile(s.statusFile, 'utf8')) as NodeStatus
}

const EXISTING = [
  '# ghcr.io through the corporate cache, then the registry itself',
  'server = "https://ghcr.io"',
  '',
  '# the cache in the data centre',
  '[host."https://cache.corp.example:5000"]',
  '  capabilities = ["pull", "resolve"]',
  '  ca = "/etc/containerd/certs.d/ghcr.io/corp-ca.crt"',
  '',
  '[host."https://ghcr-backup.corp.example"]',
  '  capabilities = ["pull"]',
  '  [host."https://ghcr-backup.corp.example".header]',
  '    x-team = ["platform"]',
  ''
].join('\n')

t.test('the mirror goes first in an existing hosts.toml; every other host stays, in its order, and taking it out restores the file byte for byte', async t => {
  const mirror = await answering(t, 200)
  const s = await scene(t, mirror)
  await mkdir(join(s.certs, 'ghcr.io'))
  const file = join(s.certs, 'ghcr.io', 'hosts.toml')
  await writeFile(file, EXISTING, { mode: 0o640 })

  const first = await s.configurator().runOnce()
  t.equal(first.ok, true, 'nothing to report')
  const text = await readFile(file, 'utf8')
  t.same(hostKeys(text), [mirror, 'https://cache.corp.example:5000', 'https://ghcr-backup.corp.example'], 'the mirror first, then the existing hosts in their order')
  const table = parse(text)
  t.equal(table.server, 'https://ghcr.io', 'the server is kept')
  t.same((table.host as TomlTable)[mirror], { capabilities: ['pull', 'resolve'], dial_timeout: '1s' }, 'pull and resolve, and dial_timeout for containerd 2.1.4')
  t.same((table.host as TomlTable)['https://ghcr-backup.corp.example'], { capabilities: ['pull'], header: { 'x-team': ['platform'] } }, 'the other hosts read as before')
  t.equal(withoutMarkedLines(text), EXISTING, 'outside the marked lines the file is what it was')
  t.equal((await stat(file)).mode & 0o777, 0o640, 'the file keeps its mode')
  t.match(first.containerd?.files.find(f => f.registry === 'ghcr.io'), { state: 'configured', detail: /rest kept/ })
  t.match(first.containerd?.files.find(f => f.registry === 'docker.io'), { state: 'configured', detail: /created/ })

  const again = await s.configurator().runOnce()
  t.equal(await readFile(file, 'utf8'), text, 'a second pass leaves the file as it is')
  t.match(again.containerd?.files.find(f => f.registry === 'ghcr.io'), { detail: 'the mirror is first already' })

  const dockerFile = join(s.certs, 'docker.io', 'hosts.toml')
  const created = await readFile(dockerFile, 'utf8')
  t.equal(parse(created).server, 'https://registry-1.docker.io', 'docker.io\'s created file names Docker Hub\'s registry host as the server')
  t.same(hostKeys(created), [mirror])

  // The mirror stops answering: a configurator probing it takes out only what it wrote.
  const down = await (await scene(t, await deadUrl())).configurator({ 'certs-dir': s.certs }).runOnce()
  t.equal(down.probe.answering, false)
  t.equal(await readFile(file, 'utf8'), EXISTING, 'the existing file is back byte for byte')
  t.equal((await stat(file)).mode & 0o777, 0o640)
  t.same(await readdir(s.certs), ['ghcr.io'], 'the file and directory this tool created are gone')
  t.match(down.containerd?.files, [{ registry: 'docker.io', state: 'removed' }, { registry: 'ghcr.io', state: 'removed' }])
  t.equal(down.containerd?.throughMirror, 'no')
  t.equal(down.ok, true, 'taking the entries out is the tool doing its job, not a problem')
})

t.test('a file this tool created stays when someone added to it, with only the mirror taken out', async t => {
  const s = await scene(t, await answering(t, 200))
  await s.configurator().runOnce()
  const file = join(s.certs, 'docker.io', 'hosts.toml')
  await writeFile(file, `${await readFile(file, 'utf8')}\n[host."https://other.example"]\n  capabilities = ["pull"]\n`)
  await s.configurator({ mirror: await deadUrl() }).runOnce()
  // Another mirror URL given: this tool's block for the first one is still its own, and goes too.
  const left = await readFile(file, 'utf8')
  t.same(hostKeys(left), ['https://other.example'], 'the added host stays, the mirror is gone')
  t.notMatch(left, /registry-mirror node-config: http/, 'no marked lines are left')

  // A file created in a directory that already existed goes, and the directory stays.
  const s2 = await scene(t, await answering(t, 200))
  await mkdir(join(s2.certs, 'ghcr.io'))
  await s2.configurator().runOnce()
  await s2.configurator({ mirror: await deadUrl() }).runOnce()
  t.same(await readdir(join(s2.certs, 'ghcr.io')), [], 'the file it created is gone, the directory it did not create stays')
})

t.test('a hosts.toml that is not TOML, or not shaped as one, is left untouched and reported', async t => {
  const s = await scene(t, await answering(t, 200))
  await mkdir(join(s.certs, 'docker.io'))
  await mkdir(join(s.certs, 'ghcr.io'))
  const broken = 'server = "https://registry-1.docker.io"\n[host."https://a.example"\ncapabilities = ["pull"]\n'
  const odd = 'server = "https://ghcr.io"\nhost = "https://b.example"\n'
  await writeFile(join(s.certs, 'docker.io', 'hosts.toml'), broken)
  await writeFile(join(s.certs, 'ghcr.io', 'hosts.toml'), odd)
  const status = await s.configurator().runOnce()
  t.equal(await readFile(join(s.certs, 'docker.io', 'hosts.toml'), 'utf8'), broken, 'the malformed file is untouched')
  t.equal(await readFile(join(s.certs, 'ghcr.io', 'hosts.toml'), 'utf8'), odd, 'the oddly shaped file is untouched')
  t.match(status.containerd?.files, [
    { registry: 'docker.io', state: 'refused', detail: /not valid TOML.*left untouched/ },
    { registry: 'ghcr.io', state: 'refused', detail: /host is not a table.*left untouched/ }
  ])
  t.equal(status.containerd?.throughMirror, 'no', 'no registry names the mirror, so pulls do not go through it')
  t.equal(status.ok, false)
  const written = await statusOf(s)
  t.equal(written.problems.length, status.problems.length, 'the status file lists the problems')
  t.match(written.problems.join('\n'), /docker\.io\/hosts\.toml: not valid TOML/)
  t.ok(s.logs.some(line => line.level === 40 && /docker\.io\/hosts\.toml: not valid TOML/.test(JSON.stringify(line.problems))), 'and a warning names the file')

  // A hand-written entry for the mirror itself is not this tool's to take out, so it is not touched either.
  const mirror = (await statusOf(s)).mirror
  const handWritten = `[host."${mirror}"]\n  capabilities = ["pull"]\n`
  await writeFile(join(s.certs, 'docker.io', 'hosts.toml'), handWritten)
  const second = await s.configurator().runOnce()
  t.equal(await readFile(join(s.certs, 'docker.io', 'hosts.toml'), 'utf8'), handWritten)
  t.match(second.containerd?.files[0], { state: 'refused', detail: /table of its own/ })
})

t.test('edits that would change how the rest of the file reads are refused', async t => {
  const entry = { registry: 'ghcr.io', mirror: 'http://10.0.0.5:30500', dialTimeout: undefined }
  // A "table header" inside a multi-line string: inserting before it would cut the string.
  const tricky = 'note = """\n[host."https://in-a-string"]\n"""\n[host."https://real.example"]\n'
  t.match(addMirror(tricky, entry, false), { kind: 'refused', reason: /left untouched/ })
  // Marker lines someone broke.
  t.match(removeMirror('# >>> registry-mirror node-config: http://10.0.0.5:30500 (x)\n[host."http://10.0.0.5:30500"]\n', 'ghcr.io'), { kind: 'refused', reason: /without its end/ })
  t.match(removeMirror('# <<< registry-mirror node-config\n', 'ghcr.io'), { kind: 'refused', reason: /without its beginning/ })
  t.match(removeMirror('# >>> registry-mirror node-config: a (x)\n# >>> registry-mirror node-config: b (x)\n', 'ghcr.io'), { kind: 'refused', reason: /inside another/ })
  t.match(removeMirror('# >>> registry-mirror node-config: a (x)\nserver = "x"\n# <<< registry-mirror node-config\n', 'ghcr.io'), { kind: 'refused', reason: /changed by hand/ })
  t.match(addMirror('server = 5\n', entry, false), { kind: 'refused', reason: /server is not a string/ })
  t.match(addMirror('[host]\n"https://a" = 1\n', entry, false), { kind: 'refused', reason: /host\."https:\/\/a" is not a table/ })
  // A file with no table gets the block at its end; one without a final newline gets one.
  const added = addMirror('server = "https://ghcr.io"', entry, false)
  t.match(added, { kind: 'write' })
  if (added.kind === 'write') {
    t.same(hostKeys(added.text), ['http://10.0.0.5:30500'])
    t.match(removeMirror(added.text, 'ghcr.io'), { kind: 'write', text: 'server = "https://ghcr.io"\n' })
  }
  t.match(removeMirror('server = "https://ghcr.io"\n', 'ghcr.io'), { kind: 'unchanged' })
})

t.test('a certs dir that cannot exist is a clear error; in loop mode it is reported and retried until it works', async t => {
  const mirror = await answering(t, 200)
  const s = await scene(t, mirror)
  // Root passes every permission check, so the unwritable path is one under a regular file.
  const blocker = join(s.dir, 'etc-containerd')
  await writeFile(blocker, 'a file where a directory should be')
  const certs = join(blocker, 'certs.d')
  await writeFile(join(s.dir, 'config.toml'), `version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "${certs}"\n`)
  const configurator = s.configurator({ 'certs-dir': certs, interval: '1s', 'probe-timeout': '500ms' })
  const stop = new AbortController()
  const running = configurator.run(stop.signal)
  await waitForStatus(s, status => status.problems.some(p => p.includes('cannot exist: a part of its path is a file')))
  const failing = await statusOf(s)
  t.match(failing.containerd?.files, [{ registry: 'docker.io', state: 'error', detail: /certs\.d cannot exist: a part of its path is a file/ }, { registry: 'ghcr.io', state: 'error' }])
  t.equal(failing.ok, false)

  // Fixed while the loop runs: the next pass configures the node.
  await rm(blocker)
  await mkdir(certs, { recursive: true })
  await waitForStatus(s, status => status.containerd?.files.every(f => f.state === 'configured') === true)
  t.same(hostKeys(await readFile(join(certs, 'ghcr.io', 'hosts.toml'), 'utf8')), [mirror], 'configured once the directory is there')

  // One registry's directory is a file: that registry fails, the other is configured.
  await rm(join(certs, 'ghcr.io'), { recursive: true })
  await writeFile(join(certs, 'ghcr.io'), 'not a directory')
  await waitForStatus(s, status => status.containerd?.files[1]?.state === 'error')
  const partly = await statusOf(s)
  t.match(partly.containerd?.files, [{ registry: 'docker.io', state: 'configured' }, { registry: 'ghcr.io', state: 'error', detail: /a file stands where its directory should be/ }])
  t.equal(partly.containerd?.throughMirror, 'partly')

  stop.abort()
  const stopped = await running
  t.equal(stopped.pass, 'stopping')
  t.equal(await exists(join(certs, 'docker.io')), false, 'stopping takes the entries out (and what this tool created)')
  t.equal(await readFile(join(certs, 'ghcr.io'), 'utf8'), 'not a directory', 'and leaves the rest alone')

  // The command itself: one pass, exit 1, the message on the log.
  const missing = join(s.dir, 'no-such-dir')
  const cli = await runCli(['node-config', '--mirror', mirror, '--registries', 'docker.io', '--certs-dir', missing, '--status-file', s.statusFile, '--containerd-config', join(s.dir, 'none.toml'), '--once'])
  t.equal(cli.code, 1, '--once exits 1 when a problem is left')
  t.match(cli.stdout, new RegExp(`the certs directory ${missing} does not exist: create it, or mount the host's directory at that path`))
})

async function waitForStatus (s: Scene, done: (status: NodeStatus) => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const status = await statusOf(s).catch(() => undefined)
    if (status !== undefined && done(status)) return
    if (Date.now() > deadline) throw new Error(`the status never got there; last: ${JSON.stringify(status)}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

async function exists (path: string): Promise<boolean> {
  return await stat(path).then(() => true, () => false)
}

t.test('two configurators at once leave valid files with exactly one mirror entry', async t => {
  const mirror = await answering(t, 200)
  const s = await scene(t, mirror)
  await mkdir(join(s.certs, 'ghcr.io'))
  await writeFile(join(s.certs, 'ghcr.io', 'hosts.toml'), EXISTING)
  const run = async (): Promise<{ code: number | null, stdout: string, stderr: string }> => await runCli([
    'node-config', '--mirror', mirror, '--registries', 'docker.io,ghcr.io,quay.io', '--certs-dir', s.certs, '--crio-dir', s.crio,
    '--containerd-config', join(s.dir, 'none.toml'), '--containerd-version', '2.1.4', '--status-file', join(s.dir, `status-${Math.random()}.json`), '--once'
  ])
  for (let round = 0; round < 3; round++) {
    const results = await Promise.all([run(), run()])
    for (const r of results) t.not(r.stdout, '', `round ${round}: each configurator ran (${r.stderr})`)
    for (const registry of ['docker.io', 'ghcr.io', 'quay.io']) {
      const text = await readFile(join(s.certs, registry, 'hosts.toml'), 'utf8')
      const hosts = hostKeys(text)
      t.equal(hosts.filter(h => h === mirror).length, 1, `round ${round}: ${registry} has one mirror entry`)
      t.equal(hosts[0], mirror, `round ${round}: first`)
      t.equal((text.match(/# >>> registry-mirror/g) ?? []).length, 1, `round ${round}: one marked block in ${registry}`)
    }
    t.same(hostKeys(await readFile(join(s.certs, 'ghcr.io', 'hosts.toml'), 'utf8')).slice(1), ['https://cache.corp.example:5000', 'https://ghcr-backup.corp.example'])
    t.same((await readdir(join(s.certs, 'ghcr.io'))).sort(), ['hosts.toml'], 'no temp files are left behind')
    t.same(await readdir(s.crio), [DROP_IN])
  }
  // And two at once taking them out again.
  const dead = await deadUrl()
  await Promise.all([0, 1].map(async () => await runCli(['node-config', '--mirror', dead, '--registries', 'docker.io,ghcr.io,quay.io', '--certs-dir', s.certs, '--containerd-config', join(s.dir, 'none.toml'), '--status-file', join(s.dir, `status-${Math.random()}.json`), '--once'])))
  t.equal(await readFile(join(s.certs, 'ghcr.io', 'hosts.toml'), 'utf8'), EXISTING, 'the existing file is restored')
  t.same(await readdir(s.certs), ['ghcr.io'], 'the created files and directories are gone')
})

t.test('probing a real mirror: entries while it answers, gone at the first pass after it closed', async t => {
  const upstream = await startFakeRegistry()
  t.teardown(() => upstream.close())
  makeImage(upstream, 'library/app', 'v1', { layers: [100] })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': upstream.url, 'ghcr.io': upstream.url } })
  const s = await scene(t, mirror.url, { 'crio-dir': undefined })
  const configurator = s.configurator({ 'crio-dir': s.crio })

  const up = await configurator.runOnce()
  t.match(up.probe, { answering: true, status: 200 })
  t.same(hostKeys(await readFile(join(s.certs, 'docker.io', 'hosts.toml'), 'utf8')), [mirror.url])
  const dropIn = parse(await readFile(join(s.crio, DROP_IN), 'utf8'))
  const host = new URL(mirror.url).host
  t.same(dropIn.registry, [
    { prefix: 'docker.io', location: 'docker.io', mirror: [{ location: `${host}/docker.io`, insecure: true }] },
    { prefix: 'ghcr.io', location: 'ghcr.io', mirror: [{ location: `${host}/ghcr.io`, insecure: true }] }
  ], 'the CRI-O drop-in sends each registry to the mirror with its path prefix, plain HTTP allowed')
  // What the drop-in names is what the mirror serves: a manifest by path prefix.
  const res = await fetch(`${mirror.url}/v2/docker.io/library/app/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json' } })
  t.equal(res.status, 200, 'the mirror answers the drop-in\'s location')
  await res.arrayBuffer()

  await mirror.close()
  const down = await configurator.runOnce()
  t.match(down.probe, { answering: false, status: null, problem: /ECONNREFUSED/ })
  t.same(await readdir(s.certs), [], 'the hosts.toml files (and their directories) are gone')
  t.same(await readdir(s.crio), [], 'so is the drop-in')
  t.match(down.crio, { state: 'removed' })
  t.ok(s.logs.some(line => /does not answer/.test(String(line.msg))), 'the log says the mirror does not answer')
})

t.test('the probe: 200 and 401 answer; a 404, a refused connection and silence do not, within the timeout', async t => {
  t.match(await probeMirror(await answering(t, 200), 1000), { answering: true, status: 200 })
  t.match(await probeMirror(await answering(t, 401), 1000), { answering: true, status: 401 })
  t.match(await probeMirror(await answering(t, 404), 1000), { answering: false, status: 404, problem: 'GET /v2/ answered 404' })
  t.match(await probeMirror(await deadUrl(), 1000), { answering: false, problem: /ECONNREFUSED/ })
  const silent = createServer(() => {})
  const url = await listen(t, silent)
  const started = Date.now()
  const result = await probeMirror(url, 300)
  t.match(result, { answering: false, problem: /no answer within 300 ms/ })
  t.ok(Date.now() - started < 2000, 'gives up at the timeout')
})

t.test('CRI-O: the drop-in follows the mirror, and a file of that name that is not this tool\'s is left alone', async t => {
  const s = await scene(t, 'https://mirror.example:5000', { 'certs-dir': 'none' })
  const https = new NodeConfigurator({
    options: nodeConfigOptions({ mirror: 'https://mirror.example:5000', registries: 'quay.io', 'certs-dir': 'none', 'crio-dir': s.crio, 'status-file': s.statusFile }),
    log: createLogger('silent'),
    probe: async () => ({ answering: true, status: 200, problem: undefined, ms: 1 })
  })
  const written = await https.runOnce()
  t.equal(written.containerd, null, '--certs-dir none leaves containerd alone')
  t.same(parse(await readFile(join(s.crio, DROP_IN), 'utf8')).registry, [{ prefix: 'quay.io', location: 'quay.io', mirror: [{ location: 'mirror.example:5000/quay.io' }] }], 'an https mirror needs no insecure')
  await writeFile(join(s.crio, DROP_IN), '[[registry]]\nprefix = "quay.io"\n')
  const refused = await https.runOnce()
  t.match(refused.crio, { state: 'refused', detail: /not written by this tool/ })
  t.equal(await readFile(join(s.crio, DROP_IN), 'utf8'), '[[registry]]\nprefix = "quay.io"\n')
  const missing = new NodeConfigurator({
    options: nodeConfigOptions({ mirror: 'http://10.0.0.5:30500', registries: 'quay.io', 'certs-dir': 'none', 'crio-dir': join(s.dir, 'absent'), 'status-file': s.statusFile }),
    log: createLogger('silent'),
    probe: async () => ({ answering: false, status: undefined, problem: 'down', ms: 1 })
  })
  t.match((await missing.runOnce()).crio, { state: 'error', detail: /registries\.conf\.d directory .*absent does not exist/ })
})

t.test('dial_timeout is written only for containerd versions that read it (2.0.7+, 2.1+)', async t => {
  const v = (text: string): ContainerdVersion | undefined => parseContainerdVersion(text, 'given')
  t.equal(readsDialTimeout(v('2.1.0')), true)
  t.equal(readsDialTimeout(v('2.3.4')), true)
  t.equal(readsDialTimeout(v('2.0.7')), true, 'backported to 2.0.7')
  t.equal(readsDialTimeout(v('2.0.6')), false)
  t.equal(readsDialTimeout(v('1.7.34')), false)
  t.equal(readsDialTimeout(v('3.0.0')), true)
  t.equal(readsDialTimeout(undefined), false, 'not when the version is unknown')
  t.equal(readsDialTimeout({ text: '2.x', major: 2, minor: undefined, patch: undefined, source: 'config' }), false, 'nor when only the major is known')

  const mirror = await answering(t, 200)
  for (const [version, expected] of [['2.0.6', undefined], ['2.0.7', '500ms'], ['1.7.27', undefined]] as const) {
    const s = await scene(t, mirror)
    const status = await s.configurator({ 'containerd-version': version, 'dial-timeout': '500ms' }).runOnce()
    const table = parse(await readFile(join(s.certs, 'docker.io', 'hosts.toml'), 'utf8'))
    t.equal((table.host as Record<string, TomlTable>)[mirror]?.dial_timeout, expected, `containerd ${version}: dial_timeout ${expected ?? 'not written'}`)
    t.equal(status.containerd?.dialTimeout, expected ?? null)
  }
  const s = await scene(t, mirror)
  await s.configurator({ 'dial-timeout': '0' }).runOnce()
  t.notMatch(await readFile(join(s.certs, 'docker.io', 'hosts.toml'), 'utf8'), /dial_timeout/, '--dial-timeout 0 writes none')
})

t.test('containerd\'s version: parsed from each way it is written, and asked of the real binary', async t => {
  t.match(parseContainerdVersion('github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4', 'binary'), { text: '2.1.4', major: 2, minor: 1, patch: 4 })
  t.match(parseContainerdVersion('1.6.20~ds1 1.6.20~ds1-1+deb12u3', 'binary'), { text: '1.6.20~ds1', major: 1, minor: 6, patch: 20 })
  t.match(parseContainerdVersion('v1.7.23-k3s2', 'kubernetes'), { text: '1.7.23-k3s2', major: 1, minor: 7 })
  t.equal(parseContainerdVersion('unknown', 'binary'), undefined)
  t.equal(await askContainerdBinary('/nonexistent/containerd'), undefined, 'no binary, no version')
  const skip = requireTools(t, ['containerd'])
  t.test('the installed containerd', { skip }, async t => {
    const version = await askContainerdBinary('containerd')
    t.match(version, { source: 'binary', major: Number, minor: Number, patch: Number })
    t.comment(`containerd --version: ${version?.text ?? 'nothing'}`)
  })
})

t.test('whether containerd\'s CRI pulls read the certs dir, from its version and config.toml', async t => {
  const dir = await tempDir(t, 'containerd-config')
  const certs = '/etc/containerd/certs.d'
  const config = async (name: string, text: string | undefined): Promise<Awaited<ReturnType<typeof readContainerdConfig>>> => {
    const path = join(dir, name)
    if (text !== undefined) await writeFile(path, text)
    return await readContainerdConfig(path)
  }
  const v = (text: string): ContainerdVersion | undefined => parseContainerdVersion(text, 'given')
  const v3 = (body: string): string => `version = 3\n[plugins."io.containerd.cri.v1.images"]\n${body}\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"\n`

  const v2 = await config('v2.toml', 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n')
  t.match(containerdVerdict(v('1.7.27'), v2, certs), { throughMirror: 'yes', pullMode: 'local', configPath: certs })
  t.match(containerdVerdict(v('2.1.4'), v2, certs), { throughMirror: 'yes', pullMode: 'transfer' }, 'one directory: the transfer service reads it too')

  const list = await config('list.toml', v3(''))
  t.match(containerdVerdict(v('2.0.5'), list, certs), { throughMirror: 'yes', pullMode: 'local' }, '2.0 pulls by itself and reads every directory of the list')
  const no = containerdVerdict(v('2.1.4'), list, certs)
  t.match(no, { throughMirror: 'no', pullMode: 'transfer', reason: /is a list, which containerd's transfer service .* does not read/ })
  t.match(no.fix[0], /use_local_image_pull = true/)
  t.match(containerdVerdict(undefined, list, certs), { throughMirror: 'unknown', reason: /if it is 2\.1 or newer/ })
  t.match(containerdVerdict(v('2.1.4'), await config('local.toml', v3('  use_local_image_pull = true')), certs), { throughMirror: 'yes', pullMode: 'local', reason: /use_local_image_pull = true/ })
  t.match(containerdVerdict(v('2.1.4'), await config('discard.toml', v3('  discard_unpacked_layers = true')), certs), { throughMirror: 'yes', pullMode: 'local', reason: /discard_unpacked_layers = true/ }, 'settings the transfer service lacks make 2.1 pull by itself')
  t.match(containerdVerdict(v('2.1.4'), await config('downloads.toml', v3('  max_concurrent_downloads = 10')), certs), { pullMode: 'local', reason: /max_concurrent_downloads = 10/ })

  const absent = await config('absent.toml', undefined)
  t.match(containerdVerdict(v('2.0.5'), absent, certs), { throughMirror: 'no', reason: /no .*absent\.toml, so containerd's CRI plugin has no registry config_path/ })
  t.match(containerdVerdict(v('2.2.1'), absent, certs), { throughMirror: 'no', configPath: '/etc/containerd/certs.d:/etc/docker/certs.d', pullMode: 'transfer' }, 'from 2.2 the default is the list, which the transfer service does not read')
  t.match(containerdVerdict(undefined, absent, certs), { throughMirror: 'unknown' })
  t.match(containerdVerdict(v('1.7.27'), await config('elsewhere.toml', 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/docker/certs.d"\n'), certs), { throughMirror: 'no', reason: /does not name \/etc\/containerd\/certs\.d/, fix: [/\[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\] config_path = "\/etc\/containerd\/certs\.d"/] })
  t.match(containerdVerdict(v('2.1.4'), await config('broken.toml', 'version = 3\n[plugins\n'), certs), { throughMirror: 'unknown', reason: /is not valid TOML/ })

  // Imports (EKS puts its settings in conf.d): later files win.
  await mkdir(join(dir, 'conf.d'))
  await writeFile(join(dir, 'conf.d', '10-pull.toml'), 'version = 3\n[plugins."io.containerd.cri.v1.images"]\n  use_local_image_pull = true\n')
  await writeFile(join(dir, 'conf.d', 'ignored.txt'), 'not toml at all [')
  const imported = await config('imports.toml', `imports = ["conf.d/*.toml"]\n${v3('')}`)
  t.same(imported.imports, [join(dir, 'conf.d', '10-pull.toml')])
  t.match(containerdVerdict(v('2.1.4'), imported, certs), { throughMirror: 'yes', pullMode: 'local' })
})

t.test('in Kubernetes: the runtime version is read from the node, and the status annotation patched when it changes', async t => {
  const dir = await tempDir(t, 'node-config-kube')
  const ca = await makeCA(dir)
  const pem = await ca.issueServer('apiserver', ['127.0.0.1'])
  const seen: Array<{ method: string, url: string, auth: string | undefined, type: string | undefined, body: string }> = []
  const api = createHttpsServer({ cert: pem.cert, key: pem.key }, (req, res) => {
    let body = ''
    req.on('data', (chunk: Buffer) => { body += chunk.toString() })
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', auth: req.headers.authorization, type: req.headers['content-type'], body })
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ metadata: { name: 'node-a' }, status: { nodeInfo: { containerRuntimeVersion: 'containerd://2.1.4' } } }))
    })
  })
  api.listen(0, '127.0.0.1')
  await once(api, 'listening')
  t.teardown(() => api.close())
  await writeFile(join(dir, 'token'), 'token-1\n')
  const env = { NODE_NAME: 'node-a', KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String((api.address() as AddressInfo).port) }
  const paths = { token: join(dir, 'token'), ca: ca.certPath }
  t.equal(await kubernetesNode({}, paths), undefined, 'outside Kubernetes there is none')
  t.equal(await kubernetesNode(env, { token: join(dir, 'no-token'), ca: ca.certPath }), undefined, 'nor without a service-account token')
  const node = await kubernetesNode(env, paths)
  if (node === undefined) throw new Error('no node API')

  const mirror = await answering(t, 200)
  const s = await scene(t, mirror)
  await writeFile(join(s.dir, 'config.toml'), 'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "/x"\n')
  const configurator = new NodeConfigurator({
    options: nodeConfigOptions({ mirror, registries: 'docker.io', 'certs-dir': s.certs, 'status-file': s.statusFile, 'containerd-config': join(s.dir, 'config.toml'), 'containerd-bin': '/nonexistent/containerd' }),
    log: createLogger('silent'),
    kubernetes: node
  })
  const first = await configurator.runOnce()
  t.equal(first.node, 'node-a')
  t.match(first.containerd, { version: '2.1.4', versionSource: 'kubernetes', dialTimeout: '1s' }, 'the version from the node object, where the binary is out of reach')
  t.match(seen[0], { method: 'GET', url: '/api/v1/nodes/node-a', auth: 'Bearer token-1' })
  const patch = seen.find(r => r.method === 'PATCH')
  t.match(patch, { url: '/api/v1/nodes/node-a', type: 'application/merge-patch+json', auth: 'Bearer token-1' })
  const annotation = (JSON.parse(patch?.body ?? '{}') as { metadata: { annotations: Record<string, string> } }).metadata.annotations[STATUS_ANNOTATION]
  t.same(JSON.parse(annotation ?? '{}'), { mirror, answering: true, containerd: 'no', crio: null, problems: 1 }, 'the annotation says the mirror answers but pulls do not use it (config_path /x)')

  await writeFile(join(dir, 'token'), 'token-2\n')
  await configurator.runOnce()
  t.equal(seen.filter(r => r.method === 'PATCH').length, 1, 'an unchanged status is not patched again')
  t.equal(seen.filter(r => r.method === 'GET').length, 1, 'nor the version asked again')
  await writeFile(join(s.dir, 'config.toml'), 'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "' + s.certs + '"\n')
  await configurator.runOnce()
  const patches = seen.filter(r => r.method === 'PATCH')
  t.equal(patches.length, 2, 'a changed status is')
  t.equal(patches[1]?.auth, 'Bearer token-2', 'with the token read anew')
  t.match(patches[1]?.body, /\\"containerd\\":\\"yes\\"/)

  // An API server that refuses: reported, never fatal.
  api.removeAllListeners('request')
  api.on('request', (req, res) => { req.resume(); res.writeHead(403, { 'content-type': 'application/json' }); res.end('{"kind":"Status","message":"nodes \\"node-a\\" is forbidden"}') })
  await writeFile(join(s.dir, 'config.toml'), '')
  const refused = await configurator.runOnce()
  t.match(refused.problems.join('\n'), /registry-mirror\.io\/status could not be set: PATCH \/api\/v1\/nodes\/node-a answered 403: nodes "node-a" is forbidden/)
})

t.test('every bad option is named, with the form it should take', async t => {
  const cases: Array<[string[], RegExp]> = [
    [['--registries', 'docker.io'], /--mirror \(or MIRROR_URL\) is required/],
    [['--mirror', 'http://10.0.0.5:30500'], /--registries \(or MIRROR_REGISTRIES\) is required/],
    [['--mirror', '10.0.0.5:30500', '--registries', 'docker.io'], /--mirror: expected the mirror's base URL .* got "10\.0\.0\.5:30500"/],
    [['--mirror', 'http://10.0.0.5:30500/v2', '--registries', 'docker.io'], /no path, query or credentials\), got "http:\/\/10\.0\.0\.5:30500\/v2"/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io,https://ghcr.io'], /--registries: "https:\/\/ghcr\.io" is not a registry host/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io,localhost:99999'], /"localhost:99999" is not a registry host/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--interval', '10'], /--interval: expected a duration like "5m" or "1h30m", got "10" \(a bare number is ambiguous/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--interval', '500ms'], /--interval: at least 1s, got "500ms"/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--interval', '5s', '--probe-timeout', '5s'], /--probe-timeout: must be shorter than --interval \(5s\), got "5s"/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--probe-timeout', '0'], /--probe-timeout: must be longer than 0/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--certs-dir', 'certs.d'], /--certs-dir: expected an absolute path \(or none\), got "certs\.d"/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--certs-dir', 'none'], /--certs-dir none without --crio-dir leaves nothing to configure/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--crio-dir', 'rel'], /--crio-dir: expected an absolute path, got "rel"/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--containerd-version', '2.1'], /--containerd-version: expected a version like 2\.1\.4, got "2\.1"/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--dial-timeout', 'soon'], /--dial-timeout: expected a duration/],
    [['--mirror', 'http://m:1', '--registries', 'docker.io', '--bogus'], /node-config: Unknown option '--bogus'/]
  ]
  for (const [args, message] of cases) {
    const r = await runCli(['node-config', ...args])
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`)
    t.match(r.stderr, message, args.join(' '))
  }
  const help = await runCli(['node-config', '--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /node-config --mirror URL --registries LIST/)
  t.match((await runCli(['--help'])).stdout, /node-config --mirror URL/, 'the usage names the command')
})

t.test('MIRROR_URL and MIRROR_REGISTRIES stand in for the flags', async t => {
  const options = nodeConfigOptions({}, { MIRROR_URL: 'http://10.0.0.5:30500/', MIRROR_REGISTRIES: 'docker.io, ghcr.io,docker.io' })
  t.equal(options.mirror, 'http://10.0.0.5:30500', 'a trailing slash is dropped')
  t.same(options.registries, ['docker.io', 'ghcr.io'], 'spaces and repeats dropped')
  t.equal(options.certsDir, '/etc/containerd/certs.d')
  t.equal(options.intervalMs, 10_000)
  t.equal(Object.isFrozen(options), true)
})

t.test('the probe takes the status and hangs up: a mirror that answers with an endless body holds no connection', async t => {
  let closed = false
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    const chunk = Buffer.alloc(64 * 1024)
    const pump = (): void => { while (!res.destroyed && res.write(chunk)) { /* until the socket pushes back */ } }
    res.on('drain', pump)
    res.on('close', () => { closed = true })
    pump()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const result = await probeMirror(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, 2000)
  t.match(result, { answering: true, status: 200 })
  await new Promise(resolve => setTimeout(resolve, 200))
  t.ok(closed, 'the endless answer was cut by the probe, not left reading')
})
