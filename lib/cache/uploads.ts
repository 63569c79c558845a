// Verified blobs on their way to a remote store (a bucket). A download's
// clients never wait for the upload: once the bytes are verified they are
// released, and the blob is put into the store here, in the background, from
// its file in staging. Until the upload succeeds the blob is served from that
// file, and it has no row: a node never indexes what the bucket lacks. A
// failed try is logged, counted and tried again from the same file; after the
// last try the file is removed and the blob is a miss again.

import type { Logger } from 'pino'
import type { MirrorEvents } from '../events.js'
import { Limiter } from '../limiter.js'

export interface PendingBlob {
  readonly digest: string
  readonly size: number
  /** The verified file in staging. */
  readonly path: string
  readonly repository: string
  readonly mediaType: string | null
}

export interface UploadsOptions {
  /** Puts the file into the store (which removes the local file once stored). */
  readonly put: (blob: PendingBlob) => Promise<void>
  /** Runs once the store has the blob: its row is written. */
  readonly stored: (blob: PendingBlob) => void
  /** Runs after the last failed try: its file is removed. */
  readonly abandoned: (blob: PendingBlob) => Promise<void>
  readonly log: Logger
  readonly events?: Pick<MirrorEvents, 'storeUpload'> | undefined
  /** Milliseconds to wait before each try after the first; their count is the number of retries. */
  readonly retryDelays?: readonly number[]
}

/** Uploads running at once: each holds up to two parts in memory and a connection to the store. */
const UPLOADS_AT_ONCE = 4
const RETRY_DELAYS = [1_000, 5_000, 30_000, 120_000, 300_000]

export class Uploads {
  readonly #o: UploadsOptions
  readonly #pending = new Map<string, PendingBlob>()
  readonly #running = new Set<Promise<void>>()
  readonly #slots = new Limiter(UPLOADS_AT_ONCE)
  readonly #stop = new AbortController()

  constructor (options: UploadsOptions) {
    this.#o = options
  }

  /** The verified blob waiting for (or in) its upload, if any. */
  get (digest: string): PendingBlob | undefined {
    return this.#pending.get(digest)
  }

  get size (): number { return this.#pending.size }

  /** Starts putting a verified blob into the store; a blob already on its way is not put twice. */
  add (blob: PendingBlob): boolean {
    if (this.#pending.has(blob.digest) || this.#stop.signal.aborted) return false
    this.#pending.set(blob.digest, blob)
    const running = this.#upload(blob).finally(() => {
      this.#pending.delete(blob.digest)
      this.#running.delete(running)
    })
    this.#running.add(running)
    return true
  }

  async #upload (blob: PendingBlob): Promise<void> {
    const delays = this.#o.retryDelays ?? RETRY_DELAYS
    for (let attempt = 0; ; attempt++) {
      const delay = delays[attempt]
      const release = await this.#slots.acquire()
      try {
        await this.#o.put(blob)
        this.#o.events?.storeUpload('ok', blob.size)
        this.#o.stored(blob)
        return
      } catch (err) {
        const last = delay === undefined || this.#stop.signal.aborted
        this.#o.events?.storeUpload(last ? 'failed' : 'retry', blob.size)
        this.#o.log.error({ digest: blob.digest, bytes: blob.size, attempt: attempt + 1, err }, last
          ? 'could not put a verified blob into the store; giving up (it is a miss again, fetched anew when asked)'
          : 'could not put a verified blob into the store; trying again')
        if (last) {
          await this.#o.abandoned(blob).catch(() => {})
          return
        }
      } finally {
        release()
      }
      await new Promise<void>(resolve => {
        const timer = setTimeout(resolve, delay ?? 0)
        this.#stop.signal.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
      })
    }
  }

  /** Resolves when no upload is under way (tests, close). */
  async idle (): Promise<void> {
    while (this.#running.size > 0) await Promise.allSettled([...this.#running])
  }

  /** Lets the uploads under way finish (or fail) once more, with no further tries; takes no new ones. */
  async close (): Promise<void> {
    this.#stop.abort()
    await this.idle()
  }
}
