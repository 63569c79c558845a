// Read buffers for serving blob bytes, taken again once the socket has their
// bytes. Serving a warm blob at ~1 GB/s with a fresh 1 MiB buffer per read had
// V8 running a major GC several times a second for the external memory alone,
// its marking threads taking the very cores that serve: reusing the buffers
// took `npm run bench` workload 3 from ~1.0 to ~1.7 GB/s on a 2-core machine.

export class BufferPool {
  /** Bytes per buffer. */
  readonly size: number
  readonly #maxFree: number
  readonly #free: Buffer[] = []
  /** Memory handed out and not yet given back: only these are ever taken back, and once. */
  readonly #out = new WeakSet<ArrayBufferLike>()

  constructor (size: number, maxFree: number) {
    if (!Number.isInteger(size) || size <= 0) throw new RangeError(`BufferPool size must be a positive integer, got ${size}`)
    if (!Number.isInteger(maxFree) || maxFree < 0) throw new RangeError(`BufferPool maxFree must be a non-negative integer, got ${maxFree}`)
    this.size = size
    this.#maxFree = maxFree
  }

  #allocated = 0

  /** Buffers kept for reuse now. */
  get free (): number { return this.#free.length }
  /** Buffers allocated so far (a reused one is not counted again). */
  get allocated (): number { return this.#allocated }

  take (): Buffer {
    let buffer = this.#free.pop()
    if (buffer === undefined) {
      // allocUnsafeSlow: a buffer of its own, never a slice of Node's shared pool.
      buffer = Buffer.allocUnsafeSlow(this.size)
      this.#allocated++
    }
    this.#out.add(buffer.buffer)
    return buffer
  }

  /**
   * Takes back a buffer from take(), or any view of one, once nothing will read
   * it again. Anything else (a chunk from elsewhere, a second give) is ignored,
   * so a consumer may give every chunk it was handed.
   */
  give (chunk: Uint8Array): void {
    const memory = chunk.buffer
    if (!this.#out.has(memory)) return
    this.#out.delete(memory)
    if (this.#free.length < this.#maxFree) this.#free.push(Buffer.from(memory, 0, this.size))
  }
}

/**
 * Bytes per blob read buffer. A client that stops reading holds one (file-reader.ts sendTo), so
 * this is the most of the mirror's memory a slow reader of a cached blob can hold; one that keeps
 * up gets READ_RUN of them per read.
 */
const READ_CHUNK = 256 * 1024
/** Read buffers kept for reuse between responses. */
const FREE_READ_BUFFERS = 32

/** The pool blob reads share (cached files, downloads under way, the scrub); one per opened data directory. */
export function blobReadBuffers (): BufferPool {
  return new BufferPool(READ_CHUNK, FREE_READ_BUFFERS)
}
