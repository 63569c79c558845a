// Last-access times are written in batches: a request only notes the time in
// memory, and a timer (or close) applies every note in one transaction.

import type { AccessBatch } from '../db/cache-index.js'
import type { EventSink, RequestRecord } from '../events.js'

export interface AccessSink {
  recordAccess (batch: AccessBatch): void
}

export class AccessRecorder implements EventSink {
  #blobs = new Map<string, number>()
  #manifests = new Map<string, number>()
  #counters = new Map<string, number>()
  readonly #sink: AccessSink
  readonly #now: () => number
  readonly #timer: NodeJS.Timeout
  readonly #onError: (err: unknown) => void

  constructor (options: { sink: AccessSink, intervalMs?: number, now?: () => number, onError: (err: unknown) => void }) {
    this.#sink = options.sink
    this.#now = options.now ?? Date.now
    this.#onError = options.onError
    this.#timer = setInterval(() => this.flush(), options.intervalMs ?? 5_000)
    this.#timer.unref()
  }

  // Which repository a request named records nothing: a repository is the cache's only once
  // upstream has shown it has the content (see LocalCache).
  blob (digest: string): void {
    this.#blobs.set(digest, this.#now())
  }

  manifest (digest: string): void {
    this.#manifests.set(digest, this.#now())
  }

  count (name: string, by = 1): void {
    this.#counters.set(name, (this.#counters.get(name) ?? 0) + by)
  }

  /** Counts how blob and manifest requests were answered, for `registry-mirror stats`. */
  requestFinished (record: RequestRecord): void {
    if ((record.kind === 'blob' || record.kind === 'manifest') && record.outcome !== undefined) this.count(`${record.kind}.${record.outcome}`)
  }

  flush (): void {
    if (this.#blobs.size === 0 && this.#manifests.size === 0 && this.#counters.size === 0) return
    const batch: AccessBatch = {
      blobs: this.#blobs,
      manifests: this.#manifests,
      counters: this.#counters
    }
    this.#counters = new Map()
    this.#blobs = new Map()
    this.#manifests = new Map()
    try {
      this.#sink.recordAccess(batch)
    } catch (err) {
      this.#onError(err)
    }
  }

  close (): void {
    clearInterval(this.#timer)
    this.flush()
  }
}
