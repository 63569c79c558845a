// Hashes downloads on a worker thread, from the very buffers their bytes
// arrived in: the pool's buffers are SharedArrayBuffers (store/buffer-pool.ts),
// so a chunk reaches the worker without a copy, and goes back to the pool once
// the worker says it is hashed. The main thread spends no time on SHA-256
// (a fifth of its time on a cold pull when it did), and the file is not read
// back either: reading 200 MB back from the page cache cost this machine's
// hashing thread ~100 ms more than the hash itself.

import { Worker } from 'node:worker_threads'

/** Plain JS, run with eval: the worker needs no module resolution (and so no TypeScript loader under test). */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const jobs = new Map()
parentPort.on('message', m => {
  if (m.type === 'start') {
    try { jobs.set(m.id, createHash(m.algorithm)) }
    catch (err) { parentPort.postMessage({ id: m.id, error: err instanceof Error ? err.message : String(err) }) }
    return
  }
  const hash = jobs.get(m.id)
  if (hash === undefined) return
  if (m.type === 'update') {
    for (const chunk of m.chunks) hash.update(chunk)
    parentPort.postMessage({ id: m.id, hashed: true })
  } else if (m.type === 'end') {
    jobs.delete(m.id)
    parentPort.postMessage({ id: m.id, digest: hash.digest('hex') })
  } else {
    jobs.delete(m.id)
  }
})
`

type WorkerReply = { id: number, hashed: true } | { id: number, digest: string } | { id: number, error: string }

interface Job {
  /** Batches sent and not yet hashed, oldest first. */
  readonly batches: Array<readonly Uint8Array[]>
  readonly hashed: (chunk: Uint8Array) => void
  end?: { resolve: (hex: string) => void, reject: (err: Error) => void }
  failed?: Error
}

/** One download being hashed, chunk by chunk. */
export interface HashJob {
  /**
   * Hashes `chunks` next. They must not change until each is handed back to the
   * `hashed` given at start; a chunk over a SharedArrayBuffer is read in place,
   * one over other memory is copied to the worker.
   */
  update: (chunks: readonly Uint8Array[]) => void
  /** Resolves with the hex digest of every chunk given. */
  end: () => Promise<string>
  /** Stops hashing; the digest is never wanted. Chunks still out are handed back. */
  cancel: () => void
}

export class ChunkHasher {
  #worker: Worker | undefined
  #nextId = 1
  readonly #jobs = new Map<number, Job>()
  #closed = false

  /** Starts hashing with `algorithm` (a node:crypto name); `hashed` gets each chunk back once it is no longer read. */
  start (algorithm: string, hashed: (chunk: Uint8Array) => void): HashJob {
    if (this.#closed) throw new Error('the chunk hasher is closed')
    const worker = this.#workerNow()
    const id = this.#nextId++
    const job: Job = { batches: [], hashed }
    this.#jobs.set(id, job)
    worker.postMessage({ type: 'start', id, algorithm })
    let settled = false
    return {
      update: chunks => {
        if (settled || job.failed !== undefined || chunks.length === 0) return
        job.batches.push(chunks)
        worker.postMessage({ type: 'update', id, chunks })
      },
      end: async () => {
        settled = true
        if (job.failed !== undefined || this.#worker !== worker) {
          this.#drop(id, job)
          throw job.failed ?? new Error('the hashing worker went away')
        }
        return await new Promise<string>((resolve, reject) => {
          job.end = { resolve, reject }
          worker.postMessage({ type: 'end', id })
        })
      },
      cancel: () => {
        if (settled) return
        settled = true
        worker.postMessage({ type: 'cancel', id })
        this.#drop(id, job)
      }
    }
  }

  async close (): Promise<void> {
    this.#closed = true
    const worker = this.#worker
    this.#worker = undefined
    if (worker !== undefined) await worker.terminate()
  }

  /** Forgets a job, handing back whatever of its chunks the worker still had. */
  #drop (id: number, job: Job): void {
    this.#jobs.delete(id)
    // The worker may still be reading some for a digest nobody wants: what it reads no longer matters.
    for (const batch of job.batches.splice(0)) for (const chunk of batch) job.hashed(chunk)
  }

  #workerNow (): Worker {
    if (this.#worker !== undefined) return this.#worker
    const worker = new Worker(WORKER_SOURCE, { eval: true })
    // Idle, it must not keep the process alive.
    worker.unref()
    worker.on('message', (reply: WorkerReply) => {
      const job = this.#jobs.get(reply.id)
      if (job === undefined) return
      if ('hashed' in reply) {
        for (const chunk of job.batches.shift() ?? []) job.hashed(chunk)
      } else if ('digest' in reply) {
        this.#jobs.delete(reply.id)
        job.end?.resolve(reply.digest)
      } else {
        this.#fail(reply.id, job, new Error(`hashing a download failed: ${reply.error}`))
      }
    })
    const lost = (err: Error): void => {
      if (this.#worker === worker) this.#worker = undefined
      for (const [id, job] of [...this.#jobs]) this.#fail(id, job, err)
    }
    worker.on('error', lost)
    worker.on('exit', code => lost(new Error(this.#closed ? 'the hashing worker was closed' : `the hashing worker exited (code ${code})`)))
    this.#worker = worker
    return worker
  }

  /** A job that cannot finish: its end() rejects, now or when called. */
  #fail (id: number, job: Job, err: Error): void {
    job.failed = err
    if (job.end !== undefined) {
      this.#drop(id, job)
      job.end.reject(err)
    }
  }
}
