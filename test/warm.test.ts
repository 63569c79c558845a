// `registry-mirror warm`, run as users run it (the CLI in a child process)
// against a real fake upstream whose request log says what was fetched.

import t, { type Test } from 'tap'
import { existsSync } from 'node:fs'
import { rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { CacheIndex } from '../lib/db/cache-index.js'
import { setUser } from '../lib/auth/htpasswd.js'
import { pinnedContent } from '../lib/cache/pins.js'
import { ImageListError } from '../lib/errors.js'
import { parseImageList, resolveImages } from '../lib/warm/image-list.js'
import { matchesPlatform, parsePlatform } from '../lib/oci/platform.js'
import { createProgress } from '../lib/warm/progress.js'
import { auditStorage } from './helpers/audit.js'
import { CLI, runCli, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { makeImage, makeIndex } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'
import { tempDir } from './helpers/temp-dir.js'
import { rejectedBy } from './helpers/throws.js'

interface Site { dir: string, storage: string, config: string, fake: FakeRegistry }

/** A fake upstream standing in for docker.io, ghcr.io and quay.io, and a config naming them. */
async function site (t: Test): Promise<Site> {
  const dir = await tempDir(t, 'mirror-warm')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const storage = join(dir, 'data')
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url, 'ghcr.io': fake.url, 'quay.io': fake.url } })
  return { dir, storage, config, fake }
}

function withIndex<T> (storage: string, fn: (index: CacheIndex) => T): T {
  const index = new CacheIndex({ path: join(storage, 'index.db') })
  try {
    return fn(index)
  } finally {
    index.close()
  }
}

const blobGets = (fake: FakeRegistry): string[] => fake.requests.filter(r => r.method === 'GET' && r.path.includes('/blobs/')).map(r => r.path)

t.test('every way users write an image reaches the right upstream repository, and each blob is fetched once', async t => {
  const { fake, config, storage } = await site(t)
  const latest = makeImage(fake, 'library/nginx', 'latest', { layers: [3000] })
  const pinned = makeImage(fake, 'library/nginx', '1.27', { layers: [5000, 700] })
  const app = makeIndex(fake, 'org/app', 'v1', ['linux/amd64', 'linux/arm64'], 4000)
  const quay = makeImage(fake, 'x/y', 'tag', { layers: [1200], mediaType: 'docker' })

  const r = await runCli(['warm', '--config', config, 'nginx', 'nginx:1.27', `library/nginx@${pinned.manifestDigest}`, 'ghcr.io/org/app:v1', 'quay.io/x/y:tag'])
  t.equal(r.code, 0, r.stderr)
  t.equal(fake.count('GET', '/v2/library/nginx/manifests/latest'), 1, 'nginx is library/nginx:latest on docker.io')
  t.equal(fake.count('GET', '/v2/library/nginx/manifests/1.27'), 1)
  t.equal(fake.count('GET', '/v2/org/app/manifests/v1'), 1)
  t.equal(fake.count('GET', '/v2/x/y/manifests/tag'), 1)
  const all = [...latest.blobDigests, ...pinned.blobDigests, ...app.blobDigests, ...quay.blobDigests]
  for (const digest of all) t.equal(fake.count('GET', `/blobs/${digest}`), 1, `blob ${digest.slice(0, 19)} fetched once`)
  t.equal(blobGets(fake).length, all.length, 'nothing else fetched')
  t.match(r.stdout, /warmed 5 of 5 images/)
  withIndex(storage, index => {
    t.equal(index.getTag('docker.io/library/nginx', 'latest')?.digest, latest.manifestDigest)
    t.equal(index.getTag('docker.io/library/nginx', '1.27')?.digest, pinned.manifestDigest)
    t.equal(index.getTag('ghcr.io/org/app', 'v1')?.digest, app.indexDigest, 'the index under the tag, as upstream serves it')
    t.equal(index.getTag('quay.io/x/y', 'tag')?.digest, quay.manifestDigest)
    for (const d of app.manifestDigests) t.ok(index.getManifest(d), `child manifest ${d.slice(0, 19)} cached`)
  })
  t.same(auditStorage(storage).problems, [], 'every cached blob is verified on disk')
})

