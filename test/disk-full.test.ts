// A small filesystem (tmpfs with a size limit; loop devices are not needed)
// that fills up during pulls: the mirror evicts what it can, and when that is
// not enough it serves blobs straight from upstream, verified, uncached.

import t from 'tap'
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { readBody, startMirror } from './helpers/mirror.js'
import { LogSink } from '../lib/log-sink.js'
import { freeBytes } from '../lib/store/disk-space.js'
import { runCli, writeConfig } from './helpers/child-mirror.js'
import { makeImage } from './helpers/images.js'
import { tempDir } from './helpers/temp-dir.js'
import { sample } from './helpers/prometheus.js'

const MiB = 1024 * 1024

function mountSmallFilesystem (sizeMiB: number): { path: string, unmount: () => void } | string {
  const path = mkdtempSync(join(tmpdir(), 'mirror-full-'))
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m`, 'tmpfs', path], { stdio: 'pipe' })
  } catch (err) {
    rmSync(path, { recursive: true, force: true })
    return `cannot mount a tmpfs here (${err instanceof Error ? err.message.split('\n')[0] ?? '' : String(err)}); run as root`
  }
  return {
    path,
    unmount: () => {
      execFileSync('umount', [path])
      rmSync(path, { recursive: true, force: true })
    }
  }
}

const probe = mountSmallFilesystem(1)
let skip: string | false = false
if (typeof probe === 'string') {
  if (process.env.CI !== undefined) throw new Error(`disk-full tests must run in CI: ${probe}`)
  skip = `SKIPPED LOUDLY: ${probe}`
  console.error(skip)
} else {
  probe.unmount()
}

/** Fills the volume until `leave` bytes are free. */
function fillUntil (dir: string, leave: number, name = 'filler'): string {
  const path = join(dir, name)
  const free = Number(execFileSync('df', ['--output=avail', '-B1', dir]).toString().split('\n')[1])
  writeFileSync(path, Buffer.alloc(Math.max(0, free - leave)))
  return path
}

t.test('a blob larger than the free space is served from upstream uncached, verified, and the mirror stays up', { skip }, async t => {
  const fs = mountSmallFilesystem(16) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage: join(fs.path, 'data') })
  fillUntil(fs.path, 6 * MiB)
  const bytes = randomBytes(8 * MiB)
  const digest = fake.addBlob('library/app', bytes)
  const res = await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)
  t.equal(res.status, 200)
  const body = await readBody(res)
  t.ok('bytes' in body && body.bytes.equals(bytes), 'the pull succeeds with the right bytes')
  t.equal(mirror.index.getBlob(digest), undefined, 'not cached')
  t.ok(mirror.logs.some(l => l.msg === 'no room in the cache: serving the blob from upstream without caching it'), 'logged')
  t.equal((await fetch(`${mirror.url}/v2/`)).status, 200, 'still up')
  t.same(readdirSync(join(fs.path, 'data', 'tmp')), [], 'no temp file left')
})

t.test('when the disk is short of room, least recently used blobs are evicted to make it, then the new one is cached', { skip }, async t => {
  const fs = mountSmallFilesystem(24) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage: join(fs.path, 'data') })
  const old = fake.addBlob('library/app', randomBytes(6 * MiB))
  await (await fetch(`${mirror.url}/v2/library/app/blobs/${old}`)).arrayBuffer()
  fillUntil(fs.path, 5 * MiB)
  const bytes = randomBytes(6 * MiB)
  const digest = fake.addBlob('library/app', bytes)
  const body = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  t.ok('bytes' in body && body.bytes.equals(bytes))
  t.equal(mirror.index.getBlob(old), undefined, 'the old blob was evicted to make room')
  t.ok(mirror.index.getBlob(digest), 'the new one is cached')
})

t.test('the disk filling up in the middle of a download: that download is cut, nothing half-written stays, the retry succeeds', { skip }, async t => {
  const fs = mountSmallFilesystem(24) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage: join(fs.path, 'data') })
  const bytes = randomBytes(10 * MiB)
  const digest = fake.addBlob('library/app', bytes)
  const gate = fake.gateBlob(digest, 1 * MiB)
  const first = fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)
  await gate.reached
  await new Promise(resolve => setTimeout(resolve, 100))
  // Something else takes the room the download counted on.
  const filler = fillUntil(fs.path, 512 * 1024)
  gate.release()
  const cut = await readBody(await first)
  t.ok('error' in cut, 'the client of the failed download is cut off, never handed a short blob as complete')
  const logged = (): boolean => mirror.logs.some(l => l.msg === 'disk full while caching a blob; nothing cached')
  for (let i = 0; i < 100 && (readdirSync(join(fs.path, 'data', 'tmp')).length > 0 || !logged()); i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.same(readdirSync(join(fs.path, 'data', 'tmp')), [], 'the partial file is gone')
  t.ok(logged(), 'logged')
  t.ok(await freeBytes(fs.path) < 10 * MiB)
  const retry = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  t.ok('bytes' in retry && retry.bytes.equals(bytes), 'the retry (as clients do) succeeds, served uncached')
  rmSync(filler)
})

t.test('with the index unable to write (disk full), tags past their TTL and new manifests are still answered; /readyz and stats say degraded until it can again', { skip }, async t => {
  const fs = mountSmallFilesystem(16) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  let clock = 1_000_000
  const storage = join(fs.path, 'data')
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage, tagTtl: 1000, hooks: { now: () => clock } })
  const v1 = makeImage(fake, 'library/app', 'v1', { layers: [10] })
  const v2 = makeImage(fake, 'library/app', 'v2', { layers: [10] })
  t.equal((await fetch(`${mirror.url}/v2/library/app/manifests/v1`)).status, 200)
  t.equal((await fetch(`${mirror.url}/v2/`)).status, 200)
  mirror.flushAccess()
  const filler = fillUntil(fs.path, 0)
  fillUntil(fs.path, 0, 'filler-2')
  clock += 10_000

  const stale = await fetch(`${mirror.url}/v2/library/app/manifests/v1`)
  t.equal(stale.status, 200, 'a tag past its TTL is revalidated and answered, though its confirmation cannot be written')
  t.equal(stale.headers.get('docker-content-digest'), v1.manifestDigest)
  await stale.arrayBuffer()
  const fresh = await fetch(`${mirror.url}/v2/library/app/manifests/v2`)
  t.equal(fresh.status, 200, 'a manifest the index cannot take is served uncached')
  t.equal(fresh.headers.get('docker-content-digest'), v2.manifestDigest)
  await fresh.arrayBuffer()
  mirror.flushAccess()
  t.equal(mirror.index.getTag('docker.io/library/app', 'v2'), undefined, 'not cached')

  const ready = await fetch(`${mirror.url}/readyz`)
  t.equal(ready.status, 503, '/readyz: degraded')
  t.match(await ready.json(), { status: 'unready', problems: [/^index: cannot be written/] })
  const metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  t.ok((sample(metrics, 'registry_mirror_index_write_failures_total', { operation: 'tag confirmation' }) ?? 0) >= 1, 'counted')
  t.ok((sample(metrics, 'registry_mirror_index_write_failures_total', { operation: 'manifest' }) ?? 0) >= 1)
  t.ok(mirror.logs.some(l => l.level === 50 && typeof l.msg === 'string' && l.msg.startsWith('the cache index cannot be written')), 'logged as an error')

  const config = await writeConfig(await tempDir(t, 'mirror-full-config'), { storage, upstreams: { 'docker.io': fake.url } })
  const stats = await runCli(['stats', '--json', '--config', config])
  t.equal(stats.code, 0, stats.stderr)
  t.match(JSON.parse(stats.stdout), { cache: { degraded: /^the index cannot be written/ } }, 'stats says degraded too')

  rmSync(filler)
  rmSync(join(fs.path, 'filler-2'))
  t.equal((await fetch(`${mirror.url}/readyz`)).status, 200, 'ready again once a write succeeds')
  const healthy = await runCli(['stats', '--json', '--config', config])
  t.match(JSON.parse(healthy.stdout), { cache: { degraded: null } })
  const cached = await fetch(`${mirror.url}/v2/library/app/manifests/v2`)
  await cached.arrayBuffer()
  t.equal(mirror.index.getTag('docker.io/library/app', 'v2')?.digest, v2.manifestDigest, 'and caching again')
})

t.test('a log file on a full disk: lines are dropped and counted, nothing throws, and the loss is reported once there is room', { skip }, async t => {
  const fs = mountSmallFilesystem(4) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const file = join(fs.path, 'mirror.log')
  const fd = openSync(file, 'a')
  t.teardown(() => closeSync(fd))
  const sink = new LogSink(fd, { retryMs: 20 })
  const filler = fillUntil(fs.path, 0)
  for (let i = 0; i < 200; i++) sink.write(`{"level":30,"msg":"line ${i}"}\n`)
  for (let i = 0; i < 100 && sink.dropped === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.ok(sink.dropped > 0, `lines that could not be written were dropped (${sink.dropped})`)
  rmSync(filler)
  const dropped = (): number | undefined => {
    const report = readFileSync(file, 'utf8').split('\n').find(l => l.includes('log lines were dropped'))
    return report === undefined ? undefined : (JSON.parse(report) as { dropped: number }).dropped
  }
  for (let i = 0; i < 200 && dropped() === undefined; i++) {
    sink.write('{"level":30,"msg":"room again"}\n')
    await new Promise(resolve => setTimeout(resolve, 10))
  }
  t.ok((dropped() ?? 0) > 0, 'the loss is reported in the log once it can be written')
  t.match(readFileSync(file, 'utf8'), /room again/)
})

t.test('space eviction never runs when it cannot free what is needed: the blob is served uncached and nothing is evicted', { skip }, async t => {
  const fs = mountSmallFilesystem(24) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage: join(fs.path, 'data') })
  const kept = fake.addBlob('library/app', randomBytes(6 * MiB))
  await (await fetch(`${mirror.url}/v2/library/app/blobs/${kept}`)).arrayBuffer()
  fillUntil(fs.path, 2 * MiB)
  const bytes = randomBytes(12 * MiB)
  const digest = fake.addBlob('library/app', bytes)
  const body = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  t.ok('bytes' in body && body.bytes.equals(bytes), 'served, uncached')
  t.ok(mirror.index.getBlob(kept), 'what could not have made room enough stays cached')
  t.notOk(mirror.logs.some(l => l.msg === 'evicting'), 'nothing was evicted')
})

t.test('making room never evicts the image being pulled', { skip }, async t => {
  const fs = mountSmallFilesystem(32) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  let clock = 1_000_000
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage: join(fs.path, 'data'), hooks: { now: () => clock } })
  const pulling = makeImage(fake, 'library/p', 'v1', { layers: [5 * MiB, 6 * MiB] })
  const other = makeImage(fake, 'library/x', 'v1', { layers: [8 * MiB] })
  const get = async (path: string): Promise<void> => {
    clock += 1000
    const res = await fetch(mirror.url + path)
    t.equal(res.status, 200, path)
    await res.arrayBuffer()
    mirror.flushAccess()
  }
  // The pull of p began first (its first layer is the least recently used), then x was pulled whole.
  await get('/v2/library/p/manifests/v1')
  await get(`/v2/library/p/blobs/${pulling.layerDigests[0] ?? ''}`)
  await get('/v2/library/x/manifests/v1')
  await get(`/v2/library/x/blobs/${other.layerDigests[0] ?? ''}`)
  fillUntil(fs.path, 3 * MiB)
  await get(`/v2/library/p/blobs/${pulling.layerDigests[1] ?? ''}`)
  t.ok(mirror.index.getBlob(pulling.layerDigests[0] ?? ''), 'the first layer of the image being pulled stays')
  t.ok(mirror.index.getManifest(pulling.manifestDigest), 'and its manifest')
  t.equal(mirror.index.getBlob(other.layerDigests[0] ?? ''), undefined, 'the other image made the room')
  t.ok(mirror.index.getBlob(pulling.layerDigests[1] ?? ''), 'and the new layer is cached')
})

t.test('a blob of unannounced size that outgrows the disk is served uncached on the next request', { skip }, async t => {
  const fs = mountSmallFilesystem(16) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const bytes = randomBytes(8 * MiB)
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`
  // An upstream that streams blobs without a Content-Length.
  const upstream = createServer((req, res) => {
    req.resume()
    if (req.url === `/v2/library/app/blobs/${digest}`) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      res.end(bytes)
      return
    }
    res.writeHead(404).end()
  })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(async () => { upstream.closeAllConnections(); upstream.close(); await once(upstream, 'close') })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` }, storage: join(fs.path, 'data') })
  fillUntil(fs.path, 6 * MiB)
  const first = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  t.ok('error' in first, 'the first try runs out of disk and is cut')
  t.ok(mirror.logs.some(l => l.msg === 'disk full while caching a blob; nothing cached'), 'as a full disk, not as a short file')
  for (let i = 0; i < 100 && readdirSync(join(fs.path, 'data', 'tmp')).length > 0; i++) await new Promise(resolve => setTimeout(resolve, 20))
  const second = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  t.ok('bytes' in second && second.bytes.equals(bytes), 'the next one is served uncached, whole')
  t.equal(mirror.index.getBlob(digest), undefined)
})

t.test('a 60 MiB blob of unannounced size on a 40 MiB volume holding evictable blobs: the second request at the latest is served whole, uncached, and the third knows its size', { skip }, async t => {
  const fs = mountSmallFilesystem(40) as { path: string, unmount: () => void }
  t.teardown(fs.unmount)
  const big = randomBytes(60 * MiB)
  const bigDigest = `sha256:${createHash('sha256').update(big).digest('hex')}`
  const small = [1, 2, 3].map(() => randomBytes(8 * MiB))
  const smallDigests = small.map(b => `sha256:${createHash('sha256').update(b).digest('hex')}`)
  let bigGets = 0
  // An upstream that streams blobs without a Content-Length.
  const upstream = createServer((req, res) => {
    req.resume()
    const digest = req.url?.split('/blobs/')[1]
    const bytes = digest === bigDigest ? big : small[smallDigests.indexOf(digest ?? '')]
    if (bytes === undefined) {
      res.writeHead(404).end()
      return
    }
    if (digest === bigDigest && req.method === 'GET') bigGets++
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    res.end(req.method === 'HEAD' ? undefined : bytes)
  })
  upstream.listen(0, '127.0.0.1')
  await once(upstream, 'listening')
  t.teardown(async () => { upstream.closeAllConnections(); upstream.close(); await once(upstream, 'close') })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` }, storage: join(fs.path, 'data') })
  for (const [i, digest] of smallDigests.entries()) {
    const got = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
    t.ok('bytes' in got && got.bytes.equals(small[i] ?? Buffer.alloc(0)), `small blob ${i} cached`)
  }
  const url = `${mirror.url}/v2/library/app/blobs/${bigDigest}`
  const first = await readBody(await fetch(url))
  t.ok('error' in first, 'the first try cannot know the size: it runs out of disk and is cut')
  for (let i = 0; i < 100 && readdirSync(join(fs.path, 'data', 'tmp')).length > 0; i++) await new Promise(resolve => setTimeout(resolve, 20))
  const second = await readBody(await fetch(url))
  t.ok('bytes' in second && second.bytes.equals(big), 'the second is served whole, uncached')
  t.equal(smallDigests.filter(d => mirror.index.getBlob(d) !== undefined).length, 3, 'nothing was evicted for a blob of unknown size')
  const third = await readBody(await fetch(url))
  t.ok('bytes' in third && third.bytes.equals(big), 'the third too: its size is known now, and no eviction can make room for it')
  t.equal(smallDigests.filter(d => mirror.index.getBlob(d) !== undefined).length, 3, 'so none was made')
  t.equal(mirror.index.getBlob(bigDigest), undefined, 'not cached')
  t.equal(bigGets, 3, 'one upstream GET per request')
})
