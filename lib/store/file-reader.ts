// A byte range of an open file as a stream, read into buffers from a pool.
// Whoever consumes the chunks may give them back to the pool once it is done
// with them (the HTTP response sink does, after the socket took the bytes);
// chunks never given back are simply garbage collected.

import { Readable } from 'node:stream'
import type { FileHandle } from 'node:fs/promises'
import { ShortFileError } from '../errors.js'
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
    readPooled(this.#handle, this.#buffers, this.#position, this.#end - this.#position).then(chunk => {
      if (this.destroyed) return
      if (chunk === undefined) {
        this.destroy(new ShortFileError(`${this.#what} ended at byte ${this.#position}, short of ${this.#end}`))
        return
      }
      this.#position += chunk.length
      this.push(chunk)
    }, (err: Error) => this.destroy(err))
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    // FileHandle.close waits for a read under way.
    this.#handle.close().then(() => callback(err), (closeErr: Error) => callback(err ?? closeErr))
  }
}

/**
 * Reads up to `length` bytes at `position` into a buffer from the pool. Resolves with the
 * bytes read (the buffer, or a view of it), or undefined at the end of the file; a buffer
 * that ends up holding nothing goes back to the pool.
 */
export async function readPooled (handle: FileHandle, buffers: BufferPool, position: number, length: number): Promise<Buffer | undefined> {
  const buffer = buffers.take()
  try {
    const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, length), position)
    if (bytesRead === 0) {
      buffers.give(buffer)
      return undefined
    }
    return bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead)
  } catch (err) {
    buffers.give(buffer)
    throw err
  }
}