t.test('a registry that is not a configured upstream is refused before anything is fetched', async t => {
  const { fake, config } = await site(t)
  makeImage(fake, 'library/nginx', '1.27', { layers: [100] })
  const r = await runCli(['warm', '--config', config, 'nginx:1.27', 'registry.example.com/team/tool:2', 'Nginx:UPPER'])
  t.equal(r.code, 2)
  t.match(r.stderr, /argument 2: registry\.example\.com\/team\/tool:2: registry registry\.example\.com is not an upstream of this mirror \(configured: docker\.io, ghcr\.io, quay\.io\)/)
  t.match(r.stderr, /argument 3: Nginx:UPPER: invalid repository name/)
  t.equal(fake.requests.length, 0, 'the upstream heard nothing')
})

t.test('a list file: one reference a line, # comments, blank lines, CRLF; bad lines named by file and line', async t => {
  t.same(parseImageList('# images for the lab\n\nnginx:1.27   # web\r\n  ghcr.io/org/app:v1\n#done\n', 'images.txt'), [
    { text: 'nginx:1.27', origin: 'images.txt:3' },
    { text: 'ghcr.io/org/app:v1', origin: 'images.txt:4' }
  ])
  const routing = { upstreams: new Set(['docker.io']), defaultUpstream: 'docker.io' }
  const dir = await tempDir(t, 'mirror-list')
  const good = join(dir, 'good.txt')
  await writeFile(good, 'nginx:1.27\nlibrary/nginx:1.27\n\n# again, written differently: the same image\ndocker.io/library/nginx:1.27\nalpine\n')
  t.same((await resolveImages([], [good], routing)).map(i => i.name), ['docker.io/library/nginx:1.27', 'docker.io/library/alpine:latest'], 'repeats dropped')
  const bad = join(dir, 'bad.txt')
  await writeFile(bad, 'nginx:1.27\nnginx 1.27\nghcr.io/org/app:v1\n')
  const refusal = await rejectedBy(t, resolveImages([], [bad, join(dir, 'missing.txt')], routing), ImageListError, 'expected a refusal')
  const problems = refusal?.problems ?? []
  t.match(problems[0], /missing\.txt: cannot read the image list/)
  t.equal(problems[1], `${bad}:2: expected one image reference, got "nginx 1.27"`)
  t.equal(problems[2], `${bad}:3: ghcr.io/org/app:v1: registry ghcr.io is not an upstream of this mirror (configured: docker.io)`)
  await t.rejects(resolveImages([], [], routing), { message: /no images given/ })

  const { fake, config, storage } = await site(t)
  const a = makeImage(fake, 'library/nginx', '1.27', { layers: [100] })
  const b = makeImage(fake, 'org/app', 'v1', { layers: [200] })
  const list = join(dir, 'images.txt')
  await writeFile(list, '# lab images\r\n\r\nnginx:1.27\r\nghcr.io/org/app:v1 # the app\r\n')
  const r = await runCli(['warm', '--config', config, '--file', list])
  t.equal(r.code, 0, r.stderr)
  withIndex(storage, index => {
    t.equal(index.getTag('docker.io/library/nginx', '1.27')?.digest, a.manifestDigest)
    t.equal(index.getTag('ghcr.io/org/app', 'v1')?.digest, b.manifestDigest)
  })
})

