import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, writeFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { auditStorage } from './helpers/audit.js'
import { runCli, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { startMirror } from './helpers/mirror.js'
import { tempDir } from './helpers/temp-dir.js'

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex')

t.test('gc repairs what a crash or a hand can leave, and --dry-run only reports it', async t => {
  const dir = await tempDir(t, 'mirror-gc')
  const storage = join(dir, 'data')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const kept = fake.addBlob('library/app', randomBytes(5000))
  const lost = fake.addBlob('library/app', randomBytes(5000))
  {
    const mirror = await startMirror({ teardown: () => {} }, { upstreams: { 'docker.io': fake.url }, storage })
    for (const d of [kept, lost]) await (await fetch(`${mirror.url}/v2/library/app/blobs/${d}`)).arrayBuffer()
    await mirror.close()
  }
  // a row whose file is gone, a good file with no row, a bad file with no row, and an old temp file
  rmSync(join(storage, 'blobs', 'sha256', lost.slice(7, 9), lost.slice(7)))
  const orphan = randomBytes(3000)
  const orphanHex = sha(orphan)
  fake.addBlob('library/app', orphan)
  mkdirSync(join(storage, 'blobs', 'sha256', orphanHex.slice(0, 2)), { recursive: true })
  writeFileSync(join(storage, 'blobs', 'sha256', orphanHex.slice(0, 2), orphanHex), orphan)
  const liar = `${'ab'}${'0'.repeat(62)}`
  mkdirSync(join(storage, 'blobs', 'sha256', 'ab'), { recursive: true })
  writeFileSync(join(storage, 'blobs', 'sha256', 'ab', liar), randomBytes(100))
  const temp = join(storage, 'tmp', 'old.part')
  writeFileSync(temp, randomBytes(100))
  const { utimesSync } = await import('node:fs')
  const longAgo = new Date(Date.now() - 2 * 3600 * 1000)
  utimesSync(temp, longAgo, longAgo)
  writeFileSync(join(storage, 'tmp', 'fresh.part'), randomBytes(100))

  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url } })
  const before = auditStorage(storage).problems.length
  const dry = await runCli(['gc', '--dry-run', '--config', config])
  t.equal(dry.code, 0, dry.stderr)
  t.match(dry.stdout, /temp files of interrupted downloads would remove: 1/, 'the old temp file, not the fresh one a running mirror may be writing')
  t.match(dry.stdout, /index rows without a file would be dropped: 1/)
  t.match(dry.stdout, /files without a row would be indexed \(verified\): 1/)
  t.match(dry.stdout, /files not matching their digest would remove: 1/)
  t.equal(auditStorage(storage).problems.length, before, '--dry-run changed nothing')
  t.ok(existsSync(temp))

  const real = await runCli(['gc', '--config', config])
  t.equal(real.code, 0, real.stderr)
  t.same(auditStorage(storage).problems, [], 'index and disk agree')
  t.notOk(existsSync(temp), 'old temp file removed')
  t.ok(existsSync(join(storage, 'tmp', 'fresh.part')), 'fresh temp file left alone')
  t.notOk(existsSync(join(storage, 'blobs', 'sha256', 'ab', liar)), 'file not matching its name removed')
  t.same(readdirSync(join(storage, 'blobs', 'sha256', orphanHex.slice(0, 2))).includes(orphanHex), true, 'verified orphan kept')

  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage })
  fake.reset()
  const res = await fetch(`${mirror.url}/v2/library/app/blobs/sha256:${orphanHex}`)
  t.equal(res.status, 200, 'the orphan, now indexed, is served from disk')
  t.ok(Buffer.from(await res.arrayBuffer()).equals(orphan))
  // A file found on disk belongs to no repository: upstream is asked (a HEAD) whether this one has it, and nothing is fetched.
  t.same(fake.requests.map(r => `${r.method} ${r.path}`), [`HEAD /v2/library/app/blobs/sha256:${orphanHex}`])
  const again = await fetch(`${mirror.url}/v2/library/app/blobs/${lost}`)
  t.equal(again.status, 200, 'the blob whose file was lost is a miss, fetched again, never a 500')
  await again.arrayBuffer()
})

t.test('stats and pin work on the data directory from the command line', async t => {
  const dir = await tempDir(t, 'mirror-stats')
  const storage = join(dir, 'data')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const { makeImage } = await import('./helpers/images.js')
  const image = makeImage(fake, 'library/app', 'v1', { layers: [4096] })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage })
  await (await fetch(`${mirror.url}/v2/app/manifests/v1`)).arrayBuffer()
  for (const d of image.blobDigests) await (await fetch(`${mirror.url}/v2/app/blobs/${d}`)).arrayBuffer()
  await (await fetch(`${mirror.url}/v2/app/blobs/${image.layerDigests[0] ?? ''}`)).arrayBuffer()
  await new Promise(resolve => setTimeout(resolve, 100)) // the request log line (and its count) follows the response
  mirror.flushAccess()
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url } })

  const pin = await runCli(['pin', 'app:v1', '--config', config])
  t.equal(pin.code, 0, pin.stderr)
  t.match(pin.stdout, 'pinned docker.io/library/app:v1')
  const refused = await runCli(['pin', 'quay.io/x/y:1', '--config', config])
  t.equal(refused.code, 1)
  t.match(refused.stderr, 'registry quay.io is not an upstream of this mirror')

  const stats = await runCli(['stats', '--json', '--config', config])
  t.equal(stats.code, 0, stats.stderr)
  const s = JSON.parse(stats.stdout) as { cache: { blobs: number, manifests: number, tags: number, pins: number, pinnedBytes: number, totalBytes: number }, requests: { hit: number, miss: number, hitRatio: number }, pins: Array<{ repository: string, reference: string }> }
  t.equal(s.cache.blobs, 2)
  t.equal(s.cache.manifests, 1)
  t.equal(s.cache.tags, 1)
  t.equal(s.cache.pins, 1)
  t.equal(s.cache.pinnedBytes, s.cache.totalBytes, 'the only image is pinned')
  t.equal(s.requests.miss, 3)
  t.equal(s.requests.hit, 1)
  t.equal(s.requests.hitRatio, 0.25)
  t.match(s.pins, [{ repository: 'docker.io/library/app', reference: 'v1' }])
  t.notOk('sinceStart' in s || 'clients' in s || 'downloads' in s || 'server' in s, 'what only a running server knows is absent, not zero')

  const unpin = await runCli(['unpin', 'docker.io/library/app:v1', '--config', config])
  t.equal(unpin.code, 0, unpin.stderr)
  const unpinAgain = await runCli(['unpin', 'app:v1', '--config', config])
  t.equal(unpinAgain.code, 1)
  t.match(unpinAgain.stderr, 'was not pinned')
})
