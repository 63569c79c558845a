// A byte range of an open file, read into buffers from a pool, consumed in one
// of two ways:
//  - as a stream (scrub, the consistency check, any stream consumer): each read
//    fills up to READ_RUN buffers in one readv and pushes them as chunks;
//    whoever consumes them may give them back to the pool;
//  - by `sendTo(out)`, for an HTTP response: the reader writes to the output
//    itself, one buffer at a time, and holds at most one buffer for a client
//    that stops reading (see sendTo).

import { Readable } from 'node:stream'
import type { FileHandle } from 'node:fs/promises'
import { ShortFileError } from '../errors.js'
import type { Limiter } from '../limiter.js'
import type { ByteOutput, SendableBody } from '../sendable-body.js'
import type { BufferPool } from './buffer-pool.js'

/** Buffers filled by one read: a run of them costs one trip to the thread pool. */
export const READ_RUN = 4

export interface FileReaderOptions {
  /** First byte; 0 unless given. */
  readonly start?: number | undefined
  /** One past the last byte. */
  readonly end: number
  readonly buffers: BufferPool
  /**
   * Reads of `sendTo` under way at once, shared by every reader of a store: a read takes its
   * buffers only once its turn comes, so a thousand clients arriving at once hold the buffers
   * of the reads under way, not a thousand runs of them.
   */
  readonly reads: Limiter
  /** Names the file in errors. */
  readonly what: string
}

function giveAll (buffers: BufferPool, chunks: readonly Buffer[]): void {
  for (const chunk of chunks) buffers.give(chunk)
}

export class FileReader extends Readable implements SendableBody {
  readonly #handle: FileHandle
  readonly #end: number
  readonly #buffers: BufferPool
  readonly #what: string
  readonly #reads: Limiter
  #position: number
  #sending = false

  /** Takes ownership of the handle: it is closed when the stream ends or is destroyed. */
  constructor (handle: FileHandle, options: FileReaderOptions) {
    // Chunks are objects, one pooled buffer each, so that an async iterator is handed the
    // buffers themselves (a byte stream would join them) and can give them back. One run is
    // read ahead of the consumer: more would only hold more buffers.
    super({ objectMode: true, highWaterMark: 1 })
    this.#handle = handle
    this.#end = options.end
    this.#buffers = options.buffers
    this.#what = options.what
    this.#reads = options.reads
    this.#position = options.start ?? 0
  }

