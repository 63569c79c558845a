// One upstream download of one blob, that any number of clients stream from
// while it is still arriving. Bytes go to a temp file as they come, hashed on
// the way; every reader reads that file by position and waits when it has
// caught up. At the end the digest and size are checked and the file is
// committed; on any failure every reader is destroyed (its response is cut,
// never completed) and the temp file removed. Readers leaving early never
// cancel the download.

import { createHash, type Hash } from 'node:crypto'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { FileHandle } from 'node:fs/promises'
import { DigestMismatchError } from '../errors.js'
import { parseDigest } from '../reference.js'

const READ_CHUNK = 256 * 1024

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
}

export class BlobDownload {
  readonly digest: string
  readonly size: number | undefined
  readonly #temp: DownloadTarget
  readonly #hash: Hash
  readonly #options: BlobDownloadOptions
  #written = 0
  #state: DownloadState = 'running'
  #error: Error | undefined
  #waiters: Array<() => void> = []
  #users = 1 // the download itself holds the file open until it ends
  #settled: Promise<void> = Promise.resolve()

  constructor (options: BlobDownloadOptions) {
    this.digest = options.digest
    this.size = options.size
    this.#temp = options.temp
    this.#options = options
    this.#hash = createHash(parseDigest(options.digest).algorithm)
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
    const sink = new Writable({
      highWaterMark: READ_CHUNK,
      write: (chunk: Buffer, _enc, cb) => {
        if (this.size !== undefined && this.#written + chunk.length > this.size) {
          cb(new DigestMismatchError(this.digest, 'unknown', `upstream sent more than the announced ${this.size} bytes for ${this.digest}`))
          return
        }
        this.#temp.handle.write(chunk, 0, chunk.length, this.#written).then(() => {
          this.#hash.update(chunk)
          this.#written += chunk.length
          this.#notify()
          cb()
        }, cb)
      }
    })
    try {
      await pipeline(body, sink)
      if (this.size !== undefined && this.#written !== this.size) {
        throw new DigestMismatchError(this.digest, 'unknown', `upstream sent ${this.#written} of ${this.size} bytes for ${this.digest}`)
      }
      const actual = `${parseDigest(this.digest).algorithm}:${this.#hash.digest('hex')}`
      if (actual !== this.digest) throw new DigestMismatchError(this.digest, actual)
      await this.#temp.handle.datasync()
      await this.#options.commit(this.#temp.path, this.#written)
      this.#state = 'done'
    } catch (err) {
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
    const reader = new Readable({
      highWaterMark: READ_CHUNK,
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
            this.#waiters.push(pump)
            return
          }
          const length = Math.min(available, READ_CHUNK)
          const buffer = Buffer.allocUnsafe(length)
          this.#temp.handle.read(buffer, 0, length, position).then(({ bytesRead }) => {
            if (reader.destroyed) return
            if (bytesRead === 0) {
              reader.destroy(new Error(`short read from the download of ${this.digest}`))
              return
            }
            position += bytesRead
            reader.push(bytesRead === length ? buffer : buffer.subarray(0, bytesRead))
          }, (err: Error) => reader.destroy(err))
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

  #notify (): void {
    const waiters = this.#waiters
    this.#waiters = []
    for (const w of waiters) w()
  }

  #release (): void {
    this.#users--
    if (this.#users === 0) {
      this.#temp.handle.close().catch(() => {})
    }
  }
}
