// Read buffers for serving blob bytes, taken again once the socket has their
// bytes. Serving a warm blob at ~1 GB/s with a fresh 1 MiB buffer per read had
// V8 running a major GC several times a second for the external memory alone,
// its marking threads taking the very cores that serve: reusing the buffers
// took `npm run bench` workload 3 from ~1.0 to ~1.7 GB/s on a 2-core machine.
//
// A download's socket reads into the same buffers (upstream/blob-agent.ts),
// shared: each part of one handed on (to the temp file's write, to each client
// streaming the download) is a counted view, and the buffer is read into again
// only once every view has been given back. A view never given back (a client
// gone with bytes queued) only means the buffer is left to the garbage
// collector. Fresh 1 MiB buffers per socket read had the kernel zeroing new
// pages for a fifth of the main thread's time on a cold 200 MB pull.

export class BufferPool {
  /** Bytes per buffer. */
  readonly size: number
  readonly #maxFree: number
  readonly #free: Buffer[] = []
  /** Memory handed out and not yet given back: only these are ever taken back, and once. */
  readonly #out = new WeakSet<ArrayBufferLike>()
  /** Memory handed out shared: its views still out, and how many. */
  readonly #shared = new WeakMap<ArrayBufferLike, { refs: number, readonly views: WeakSet<Uint8Array> }>()
  /** Every counted view ever handed out: given again after its memory went to take(), it must not free that. */
  readonly #counted = new WeakSet<Uint8Array>()

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
    const buffer = this.#next()
    this.#out.add(buffer.buffer)
    return buffer
  }

  /**
   * A buffer to hand on in parts: the buffer itself is the first counted view
   * (the taker's own hold), and view() makes more. Reused once all are given back.
   */
  takeShared (): Buffer {
    const buffer = this.#next()
    this.#shared.set(buffer.buffer, { refs: 1, views: new WeakSet([buffer]) })
    this.#counted.add(buffer)
    return buffer
  }

  /**
   * Bytes [start, end) of `of`. Of a counted view (from takeShared or view), the
   * result is counted too and holds the buffer until given back; of anything else
   * it is a plain subarray.
   */
  view (of: Buffer, start: number, end: number): Buffer {
    const part = of.subarray(start, end)
    const shared = this.#shared.get(of.buffer)
    if (shared === undefined) return part
    // A view of one already given back could see its bytes overwritten: that is a bug, said loudly.
    if (!shared.views.has(of)) throw new Error('BufferPool.view of a shared buffer\'s view that was given back')
    shared.views.add(part)
    this.#counted.add(part)
    shared.refs++
    return part
  }

  #next (): Buffer {
    const buffer = this.#free.pop()
    if (buffer !== undefined) return buffer
    this.#allocated++
    // Memory of its own, never a slice of Node's shared pool; shared, so that the hashing
    // worker can read a download's chunks where they are (cache/chunk-hasher.ts).
    return Buffer.from(new SharedArrayBuffer(this.size))
  }

  /**
   * Takes back a buffer from take(), or any view of one, once nothing will read
   * it again. Anything else (a chunk from elsewhere, a second give) is ignored,
   * so a consumer may give every chunk it was handed.
   */
  give (chunk: Uint8Array): void {
    const memory = chunk.buffer
    const shared = this.#shared.get(memory)
    if (shared !== undefined) {
      // Shared: each counted view once; the buffer when the last is back.
      if (!shared.views.delete(chunk) || --shared.refs > 0) return
      this.#shared.delete(memory)
    } else {
      if (this.#counted.has(chunk) || !this.#out.has(memory)) return
      this.#out.delete(memory)
    }
    if (this.#free.length < this.#maxFree) this.#free.push(Buffer.from(memory, 0, this.size))
  }
}

/**
 * Bytes per blob read buffer. A client that stops reading holds one (file-reader.ts sendTo), so
 * this is the most of the mirror's memory a slow reader of a cached blob can hold; one that keeps
 * up gets READ_RUN of them per read.
 */
const READ_CHUNK = 256 * 1024
/** Read buffers kept for reuse between responses (a cold download has some 40 in use: its body's, its write's, its clients'). */
const FREE_READ_BUFFERS = 64

/** The pool blob reads share (cached files, downloads under way, their sockets, the scrub); one per opened data directory. */
export function blobReadBuffers (): BufferPool {
  return new BufferPool(READ_CHUNK, FREE_READ_BUFFERS)
}
