// When to evict: on a schedule, when a stored blob takes the cache past the
// high watermark, and when a download needs room the disk does not have. What
// to evict is the Evictor's business; this keeps the count of bytes cached
// between its passes.

import type { Logger } from 'pino'
import type { EvictionRequest, Evictor } from './eviction.js'

/** What the blob service needs of eviction: room on a full disk, and to say what it stored. */
export interface CacheSpace {
  /**
   * Evicts until at least this many more bytes are free (best effort; never throws), leaving
   * the manifests in `protect` and what they name alone.
   */
  makeRoom: (bytes: number, protect?: Iterable<string>) => Promise<void>
  /** The most eviction could free, leaving pinned images and those in `protect` alone. */
  evictable: (protect?: Iterable<string>) => number
  /** A blob of this size was just added to the cache. */
  stored: (bytes: number) => void
}

export interface EvictionScheduleOptions {
  readonly evictor: Evictor
  /** Bytes cached when the schedule starts. */
  readonly usedBytes: number
  /** Milliseconds between scheduled passes. */
  readonly interval: number
  readonly log: Logger
}

export class EvictionSchedule implements CacheSpace {
  readonly #evictor: Evictor
  readonly #log: Logger
  readonly #timer: NodeJS.Timeout
  #usedBytes: number

  constructor (options: EvictionScheduleOptions) {
    this.#evictor = options.evictor
    this.#log = options.log
    this.#usedBytes = options.usedBytes
    this.#timer = setInterval(() => { void this.run() }, options.interval)
    this.#timer.unref()
  }

  /** Bytes cached, kept current by stored blobs and eviction passes. */
  get usedBytes (): number { return this.#usedBytes }

  stored (bytes: number): void {
    this.#usedBytes += bytes
    if (this.#evictor.overHighWatermark(this.#usedBytes)) void this.run()
  }

  async makeRoom (bytes: number, protect?: Iterable<string>): Promise<void> {
    await this.run({ needBytes: bytes, protect })
  }

  evictable (protect?: Iterable<string>): number {
    return this.#evictor.evictableBytes(protect)
  }

  /** One eviction pass (shared with one under way); failures are logged, never thrown. */
  async run (request: EvictionRequest = {}): Promise<void> {
    try {
      const result = await this.#evictor.run(request)
      this.#usedBytes = result.usedBytes
    } catch (err) {
      this.#log.error({ err }, 'eviction failed')
    }
  }

  /** Stops the schedule and waits for a pass under way. */
  async close (): Promise<void> {
    clearInterval(this.#timer)
    await this.#evictor.idle()
  }
}
