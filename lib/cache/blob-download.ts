// One upstream download of one blob, that any number of clients stream from
// while it is still arriving. Bytes go to a temp file as they come, hashed on
// the way (a large blob by a worker thread, from the same buffers); a reader that has caught up takes new bytes from memory, one that
// fell behind reads the file by position. At the end the digest and size are
// checked, the file flushed to disk and committed; on any failure every reader
// is destroyed (its response is cut, never completed) and the temp file
// removed. Readers leaving early never cancel the download.

import { createHash } from 'node:crypto'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { FileHandle } from 'node:fs/promises'
import { DigestMismatchError } from '../errors.js'
import { parseDigest } from '../oci/reference.js'
import type { BufferPool } from '../store/buffer-pool.js'
import { READ_RUN, readPooledRun } from '../store/file-reader.js'
import type { ChunkHasher, HashJob } from './chunk-hasher.js'

/**
 * A large download is flushed to disk in the background every this many bytes, so that
 * the fdatasync before commit (which holds the last byte back from every client) finds
 * little left to write: for a 200 MB blob here it took ~160 ms when all of it was dirty.
 */
const SYNC_EVERY = 16 * 1024 * 1024

/** Below this (when announced), hashing on the main thread costs less than a round trip to the hasher. */
const HASH_OFF_THREAD_FROM = 1024 * 1024

/**
 * What the download queues for the disk before pausing upstream. With 256 KiB, upstream's
 * socket was paused and resumed hundreds of times per 200 MB and each write was a small
 * thread-pool round trip: a cold 200 MB pull took ~0.95 s here, with 4 MiB ~0.6 s (larger
 * bought nothing more). Queued chunks are upstream's own, so this bounds memory per download.
 */
const WRITE_BUFFER = 4 * 1024 * 1024

export type DownloadState = 'running' | 'done' | 'failed'

export interface DownloadTarget {
  readonly path: string
  readonly handle: FileHandle
}

export interface BlobDownloadOptions {
  readonly digest: string
  /** Size announced by upstream (Content-Length), if any. */
  readonly size: number | undefined
  readonly temp: DownloadTarget
  /** Runs after the bytes were verified: moves the file into place and indexes it. */
  readonly commit: (tempPath: string, size: number) => Promise<void>
  readonly discard: (tempPath: string) => Promise<void>
  /**
   * Buffers readers read the temp file into; the HTTP layer gives them back once sent. The
   * body's chunks may be this pool's shared buffers: each is given back once written.
   */
  readonly buffers: BufferPool
  /** Hashes large downloads off the main thread; without it, they are hashed on it. */
  readonly hasher?: ChunkHasher | undefined
}

export class BlobDownload {
  readonly digest: string
  readonly size: number | undefined
  readonly #temp: DownloadTarget
  readonly #options: BlobDownloadOptions
  #written = 0
  #state: DownloadState = 'running'
  #error: Error | undefined
  #waiters: Array<(chunks: readonly Buffer[] | undefined, start: number) => void> = []
  #users = 1 // the download itself holds the file open until it ends
  #settled: Promise<void> = Promise.resolve()

  constructor (options: BlobDownloadOptions) {
    this.digest = options.digest
    this.size = options.size
    this.#temp = options.temp
    this.#options = options
  }

