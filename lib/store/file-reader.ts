// A byte range of an open file as a stream, read into buffers from a pool.
// Whoever consumes the chunks may give them back to the pool once it is done
// with them (the HTTP response sink does, after the socket took the bytes);
// chunks never given back are simply garbage collected.

import { Readable } from 'node:stream'
import type { FileHandle } from 'node:fs/promises'
import type { BufferPool } from './buffer-pool.js'

export interface FileReaderOptions {
  /** First byte; 0 unless given. */
  readonly start?: number | undefined
  /** One past the last byte. */
  readonly end: number
  readonly buffers: BufferPool
  /** Names the file in errors. */
  readonly what: string
}

export class FileReader extends Readable {
  readonly #handle: FileHandle
  readonly #end: number
  readonly #buffers: BufferPool
  readonly #what: string
  #position: number

  /** Takes ownership of the handle: it is closed when the stream ends or is destroyed. */
  constructor (handle: FileHandle, options: FileReaderOptions) {
    // One chunk read ahead of the consumer: more would only hold more buffers.
    super({ highWaterMark: 1 })
    this.#handle = handle
    this.#end = options.end
    this.#buffers = options.buffers
    this.#what = options.what
    this.#position = options.start ?? 0
  }

  override _read (): void {
    if (this.#position >= this.#end) {
      this.push(null)
      return
    }
    const buffer = this.#buffers.take()
    const length = Math.min(buffer.length, this.#end - this.#position)
    this.#handle.read(buffer, 0, length, this.#position).then(({ bytesRead }) => {
      if (this.destroyed) return
      if (bytesRead === 0) {
        this.#buffers.give(buffer)
        this.destroy(new Error(`${this.#what} ended at byte ${this.#position}, short of ${this.#end}`))
        return
      }
      this.#position += bytesRead
      this.push(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead))
    }, (err: Error) => {
      this.#buffers.give(buffer)
      this.destroy(err)
    })
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    // FileHandle.close waits for a read under way.
    this.#handle.close().then(() => callback(err), (closeErr: Error) => callback(err ?? closeErr))
  }
}