t.test('--platform takes only the named platforms of an index; a platform the index lacks is a failure naming what it has', async t => {
  t.same(parsePlatform('linux/arm/v7'), { os: 'linux', architecture: 'arm', variant: 'v7' })
  t.throws(() => parsePlatform('linux'), /expected os\/architecture\[\/variant\]/)
  t.ok(matchesPlatform([parsePlatform('linux/arm')], { os: 'linux', architecture: 'arm', variant: 'v6' }), 'no variant asked: any variant')
  t.notOk(matchesPlatform([parsePlatform('linux/arm/v7')], { os: 'linux', architecture: 'arm', variant: 'v6' }))

  const { fake, config } = await site(t)
  const multi = makeIndex(fake, 'library/multi', 'v1', ['linux/amd64', 'linux/arm64', 'linux/arm/v7'], 3000)
  const [amd64, arm64, armv7] = multi.images
  if (amd64 === undefined || arm64 === undefined || armv7 === undefined) throw new Error('three platforms expected')
  const r = await runCli(['warm', '--config', config, '--platform', 'linux/arm64', '--platform', 'linux/arm/v7', 'multi:v1'])
  t.equal(r.code, 0, r.stderr)
  for (const d of [...arm64.blobDigests, ...armv7.blobDigests]) t.equal(fake.count('GET', `/blobs/${d}`), 1)
  for (const d of amd64.blobDigests) t.equal(fake.count('GET', `/blobs/${d}`), 0, 'amd64 blobs not fetched')
  t.equal(fake.count('GET', `/manifests/${amd64.manifestDigest}`), 0, 'nor its manifest')

  fake.reset()
  const none = await runCli(['warm', '--config', config, '--platform', 'linux/s390x', 'multi:v1'])
  t.equal(none.code, 1)
  t.match(none.stdout, /docker\.io\/library\/multi:v1: no manifest for linux\/s390x in the index \(it has linux\/amd64, linux\/arm64, linux\/arm\/v7\)/)
  t.equal(blobGets(fake).length, 0)
})

t.test('a second warm fetches no blob from upstream: what is cached is skipped, and an interrupted warm resumes', async t => {
  const { fake, config } = await site(t)
  const image = makeImage(fake, 'library/app', 'v1', { layers: [40_000, 3000, 500] })
  const [bad] = image.layerDigests
  if (bad === undefined) throw new Error('a layer expected')
  fake.setBlobFault(bad, { kind: 'corrupt', times: 1 })
  const first = await runCli(['warm', '--config', config, 'app:v1'])
  t.equal(first.code, 1, 'the corrupt layer failed the first run')
  t.equal(blobGets(fake).length, image.blobDigests.length)

  fake.reset()
  const second = await runCli(['warm', '--config', config, 'app:v1'])
  t.equal(second.code, 0, second.stderr)
  t.same(blobGets(fake), [`/v2/library/app/blobs/${bad}`], 'only the blob that failed is fetched again')

  fake.reset()
  const third = await runCli(['warm', '--config', config, 'app:v1'])
  t.equal(third.code, 0, third.stderr)
  t.same(blobGets(fake), [], 'no blob GET reached the upstream')
  t.match(third.stdout, /warmed 1 of 1 images: 4 blobs, .* \(0 fetched, 0 B; 4 already cached/)
})

t.test('failures are summed up at the end, each image named with the reason, and the exit code is 1', async t => {
  const { fake, config, storage } = await site(t)
  const good = makeImage(fake, 'library/good', 'v1', { layers: [2000] })
  const corrupt = makeImage(fake, 'library/corrupt', 'v1', { layers: [5000] })
  const layer = corrupt.layerDigests[0] ?? ''
  fake.setBlobFault(layer, { kind: 'corrupt' })
  makeImage(fake, 'library/gone', 'v1', { layers: [100] })
  fake.setManifestFault('library/gone', 'v1', { kind: 'status', status: 503 })
  const r = await runCli(['warm', '--config', config, 'good:v1', 'nope:1', 'corrupt:v1', 'gone:v1'])
  t.equal(r.code, 1)
  t.match(r.stdout, /warmed 1 of 4 images/)
  t.match(r.stdout, /3 failed:/)
  t.match(r.stdout, /docker\.io\/library\/nope:1: manifest unknown to upstream \(MANIFEST_UNKNOWN\)/)
  t.match(r.stdout, new RegExp(`docker\\.io/library/corrupt:v1: blob ${layer}: .*does not match`))
  t.match(r.stdout, /docker\.io\/library\/gone:v1: .*\(UNAVAILABLE\)/)
  t.match(r.stderr, /good:v1: 2 blobs, .* \(2 fetched, 0 cached\) in [\d.]+s: sha256:[a-f0-9]{64}/, 'progress lines (not a TTY) on stderr')
  withIndex(storage, index => {
    t.ok(index.getBlob(good.layerDigests[0] ?? ''), 'the good image is cached')
    t.notOk(index.getBlob(layer), 'the corrupt layer is not')
  })
  t.same(auditStorage(storage).problems, [])
})

t.test('--server warms through a running mirror, whose cache then serves a second warm without upstream', async t => {
  const { fake, config, storage } = await site(t)
  const image = makeIndex(fake, 'org/app', 'v1', ['linux/amd64', 'linux/arm64'], 6000)
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url, 'ghcr.io': fake.url } })
  const first = await runCli(['warm', '--config', config, '--server', mirror.url, 'ghcr.io/org/app:v1'])
  t.equal(first.code, 0, first.stderr)
  for (const d of image.blobDigests) t.equal(fake.count('GET', `/blobs/${d}`), 1)
  t.equal(mirror.index.getTag('ghcr.io/org/app', 'v1')?.digest, image.indexDigest, 'the running mirror cached it')
  t.notOk(existsSync(join(storage, 'index.db')), 'the local data directory was not touched')

  fake.reset()
  const second = await runCli(['warm', '--config', config, '--server', mirror.url, 'ghcr.io/org/app:v1'])
  t.equal(second.code, 0, second.stderr)
  t.same(blobGets(fake), [])
  t.match(second.stdout, /0 fetched/)

  const missing = await runCli(['warm', '--config', config, '--server', mirror.url, 'ghcr.io/org/nope:v1'])
  t.equal(missing.code, 1)
  t.match(missing.stdout, /ghcr\.io\/org\/nope:v1: manifest unknown to upstream \(the mirror answered HTTP 404 MANIFEST_UNKNOWN\)/)
  const refused = await runCli(['warm', '--config', config, '--server', mirror.url, '--pin', 'ghcr.io/org/app:v1'])
  t.equal(refused.code, 2)
  t.match(refused.stderr, /--pin works on the data directory/)
})

