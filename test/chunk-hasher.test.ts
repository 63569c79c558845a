import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { ChunkHasher } from '../lib/cache/chunk-hasher.js'

/** `bytes` in a SharedArrayBuffer of its own, as the read pool hands them out. */
function shared (bytes: Buffer): Buffer {
  const out = Buffer.from(new SharedArrayBuffer(bytes.length))
  bytes.copy(out)
  return out
}

t.test('hashes chunks given in batches, shared and not, to the digest of all their bytes', async t => {
  const hasher = new ChunkHasher()
  t.teardown(async () => await hasher.close())
  const back: Uint8Array[] = []
  const job = hasher.start('sha256', chunk => back.push(chunk))
  const whole = createHash('sha256')
  const given: Uint8Array[] = []
  for (let i = 0; i < 7; i++) {
    const bytes = randomBytes(300_000 + i)
    whole.update(bytes)
    const chunks = i % 2 === 0 ? [shared(bytes.subarray(0, 1000)), shared(bytes.subarray(1000))] : [bytes]
    given.push(...chunks)
    job.update(chunks)
  }
  t.equal(await job.end(), whole.digest('hex'))
  t.equal(back.length, given.length, 'every chunk is handed back')
  t.ok(given.every(c => back.includes(c)), 'each once, as given')
})

t.test('a chunk handed back may be overwritten at once: the worker has read it by then', async t => {
  const hasher = new ChunkHasher()
  t.teardown(async () => await hasher.close())
  const whole = createHash('sha256')
  // A chunk is overwritten the moment it comes back, as a reused read buffer would be; had it
  // come back before the worker read it, the digest would be of the garbage.
  const job = hasher.start('sha256', chunk => { (chunk as Buffer).fill(0xee) })
  for (let i = 0; i < 50; i++) {
    const bytes = randomBytes(64 * 1024)
    whole.update(bytes)
    job.update([shared(bytes)])
  }
  t.equal(await job.end(), whole.digest('hex'))
})

t.test('several jobs at once each get their own digest, and sha512 works too', async t => {
  const hasher = new ChunkHasher()
  t.teardown(async () => await hasher.close())
  const inputs = [1, 2, 3].map(n => randomBytes(n * 300_000))
  const jobs = inputs.map(() => hasher.start('sha512', () => {}))
  inputs.forEach((bytes, i) => {
    jobs[i]?.update([shared(bytes.subarray(0, 100_000))])
    jobs[(i + 1) % 3]?.update([]) // nothing, for another
    jobs[i]?.update([shared(bytes.subarray(100_000))])
  })
  const digests = await Promise.all(jobs.map(async job => await job.end()))
  t.same(digests, inputs.map(b => createHash('sha512').update(b).digest('hex')))
})

t.test('an algorithm the worker does not know fails the job when it ends, and its chunks come back', async t => {
  const hasher = new ChunkHasher()
  t.teardown(async () => await hasher.close())
  const back: Uint8Array[] = []
  const job = hasher.start('sha-nothing', chunk => back.push(chunk))
  job.update([shared(randomBytes(10))])
  await new Promise(resolve => setTimeout(resolve, 50)) // the failure arrives before end is called
  await t.rejects(job.end(), /hashing a download failed: .*Digest method not supported/)
  t.equal(back.length, 1)
})

t.test('a cancelled job hands its chunks back, and the hasher goes on with others', async t => {
  const hasher = new ChunkHasher()
  t.teardown(async () => await hasher.close())
  const back: Uint8Array[] = []
  const cancelled = hasher.start('sha256', chunk => back.push(chunk))
  cancelled.update([shared(randomBytes(1_000_000))])
  cancelled.cancel()
  t.equal(back.length, 1, 'handed back at once')
  cancelled.update([shared(randomBytes(10))])
  t.equal(back.length, 1, 'nothing more is taken')
  const bytes = randomBytes(2_000_000)
  const job = hasher.start('sha256', () => {})
  job.update([shared(bytes)])
  t.equal(await job.end(), createHash('sha256').update(bytes).digest('hex'))
})

t.test('jobs under way when the hasher closes fail rather than hang, and hand their chunks back', async t => {
  const hasher = new ChunkHasher()
  const back: Uint8Array[] = []
  const job = hasher.start('sha256', chunk => back.push(chunk))
  job.update([shared(randomBytes(10))])
  await hasher.close()
  await t.rejects(job.end(), /the hashing worker (was closed|went away)/)
  t.equal(back.length, 1)
  t.throws(() => hasher.start('sha256', () => {}), /closed/)
})
