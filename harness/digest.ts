import { createHash, type Hash } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'

export function sha256 (data: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex')
}

/** Passes bytes through unchanged while counting and hashing them. */
export class HashingStream extends Transform {
  readonly #hash: Hash = createHash('sha256')
  size = 0

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk)
    this.size += chunk.length
    callback(null, chunk)
  }

  /** Only after the stream has ended. */
  digest (): string {
    return 'sha256:' + this.#hash.digest('hex')
  }
}