  get written (): number { return this.#written }
  /** Readers still attached. */
  get readers (): number { return this.#users - (this.#state === 'running' ? 1 : 0) }
  /** Resolves when the download has ended, committed or not. */
  get settled (): Promise<void> { return this.#settled }
  get state (): DownloadState { return this.#state }
  get error (): Error | undefined { return this.#error }

  /** Consumes the upstream body to the end; resolves when the blob is committed, rejects on any failure. */
  async run (body: Readable): Promise<void> {
    const running = this.#run(body)
    this.#settled = running.catch(() => {})
    await running
  }

  async #run (body: Readable): Promise<void> {
    const { hasher, buffers } = this.#options
    const algorithm = parseDigest(this.digest).algorithm
    // The hasher holds views of its own, given back once hashed.
    const offThread: HashJob | undefined = hasher !== undefined && (this.size === undefined || this.size >= HASH_OFF_THREAD_FROM)
      ? hasher.start(algorithm, chunk => buffers.give(chunk))
      : undefined
    const inline = createHash(algorithm) // used when nothing hashes off the thread
    // One background flush at a time; its failure fails the download at the end.
    let flushing: Promise<void> | undefined
    let flushed = 0
    const flushInBackground = (): void => {
      if (flushing !== undefined || this.#written - flushed < SYNC_EVERY) return
      const upTo = this.#written
      flushing = this.#temp.handle.datasync().then(() => {
        flushed = upTo
        flushing = undefined
      })
      flushing.catch(() => {}) // awaited before commit
    }
    // Chunks that queue up while a write is under way go to disk in one writev.
    const writeAll = (chunks: Buffer[], cb: (err?: Error | null) => void): void => {
      const length = chunks.reduce((n, c) => n + c.length, 0)
      if (this.size !== undefined && this.#written + length > this.size) {
        for (const c of chunks) buffers.give(c)
        cb(new DigestMismatchError(this.digest, 'unknown', `upstream sent more than the announced ${this.size} bytes for ${this.digest}`))
        return
      }
      const start = this.#written
      // Hashed off the thread while they are written.
      offThread?.update(chunks.map(c => buffers.view(c, 0, c.length)))
      writeFully(this.#temp.handle, chunks, length, start).then(() => {
        if (offThread === undefined) for (const c of chunks) inline.update(c)
        this.#written += length
        flushInBackground()
        // Readers take views of their own; then the chunks' pooled buffers can be read into again.
        this.#notify(chunks, start)
        for (const c of chunks) buffers.give(c)
        cb()
      }, (err: Error) => {
        for (const c of chunks) buffers.give(c)
        cb(err)
      })
    }
    const sink = new Writable({
      highWaterMark: WRITE_BUFFER,
      write: (chunk: Buffer, _enc, cb) => writeAll([chunk], cb),
      writev: (entries, cb) => writeAll(entries.map(e => e.chunk as Buffer), cb)
    })
    try {
      await pipeline(body, sink)
      if (this.size !== undefined && this.#written !== this.size) {
        throw new DigestMismatchError(this.digest, 'unknown', `upstream sent ${this.#written} of ${this.size} bytes for ${this.digest}`)
      }
      const hex = offThread !== undefined ? await offThread.end() : inline.digest('hex')
      const actual = `${algorithm}:${hex}`
      if (actual !== this.digest) throw new DigestMismatchError(this.digest, actual)
      await flushing
      await this.#temp.handle.datasync()
      await this.#options.commit(this.#temp.path, this.#written)
      // A response completes only once its blob is in the cache: a client that saw its pull
      // finish finds the blob there (and can count on `registry-mirror stats` saying so).
      this.#state = 'done'
    } catch (err) {
      offThread?.cancel()
      await flushing?.catch(() => {})
      // The temp file goes before any reader learns of the failure.
      await this.#options.discard(this.#temp.path).catch(() => {})
      this.#state = 'failed'
      this.#error = err instanceof Error ? err : new Error(String(err))
      throw this.#error
    } finally {
      this.#notify()
      this.#release()
    }
  }

  /** A stream of bytes [start, end] (inclusive) as they arrive. */
  createReader (start = 0, end?: number): Readable {
    this.#users++
    let position = start
    let released = false
    const release = (): void => {
      if (!released) {
        released = true
        this.#release()
      }
    }
    const limit = (): number => end !== undefined ? end + 1 : (this.size ?? Infinity)
    const buffers = this.#options.buffers
    const reader = new Readable({
      // One chunk ahead of the client: readers that fall behind read the file, not memory.
      highWaterMark: 1,
      read: () => {
        const pump = (): void => {
          if (this.#state === 'failed') {
            reader.destroy(this.#error)
            return
          }
          const done = this.#state === 'done'
          if (done && position >= Math.min(limit(), this.#written)) {
            reader.push(null)
            return
          }
          // Until the blob is verified the last byte is held back, so that no
          // client ever receives a complete response of unverified bytes.
          const end = done ? Math.min(this.#written, limit()) : Math.min(this.#written, limit() - 1)
          const available = end - position
          if (available <= 0) {
            this.#waiters.push(arrived)
            return
          }
          readPooledRun(this.#temp.handle, buffers, position, available, READ_RUN).then(chunks => {
            if (reader.destroyed) return
            if (chunks === undefined) {
              reader.destroy(new Error(`short read from the download of ${this.digest}`))
              return
            }
            // The position moves past the whole run before any of it is pushed: a push can
            // start the next read at once, which must begin after this run, not inside it.
            for (const chunk of chunks) position += chunk.length
            for (const chunk of chunks) reader.push(chunk)
          }, (err: Error) => reader.destroy(err))
        }
        // A reader that has caught up takes new bytes straight from memory as they are
        // written, rather than reading them back from the file.
        const arrived = (chunks: readonly Buffer[] | undefined, chunksStart: number): void => {
          if (reader.destroyed) return
          if (chunks === undefined || this.#state !== 'running') {
            pump()
            return
          }
          const stop = limit() - 1 // the last byte waits for verification
          // Bytes that start past this reader's position (it missed some) come from the file instead.
          if (chunksStart > position) {
            pump()
            return
          }
          const parts: Buffer[] = []
          let offset = chunksStart
          for (const chunk of chunks) {
            const from = Math.max(position, offset)
            const to = Math.min(offset + chunk.length, stop)
            // A counted view when the chunk is one of the pool's (a socket read): the reader's client
            // gives it back once sent.
            if (to > from) parts.push(buffers.view(chunk, from - offset, to - offset))
            offset += chunk.length
          }
          if (parts.length === 0) {
            pump()
            return
          }
          for (const part of parts) position += part.length
          for (const part of parts) reader.push(part)
        }
        pump()
      },
      destroy: (err, cb) => {
        release()
        cb(err)
      }
    })
    reader.once('end', release)
    return reader
  }

  /** Wakes waiting readers, handing them the bytes just written (from `start`) when there are some. */
  #notify (chunks?: readonly Buffer[], start = 0): void {
    const waiters = this.#waiters
    this.#waiters = []
    for (const w of waiters) w(chunks, start)
  }

  #release (): void {
    this.#users--
    if (this.#users === 0) {
      this.#temp.handle.close().catch(() => {})
    }
  }
}

/**
 * Writes every byte of `chunks` at `position`. A nearly full disk takes part of a write
 * and says so only by the count; the rest is written again, so that a full disk surfaces
 * as ENOSPC instead of a file shorter than what was counted.
 */
async function writeFully (handle: FileHandle, chunks: Buffer[], length: number, position: number): Promise<void> {
  let written = (await handle.writev(chunks, position)).bytesWritten
  if (written === length) return
  const rest = Buffer.concat(chunks, length)
  while (written < length) {
    const { bytesWritten } = await handle.write(rest, written, length - written, position + written)
    if (bytesWritten === 0) throw Object.assign(new Error(`no room to write at byte ${position + written}`), { code: 'ENOSPC' })
    written += bytesWritten
  }
}
