import { createCipheriv, createHash } from 'node:crypto'
import { Readable } from 'node:stream'

const chunkSize = 1 << 20

/**
 * length pseudo-random bytes, the same for the same seed: AES-256-CTR over
 * zeros, fast enough for hundreds of MB and incompressible, so a gzip'd layer
 * is as large as its payload.
 */
export function seededBytes (seed: string, length: number): Readable {
  const key = createHash('sha256').update(seed).digest()
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16))
  const zeros = Buffer.alloc(chunkSize)
  let left = length
  return new Readable({
    read () {
      if (left === 0) {
        this.push(null)
        return
      }
      const n = Math.min(left, chunkSize)
      left -= n
      this.push(cipher.update(n === chunkSize ? zeros : zeros.subarray(0, n)))
    }
  })
}

/** A seed that differs on every run, so no cache anywhere can already hold the content. */
export function freshSeed (): string {
  return `${Date.now().toString(36)}-${process.pid}-${Math.random().toString(36).slice(2)}`
}
