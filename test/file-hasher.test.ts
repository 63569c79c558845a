import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { open, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { FileHasher } from '../lib/cache/file-hasher.js'
import { tempDir } from './helpers/temp-dir.js'

t.test('hashes a file as it grows, in steps, to the digest of all its bytes', async t => {
  const dir = await tempDir(t, 'file-hasher')
  const hasher = new FileHasher()
  t.teardown(async () => await hasher.close())
  const path = join(dir, 'growing')
  const handle = await open(path, 'w')
  const job = hasher.start(path, 'sha256')
  const whole = createHash('sha256')
  let written = 0
  for (let i = 0; i < 7; i++) {
    const chunk = randomBytes(700_000 + i) // steps that straddle the worker's 1 MiB reads
    await handle.write(chunk, 0, chunk.length, written)
    written += chunk.length
    whole.update(chunk)
    job.written(written)
  }
  await handle.close()
  t.equal(await job.end(written), whole.digest('hex'))
})

t.test('several files at once each get their own digest, and sha512 works too', async t => {
  const dir = await tempDir(t, 'file-hasher')
  const hasher = new FileHasher()
  t.teardown(async () => await hasher.close())
  const files = await Promise.all([1, 2, 3].map(async n => {
    const bytes = randomBytes(n * 300_000)
    const path = join(dir, `f${n}`)
    await writeFile(path, bytes)
    return { path, bytes }
  }))
  const jobs = files.map(f => hasher.start(f.path, 'sha512'))
  const digests = await Promise.all(jobs.map(async (job, i) => await job.end(files[i]?.bytes.length ?? 0)))
  t.same(digests, files.map(f => createHash('sha512').update(f.bytes).digest('hex')))
})

t.test('a file shorter than reported fails with a message saying where it ended', async t => {
  const dir = await tempDir(t, 'file-hasher')
  const hasher = new FileHasher()
  t.teardown(async () => await hasher.close())
  const path = join(dir, 'short')
  await writeFile(path, randomBytes(1000))
  const job = hasher.start(path, 'sha256')
  await t.rejects(job.end(5000), /hashing a download failed: the file ended at byte 1000, short of 5000/)
})

t.test('a file that cannot be opened fails the job when it ends', async t => {
  const dir = await tempDir(t, 'file-hasher')
  const hasher = new FileHasher()
  t.teardown(async () => await hasher.close())
  const job = hasher.start(join(dir, 'missing'), 'sha256')
  await new Promise(resolve => setTimeout(resolve, 50)) // the failure arrives before end is called
  await t.rejects(job.end(10), /hashing a download failed: ENOENT/)
})

t.test('a cancelled job is dropped, and the hasher goes on with others', async t => {
  const dir = await tempDir(t, 'file-hasher')
  const hasher = new FileHasher()
  t.teardown(async () => await hasher.close())
  const path = join(dir, 'f')
  const bytes = randomBytes(2_000_000)
  await writeFile(path, bytes)
  const cancelled = hasher.start(path, 'sha256')
  cancelled.written(1_000_000)
  cancelled.cancel()
  const job = hasher.start(path, 'sha256')
  t.equal(await job.end(bytes.length), createHash('sha256').update(bytes).digest('hex'))
})

t.test('jobs under way when the hasher closes fail rather than hang', async t => {
  const dir = await tempDir(t, 'file-hasher')
  const hasher = new FileHasher()
  const path = join(dir, 'f')
  await writeFile(path, randomBytes(10))
  const job = hasher.start(path, 'sha256')
  await hasher.close()
  await t.rejects(job.end(10), /the hashing worker (was closed|went away)/)
  t.throws(() => hasher.start(path, 'sha256'), /closed/)
})
