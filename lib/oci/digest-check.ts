// A stream that hashes and counts the bytes going through it and fails at the
// end unless they are exactly the digest and size expected. With `holdLast`
// the last chunk is held back until that check passes, so a client reading
// through it never gets a complete response of wrong bytes; with `discard`
// nothing goes on (a sink that only verifies).

import { createHash, type Hash } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import { DigestMismatchError } from '../errors.js'
import { parseDigest } from './reference.js'

/** The digest of bytes held in memory (a manifest), with the algorithm named: `sha256:<hex>`. */
export function digestOf (content: Uint8Array, algorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(content).digest('hex')}`
}

/** Whether bytes held in memory are what `digest` (already parsed as valid) names. */
export function matchesDigest (content: Uint8Array, digest: string): boolean {
  return digestOf(content, parseDigest(digest).algorithm) === digest
}

export interface DigestCheckOptions {
  /** Names the bytes in messages: `blob sha256:...`, `entry blobs/sha256/...`. */
  readonly what: string
  readonly holdLast?: boolean
  readonly discard?: boolean
  readonly onBytes?: (n: number) => void
}

export class DigestCheck extends Transform {
  readonly #digest: string
  readonly #size: number | undefined
  readonly #hash: Hash
  readonly #o: DigestCheckOptions
  #held: Buffer | undefined
  #bytes = 0

  constructor (digest: string, size: number | undefined, options: DigestCheckOptions) {
    super({ highWaterMark: 1024 * 1024 })
    this.#digest = digest
    this.#size = size
    this.#o = options
    this.#hash = createHash(parseDigest(digest).algorithm)
  }

  get bytes (): number { return this.#bytes }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk)
    this.#bytes += chunk.length
    this.#o.onBytes?.(chunk.length)
    if (this.#size !== undefined && this.#bytes > this.#size) {
      callback(new DigestMismatchError(this.#digest, 'unknown', `${this.#o.what} has more than the expected ${this.#size} bytes`))
      return
    }
    if (this.#o.discard === true) {
      callback()
    } else if (this.#o.holdLast === true) {
      const previous = this.#held
      this.#held = chunk
      callback(null, previous)
    } else {
      callback(null, chunk)
    }
  }

  override _flush (callback: TransformCallback): void {
    const actual = `${parseDigest(this.#digest).algorithm}:${this.#hash.digest('hex')}`
    if (this.#size !== undefined && this.#bytes !== this.#size) {
      callback(new DigestMismatchError(this.#digest, actual, `${this.#o.what} has ${this.#bytes} bytes, expected ${this.#size}`))
    } else if (actual !== this.#digest) {
      callback(new DigestMismatchError(this.#digest, actual, `${this.#o.what} does not match its digest: got ${actual}`))
    } else {
      callback(null, this.#held)
    }
  }
}
