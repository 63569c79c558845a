// Bytes passed straight from upstream to a client, uncached (the disk is
// full), still verified: the last chunk is held back until the digest and
// size check out, so a client never gets a complete response of wrong bytes.

import { createHash, type Hash } from 'node:crypto'
import { Transform, type TransformCallback } from 'node:stream'
import { DigestMismatchError } from '../errors.js'
import { parseDigest } from '../reference.js'

export class VerifyingStream extends Transform {
  readonly #digest: string
  readonly #size: number | undefined
  readonly #hash: Hash
  #held: Buffer | undefined
  #bytes = 0

  constructor (digest: string, size: number | undefined) {
    super()
    this.#digest = digest
    this.#size = size
    this.#hash = createHash(parseDigest(digest).algorithm)
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk)
    this.#bytes += chunk.length
    const previous = this.#held
    this.#held = chunk
    callback(null, previous)
  }

  override _flush (callback: TransformCallback): void {
    const actual = `${parseDigest(this.#digest).algorithm}:${this.#hash.digest('hex')}`
    if (this.#size !== undefined && this.#bytes !== this.#size) {
      callback(new DigestMismatchError(this.#digest, actual, `upstream sent ${this.#bytes} of ${this.#size} bytes for ${this.#digest}`))
      return
    }
    if (actual !== this.#digest) {
      callback(new DigestMismatchError(this.#digest, actual))
      return
    }
    callback(null, this.#held)
  }
}