t.test('--server with --user logs in to a mirror with auth; without it, or with a wrong password, the warm is refused', async t => {
  const { fake, config, storage } = await site(t)
  const image = makeImage(fake, 'org/app', 'v1', { layers: [3000] })
  const htpasswd = join(storage, '..', `htpasswd-${process.pid}`)
  await setUser(htpasswd, 'ops', 'ops password')
  t.teardown(async () => await rm(htpasswd, { force: true }))
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url, 'ghcr.io': fake.url }, auth: { htpasswd }, metrics: { enabled: false } })
  const anonymous = await runCli(['warm', '--config', config, '--server', mirror.url, 'ghcr.io/org/app:v1'])
  t.equal(anonymous.code, 1)
  t.match(anonymous.stdout, /authentication required to pull ghcr\.io\/org\/app \(the mirror answered HTTP 401 UNAUTHORIZED\)/)
  const wrong = await runCli(['warm', '--config', config, '--server', mirror.url, '--user', 'ops', 'ghcr.io/org/app:v1'], 'guess\n')
  t.equal(wrong.code, 1)
  t.match(wrong.stdout, /the user name or password is wrong/)
  const ok = await runCli(['warm', '--config', config, '--server', mirror.url, '--user', 'ops', 'ghcr.io/org/app:v1'], 'ops password\n')
  t.equal(ok.code, 0, ok.stdout + ok.stderr)
  t.equal(mirror.index.getTag('ghcr.io/org/app', 'v1')?.digest, image.manifestDigest)
  const stray = await runCli(['warm', '--config', config, '--user', 'ops', 'ghcr.io/org/app:v1'], 'ops password\n')
  t.equal(stray.code, 2)
  t.match(stray.stderr, /--user is for warm --server only/)
})

t.test('--pin pins each image warmed', async t => {
  const { fake, config, storage } = await site(t)
  makeImage(fake, 'library/app', 'v1', { layers: [100] })
  const r = await runCli(['warm', '--config', config, '--pin', 'app:v1', 'nope:1'])
  t.equal(r.code, 1)
  t.match(r.stdout, /pinned docker\.io\/library\/app:v1/)
  withIndex(storage, index => t.same(index.pins().map(p => `${p.repository}:${p.reference}`), ['docker.io/library/app:v1'], 'only the image that was warmed'))
})

