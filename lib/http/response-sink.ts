// The end of a blob body's pipeline: writes each chunk to the HTTP response
// and, once the socket has taken it, hands the chunk to `written` so its
// buffer can be read into again (see store/buffer-pool.ts). Koa's own
// pipeline to the response cannot tell when a chunk has been sent.

import type { ServerResponse } from 'node:http'
import { type Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { ResponseGoneError } from '../errors.js'
import { isSendable } from '../sendable-body.js'

/** Bytes the sink queues behind the write under way before its source has to wait. */
const QUEUED_BYTES = 1024 * 1024

export class ResponseSink extends Writable {
  readonly #res: ServerResponse
  readonly #written: (chunk: Uint8Array) => void

  constructor (res: ServerResponse, written: (chunk: Uint8Array) => void) {
    // Chunks arriving while a write is under way queue up to this much, then go out in one writev.
    super({ highWaterMark: QUEUED_BYTES })
    this.#res = res
    this.#written = written
    res.once('close', () => {
      if (!res.writableFinished) this.destroy(new ResponseGoneError())
    })
  }

  override _write (chunk: Uint8Array, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#res.write(chunk, err => {
      this.#written(chunk)
      callback(err)
    })
  }

  override _writev (entries: Array<{ chunk: Uint8Array }>, callback: (error?: Error | null) => void): void {
    // Chunks that queued up while the socket was busy go out in one writev.
    const res = this.#res
    res.cork()
    let left = entries.length
    let failure: Error | null | undefined
    for (const { chunk } of entries) {
      res.write(chunk, err => {
        this.#written(chunk)
        failure ??= err
        if (--left === 0) callback(failure)
      })
    }
    res.uncork()
  }

  override _final (callback: (error?: Error | null) => void): void {
    this.#res.end(() => callback())
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    // A body that failed part way must not look complete to the client: cut the connection.
    if (err !== null && !this.#res.writableFinished) this.#res.destroy()
    callback(err)
  }
}

/**
 * Sends a blob body to the response: a body that can write itself (a cached file) does so,
 * any other goes through a ResponseSink. A body that fails part way, or a client that goes
 * away, cuts the connection; the promise rejects then.
 */
export async function sendBody (res: ServerResponse, body: Readable, written: (chunk: Uint8Array) => void): Promise<void> {
  if (!isSendable(body)) {
    await pipeline(body, new ResponseSink(res, written))
    return
  }
  const gone = new AbortController()
  const closed = (): void => { if (!res.writableFinished) gone.abort(new ResponseGoneError()) }
  res.once('close', closed)
  try {
    await body.sendTo({ write: (chunk, done) => res.write(chunk, done) }, gone.signal)
    await new Promise<void>((resolve, reject) => {
      gone.signal.addEventListener('abort', () => reject(gone.signal.reason), { once: true })
      res.end(resolve)
    })
  } catch (err) {
    if (!res.writableFinished) res.destroy()
    throw err
  } finally {
    res.off('close', closed)
  }
}
