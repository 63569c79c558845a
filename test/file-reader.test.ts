// FileReader: a byte range of a real file, as a stream and through sendTo,
// whose pump holds one buffer for an output that stops taking bytes.

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { BufferPool } from '../lib/store/buffer-pool.js'
import { FileReader, READ_RUN } from '../lib/store/file-reader.js'
import type { ByteOutput } from '../lib/sendable-body.js'
import { ShortFileError } from '../lib/errors.js'
import { Limiter } from '../lib/limiter.js'

const SIZE = 1024

async function fileWith (t: { teardown: (fn: () => unknown) => void }, bytes: Buffer): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'file-reader-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const path = join(dir, 'blob')
  await writeFile(path, bytes)
  return path
}

async function readerOf (path: string, buffers: BufferPool, start: number, end: number, reads = new Limiter(8)): Promise<FileReader> {
  return new FileReader(await open(path, 'r'), { start, end, buffers, reads, what: 'test file' })
}

/** Buffers handed out and not given back (the pool keeps every one given back, so this is exact). */
function out (pool: BufferPool): number {
  return pool.allocated - pool.free
}

/** An output that keeps each chunk's callback until told to finish it: a client that stopped reading. */
class HeldOutput implements ByteOutput {
  readonly received: Buffer[] = []
  readonly #held: Array<() => void> = []
  taking = false

  write (chunk: Uint8Array, done: (err?: Error | null) => void): void {
    this.received.push(Buffer.from(chunk)) // a copy: the pool may reuse the buffer
    if (this.taking) {
      done()
      return
    }
    this.#held.push(() => done())
  }

  get held (): number { return this.#held.length }

  /** Takes every write from now on, and finishes the ones held. */
  resume (): void {
    this.taking = true
    for (const done of this.#held.splice(0)) done()
  }
}

/** Until a write is held (file reads go through the thread pool, which a loaded machine makes slow). */
async function untilHeld (output: HeldOutput): Promise<void> {
  const limit = Date.now() + 10_000
  while (output.held === 0 && Date.now() < limit) await new Promise(resolve => setTimeout(resolve, 5))
}

async function turns (n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise(resolve => setImmediate(resolve))
}

t.test('as a stream: the range, read in runs of up to READ_RUN buffers', async t => {
  const bytes = randomBytes(SIZE * 10 + 100)
  const path = await fileWith(t, bytes)
  const pool = new BufferPool(SIZE, 100)
  const reader = await readerOf(path, pool, 50, bytes.length - 7)
  const chunks: Buffer[] = []
  for await (const chunk of reader) {
    chunks.push(Buffer.from(chunk as Buffer))
    pool.give(chunk as Buffer)
  }
  t.ok(Buffer.concat(chunks).equals(bytes.subarray(50, bytes.length - 7)), 'the bytes of the range')
  t.ok(chunks.every(c => c.length <= SIZE), 'each chunk one buffer at most')
  t.ok(pool.allocated <= 2 * READ_RUN, `one run read ahead at most (${pool.allocated} buffers)`)
})

t.test('sendTo an output that keeps up: the whole range, in order, and the file closed', async t => {
  const bytes = randomBytes(SIZE * 40 + 3)
  const path = await fileWith(t, bytes)
  const pool = new BufferPool(SIZE, 100)
  const reader = await readerOf(path, pool, 0, bytes.length)
  const output = new HeldOutput()
  output.taking = true
  await reader.sendTo(output, new AbortController().signal)
  t.ok(Buffer.concat(output.received).equals(bytes))
  t.equal(out(pool), 0, 'every buffer back in the pool')
  t.ok(pool.allocated <= READ_RUN, `runs grow to READ_RUN buffers and no further (${pool.allocated})`)
  t.ok(reader.destroyed, 'the reader is done with its file')
  await t.rejects(reader.sendTo(output, new AbortController().signal), /called twice/)
})

t.test('sendTo an output that stops taking bytes holds one buffer, then resumes where it stopped', async t => {
  const bytes = randomBytes(SIZE * 64)
  const path = await fileWith(t, bytes)
  const pool = new BufferPool(SIZE, 100)
  const reader = await readerOf(path, pool, 0, bytes.length)
  const output = new HeldOutput()
  // Takes the first writes at once, so that runs grow, then stalls.
  let left = 10
  const write = output.write.bind(output)
  output.write = (chunk, done) => {
    output.taking = left-- > 0
    write(chunk, done)
  }
  const sent = reader.sendTo(output, new AbortController().signal)
  await untilHeld(output)
  await turns(3)
  t.equal(output.held, 1, 'one write waits')
  t.equal(out(pool), 1, 'and only its buffer is held: the rest of its run went back to the pool')
  t.ok(pool.allocated >= 2, `runs had grown past one buffer before the stall (${pool.allocated} allocated)`)

  output.write = write
  output.resume()
  await sent
  t.ok(Buffer.concat(output.received).equals(bytes), 'every byte once, in order: what went back was read again')
  t.equal(out(pool), 0)
})

t.test('sendTo of a file shorter than its range fails with ShortFileError, which the reader emits', async t => {
  const bytes = randomBytes(SIZE * 8)
  const path = await fileWith(t, bytes)
  const pool = new BufferPool(SIZE, 100)
  const reader = await readerOf(path, pool, 0, bytes.length)
  await truncate(path, SIZE * 3 + 10)
  const emitted = new Promise<Error>(resolve => reader.once('error', resolve))
  const output = new HeldOutput()
  output.taking = true
  await t.rejects(reader.sendTo(output, new AbortController().signal), ShortFileError)
  t.match((await emitted).message, /test file ended at byte 3082, short of 8192/)
  t.equal(Buffer.concat(output.received).length, SIZE * 3 + 10, 'what the file had was sent')
  t.equal(out(pool), 0)
})

t.test('sendTo stops when its signal aborts, even with a write held', async t => {
  const bytes = randomBytes(SIZE * 16)
  const path = await fileWith(t, bytes)
  const pool = new BufferPool(SIZE, 100)
  const reader = await readerOf(path, pool, 0, bytes.length)
  const output = new HeldOutput()
  const gone = new AbortController()
  const sent = reader.sendTo(output, gone.signal)
  await untilHeld(output)
  gone.abort(new Error('client gone'))
  await t.rejects(sent, /client gone/)
  t.ok(reader.destroyed)
  t.equal(out(pool), 1, 'the buffer of the write held is the output\'s until it lets go')
  output.resume()
  t.equal(out(pool), 0)
})

t.test('a read takes its buffers only when its turn comes', async t => {
  const bytes = randomBytes(SIZE * 8)
  const path = await fileWith(t, bytes)
  const pool = new BufferPool(SIZE, 100)
  const reads = new Limiter(1)
  const busy = await reads.acquire()
  const reader = await readerOf(path, pool, 0, bytes.length, reads)
  const output = new HeldOutput()
  output.taking = true
  const sent = reader.sendTo(output, new AbortController().signal)
  await turns(5)
  t.equal(pool.allocated, 0, 'no buffer taken while the reads are all in use')
  busy()
  await sent
  t.ok(Buffer.concat(output.received).equals(bytes))
})