t.test('--concurrency bounds the blob downloads under way at once', async t => {
  const { fake, config } = await site(t)
  const image = makeImage(fake, 'library/wide', 'v1', { layers: [10_000, 10_000, 10_000, 10_000, 10_000] })
  const gates = image.blobDigests.map(d => fake.gateBlob(d, 100))
  const child = spawn(process.execPath, [CLI, 'warm', '--config', config, '--concurrency', '2', 'wide:v1'], { stdio: 'ignore' })
  const exited = once(child, 'exit')
  const waiting = (): number => gates.reduce((n, g) => n + g.waiting, 0)
  const deadline = Date.now() + 10_000
  while (waiting() < 2 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  await new Promise(resolve => setTimeout(resolve, 300))
  t.equal(waiting(), 2, 'two downloads held at the upstream')
  t.equal(blobGets(fake).length, 2, 'and no third started')
  for (const g of gates) g.release()
  const [code] = await exited as [number | null]
  t.equal(code, 0)
  t.equal(blobGets(fake).length, image.blobDigests.length)
})

t.test('progress: bars redrawn in place on a terminal, plain lines elsewhere', async t => {
  let tty = ''
  const terminal = createProgress({ isTTY: true, columns: 100, write: (s: string) => { tty += s } }, 'warming', { redrawMs: 5 })
  const row = terminal.row('docker.io/library/app:v1')
  row.plan(2, 2048)
  row.advance(1024)
  await new Promise(resolve => setTimeout(resolve, 20))
  t.match(tty, /\[#{12}-{12}\]  50% docker\.io\/library\/app:v1  1\.0 KiB\/2\.0 KiB  0\/2 blobs/)
  t.match(tty, /total {2}1\.0 KiB\/2\.0 KiB {2}0\/2 blobs {2}0\/1 done/)
  row.blobDone('sha256:aa', 1024, 'fetched', 1024)
  row.blobDone('sha256:bb', 1024, 'cached', 0)
  row.done('2 blobs')
  terminal.close()
  t.match(tty, /\x1b\[2A\r\x1b\[J✓ docker\.io\/library\/app:v1 {2}2 blobs\n/, 'the finished row is printed once, over the live block')

  let plain = ''
  const lines = createProgress({ isTTY: false, write: (s: string) => { plain += s } }, 'warming')
  const r = lines.row('docker.io/library/app:v1')
  r.plan(1, 10)
  r.blobDone('sha256:aa', 10, 'fetched', 10)
  r.failed('boom')
  lines.close()
  t.equal(plain, [
    'warming docker.io/library/app:v1',
    'docker.io/library/app:v1: 1 blobs, 10 B',
    'docker.io/library/app:v1: sha256:aa 10 B fetched (1/1)',
    'docker.io/library/app:v1: FAILED: boom',
    ''
  ].join('\n'))
  t.notOk(plain.includes('\x1b'), 'no escape codes in a log')
})

t.test('an OCI artifact manifest: warm fetches its blobs, the same ones a pin of it protects', async t => {
  const { fake, config, storage } = await site(t)
  const subject = makeImage(fake, 'org/app', 'v1', { layers: [900] })
  const signature = fake.addBlob('org/app', Buffer.from('signature bytes'))
  const emptyConfig = fake.addBlob('org/app', Buffer.from('{}'))
  const artifact = fake.addManifest('org/app', 'sig', {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    artifactType: 'application/vnd.example.signature',
    config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: emptyConfig, size: 2 },
    blobs: [{ mediaType: 'application/octet-stream', digest: signature, size: 15 }],
    subject: subject.descriptor
  }, 'application/vnd.oci.image.manifest.v1+json')
  const r = await runCli(['warm', '--config', config, '--pin', 'ghcr.io/org/app:sig'])
  t.equal(r.code, 0, r.stderr)
  t.equal(fake.count('GET', `/blobs/${signature}`), 1, 'the artifact\'s blob was fetched')
  t.equal(fake.count('GET', `/blobs/${emptyConfig}`), 1, 'and its config')
  for (const digest of subject.blobDigests) t.equal(fake.count('GET', `/blobs/${digest}`), 0, 'the subject is not part of the artifact')
  withIndex(storage, index => {
    t.ok(index.getBlob(signature), 'the blob is cached')
    t.ok(index.getManifest(artifact))
    t.same([...pinnedContent(index).digests].sort(), [artifact, emptyConfig, signature].sort(), 'the pin protects exactly what warm fetched')
  })
})
