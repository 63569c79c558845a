// The blob store failing with something other than "not found" (here ELOOP,
// a real error of the real filesystem that root cannot bypass the way it
// bypasses EACCES): a request gets a 503 with the OCI envelope, the sweep in
// gc leaves the row and the file alone, and once the store answers again the
// blob is served from the cache with no upstream request.

import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { runCli, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { readBody, startMirror } from './helpers/mirror.js'
import { tempDir } from './helpers/temp-dir.js'

/** Replaces the directory holding a blob's file with a symlink to itself: stat and open fail with ELOOP. */
function breakDirectory (storage: string, digest: string): () => void {
  const dir = join(storage, 'blobs', 'sha256', digest.slice(7, 9))
  renameSync(dir, `${dir}.away`)
  symlinkSync(dir, dir)
  return () => {
    rmSync(dir)
    renameSync(`${dir}.away`, dir)
  }
}

t.test('a store that cannot be read answers 503 UNAVAILABLE, keeps the row, and serves from the cache once it can', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const bytes = randomBytes(50_000)
  const digest = fake.addBlob('library/app', bytes)
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const url = `${mirror.url}/v2/library/app/blobs/${digest}`
  t.ok('bytes' in await readBody(await fetch(url)), 'cached')
  await mirror.swept
  const fetched = fake.hits(`/blobs/${digest}`)

  const restore = breakDirectory(mirror.storage, digest)
  for (const method of ['GET', 'HEAD']) {
    const res = await fetch(url, { method })
    t.equal(res.status, 503, `${method}: 503`)
    if (method === 'GET') t.match(await res.json(), { errors: [{ code: 'UNAVAILABLE', message: /storage cannot be read now/ }] }, 'in the OCI envelope')
  }
  t.ok(mirror.index.getBlob(digest), 'the row is kept')
  t.equal(fake.hits(`/blobs/${digest}`), fetched, 'upstream was not asked: the blob is not taken for missing')
  t.ok(mirror.logs.some(l => l.msg === 'the blob store failed; answering 503, the row is kept' && l.digest === digest), 'logged with the digest')

  restore()
  const again = await readBody(await fetch(url))
  t.ok('bytes' in again && again.bytes.equals(bytes), 'served from the cache once the store answers')
  t.equal(fake.hits(`/blobs/${digest}`), fetched, 'still with no upstream request')
})

t.test('gc over a store that cannot be read drops no row and removes no file, and says what it left', async t => {
  const dir = await tempDir(t, 'mirror-store-fails')
  const storage = join(dir, 'data')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const bytes = randomBytes(20_000)
  const digest = fake.addBlob('library/app', bytes)
  {
    const mirror = await startMirror({ teardown: () => {} }, { upstreams: { 'docker.io': fake.url }, storage })
    t.ok('bytes' in await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)), 'cached')
    await mirror.close()
  }
  const fetched = fake.hits(`/blobs/${digest}`)
  const restore = breakDirectory(storage, digest)
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url } })
  const gc = await runCli(['gc', '--config', config])
  t.equal(gc.code, 0, gc.stderr)
  t.match(gc.stdout, /index rows without a file dropped: 0/)
  t.match(gc.stdout, /could not read now, left as they were: [1-9]/)
  restore()
  t.ok(existsSync(join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))), 'the file is there')

  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage })
  const got = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  t.ok('bytes' in got && got.bytes.equals(bytes), 'and served from the cache')
  t.equal(fake.hits(`/blobs/${digest}`), fetched, 'with no upstream request')
})

t.test('a serving mirror sweeps in the background: a file without a row is indexed, a row without a file dropped', async t => {
  const dir = await tempDir(t, 'mirror-background-sweep')
  const storage = join(dir, 'data')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const lost = fake.addBlob('library/app', randomBytes(5000))
  {
    const mirror = await startMirror({ teardown: () => {} }, { upstreams: { 'docker.io': fake.url }, storage })
    t.ok('bytes' in await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${lost}`)), 'cached')
    await mirror.close()
  }
  rmSync(join(storage, 'blobs', 'sha256', lost.slice(7, 9), lost.slice(7)))
  const orphan = randomBytes(3000)
  const hex = createHash('sha256').update(orphan).digest('hex')
  mkdirSync(join(storage, 'blobs', 'sha256', hex.slice(0, 2)), { recursive: true })
  writeFileSync(join(storage, 'blobs', 'sha256', hex.slice(0, 2), hex), orphan)

  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, storage })
  const report = await mirror.swept
  t.match(report, { rowsDropped: 1, filesIndexed: 1, unreadable: 0 })
  t.equal(mirror.index.getBlob(lost), undefined, 'the lost file\'s row is dropped')
  t.equal(mirror.index.getBlob(`sha256:${hex}`)?.size, 3000, 'the orphan is indexed')
  t.ok(mirror.logs.some(l => l.msg === 'the background sweep found the cache inconsistent (a crash?); repaired'), 'and it says so')
})