  override _read (): void {
    if (this.#position >= this.#end) {
      this.push(null)
      return
    }
    this.#readAt(this.#position, READ_RUN).then(chunks => {
      if (this.destroyed) {
        giveAll(this.#buffers, chunks)
        return
      }
      // Past the whole run before any of it is pushed: a push can start the next read at once.
      for (const chunk of chunks) this.#position += chunk.length
      for (const chunk of chunks) this.push(chunk)
    }, (err: Error) => this.destroy(err))
  }

  /** Up to `count` buffers' worth at `position`; a file that ends early is a ShortFileError. */
  async #readAt (position: number, count: number): Promise<Buffer[]> {
    const chunks = await readPooledRun(this.#handle, this.#buffers, position, this.#end - position, count)
    if (chunks === undefined) throw new ShortFileError(`${this.#what} ended at byte ${position}, short of ${this.#end}`)
    return chunks
  }

  /**
   * Writes the range to `out` instead of streaming it (call it once, on a reader nobody reads).
   * One buffer is written at a time, the next once the output has taken it. A run of buffers
   * is read at once while the output takes each buffer within the event-loop turn it was
   * written in (the kernel had room for it); when one is still pending by the next turn,
   * the buffers not yet written go back to the pool at once, to be read again later, and
   * runs shrink to one buffer until the output keeps up again. So a client that stops
   * reading holds one pooled buffer of the mirror's memory however long it stalls, while
   * one that keeps up costs a read per run of buffers. Resolves when all was written;
   * rejects on a read or write failure, or when `signal` aborts. The reader is destroyed
   * either way (a ShortFileError is emitted as its 'error').
   */
  async sendTo (out: ByteOutput, signal: AbortSignal): Promise<void> {
    if (this.#sending) throw new Error('FileReader.sendTo called twice')
    this.#sending = true
    let run = 1
    let position = this.#position
    try {
      while (position < this.#end) {
        signal.throwIfAborted()
        const at = position
        const chunks = await this.#reads.run(async () => await this.#readAt(at, run))
        const written = await this.#writeRun(out, chunks, signal)
        position += written.bytes
        run = written.lagged ? 1 : Math.min(run * 2, READ_RUN)
      }
      this.destroy()
    } catch (err) {
      this.destroy(err instanceof ShortFileError ? err : undefined)
      throw err
    }
  }

  /**
   * Writes the chunks one after the other, until one lags: had not been taken by the next
   * event-loop turn. The chunks after that one go back to the pool when it lags, and the
   * promise resolves once it has been written, with the bytes written.
   */
  async #writeRun (out: ByteOutput, chunks: Buffer[], signal: AbortSignal): Promise<{ bytes: number, lagged: boolean }> {
    // Each chunk leaves the array as it is written, the rest when a write lags: an array
    // holding them would keep them alive (pool or not) while that write waits.
    let bytes = 0
    for (let chunk = chunks.shift(); chunk !== undefined; chunk = chunks.shift()) {
      const lagged = await writeOne(out, chunk, this.#buffers, signal, () => giveAll(this.#buffers, chunks.splice(0)))
      bytes += chunk.length
      if (lagged) return { bytes, lagged }
    }
    return { bytes, lagged: false }
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    // FileHandle.close waits for a read under way.
    this.#handle.close().then(() => callback(err), (closeErr: Error) => callback(err ?? closeErr))
  }
}

/**
 * Writes one pooled chunk; resolves with whether the output lagged, that is, had not
 * taken it by the next event-loop turn (`onLag` runs then). The chunk goes back to the
 * pool once the output is done with it.
 */
async function writeOne (out: ByteOutput, chunk: Buffer, buffers: BufferPool, signal: AbortSignal, onLag: () => void): Promise<boolean> {
  return await new Promise<boolean>((resolve, reject) => {
    let done = false
    let lagged = false
    let check: NodeJS.Immediate | undefined
    const aborted = (): void => {
      clearImmediate(check)
      reject(signal.reason)
    }
    out.write(chunk, err => {
      done = true
      clearImmediate(check)
      signal.removeEventListener('abort', aborted)
      buffers.give(chunk)
      if (err !== null && err !== undefined) reject(err)
      else resolve(lagged)
    })
    if (done) return
    check = setImmediate(() => {
      lagged = true
      onLag()
    })
    signal.addEventListener('abort', aborted, { once: true })
  })
}

/**
 * Reads up to `length` bytes at `position` into up to `count` buffers from the pool, in one
 * readv. Resolves with the buffers that hold bytes (the last may be a view of its buffer), or
 * undefined at the end of the file; buffers left empty go back to the pool.
 */
export async function readPooledRun (handle: FileHandle, buffers: BufferPool, position: number, length: number, count: number): Promise<Buffer[] | undefined> {
  const wanted = Math.max(1, Math.min(count, Math.ceil(length / buffers.size)))
  const taken: Buffer[] = []
  for (let i = 0; i < wanted; i++) taken.push(buffers.take())
  const last = taken[taken.length - 1] as Buffer
  const tail = length - (wanted - 1) * buffers.size
  if (tail < last.length) taken[taken.length - 1] = last.subarray(0, tail)
  let bytesRead
  try {
    bytesRead = (await handle.readv(taken, position)).bytesRead
  } catch (err) {
    for (const buffer of taken) buffers.give(buffer)
    throw err
  }
  const full: Buffer[] = []
  let left = bytesRead
  for (const buffer of taken) {
    if (left <= 0) buffers.give(buffer)
    else full.push(left >= buffer.length ? buffer : buffer.subarray(0, left))
    left -= buffer.length
  }
  return full.length === 0 ? undefined : full
}
