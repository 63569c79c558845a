// The end of a blob's stream in warm and import: counts and hashes what
// arrives, and fails at the end unless the bytes are exactly the digest and
// size expected.

import { createHash, type Hash } from 'node:crypto'
import { Transform, Writable, type TransformCallback } from 'node:stream'
import { DigestMismatchError } from '../errors.js'
import { parseDigest } from '../reference.js'

function check (digest: string, expectedSize: number | undefined, bytes: number, hash: Hash, what: string): Error | undefined {
  const actual = `${parseDigest(digest).algorithm}:${hash.digest('hex')}`
  if (expectedSize !== undefined && bytes !== expectedSize) {
    return new DigestMismatchError(digest, actual, `${what} has ${bytes} bytes, expected ${expectedSize}`)
  }
  if (actual !== digest) return new DigestMismatchError(digest, actual, `${what} does not match its digest: got ${actual}`)
  return undefined
}

/** Swallows the bytes; the pipeline fails unless they were right. */
export class DigestSink extends Writable {
  readonly #digest: string
  readonly #size: number | undefined
  readonly #hash: Hash
  readonly #what: string
  readonly #onBytes: ((n: number) => void) | undefined
  #bytes = 0

  constructor (digest: string, size: number | undefined, what: string, onBytes?: (n: number) => void) {
    super({ highWaterMark: 1024 * 1024 })
    this.#digest = digest
    this.#size = size
    this.#what = what
    this.#onBytes = onBytes
    this.#hash = createHash(parseDigest(digest).algorithm)
  }

  get bytes (): number { return this.#bytes }

  override _write (chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#hash.update(chunk)
    this.#bytes += chunk.length
    this.#onBytes?.(chunk.length)
    if (this.#size !== undefined && this.#bytes > this.#size) {
      callback(new DigestMismatchError(this.#digest, 'unknown', `${this.#what} has more than the expected ${this.#size} bytes`))
      return
    }
    callback()
  }

  override _final (callback: (err?: Error | null) => void): void {
    callback(check(this.#digest, this.#size, this.#bytes, this.#hash, this.#what))
  }
}

/** Passes bytes on (to a staging file); fails at the end unless they were right. */
export class DigestCheck extends Transform {
  readonly #digest: string
  readonly #size: number | undefined
  readonly #hash: Hash
  readonly #what: string
  readonly #onBytes: ((n: number) => void) | undefined
  #bytes = 0

  constructor (digest: string, size: number | undefined, what: string, onBytes?: (n: number) => void) {
    super({ highWaterMark: 1024 * 1024 })
    this.#digest = digest
    this.#size = size
    this.#what = what
    this.#onBytes = onBytes
    this.#hash = createHash(parseDigest(digest).algorithm)
  }

  get bytes (): number { return this.#bytes }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk)
    this.#bytes += chunk.length
    this.#onBytes?.(chunk.length)
    callback(null, chunk)
  }

  override _flush (callback: TransformCallback): void {
    callback(check(this.#digest, this.#size, this.#bytes, this.#hash, this.#what))
  }
}
