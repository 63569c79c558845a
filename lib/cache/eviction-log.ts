// The last evictions, kept in the index (the last KEPT of them) so that the
// status page and `stats` show them whichever process removed them: a serving
// mirror's eviction passes and scrub, or `gc`. Each removal is noted in memory
// and written in one transaction at the next turn of the event loop: a pass
// that evicts thousands writes at most KEPT rows, once.

import type { EventSink, EvictedItem } from '../events.js'

/** Evictions the index keeps; older ones are deleted as new ones come. */
export const KEPT_EVICTIONS = 100

export interface LoggedEviction {
  /** Epoch milliseconds. */
  readonly at: number
  readonly kind: 'blob' | 'manifest'
  readonly digest: string
  /** Null when the reason does not say (a corrupt file goes whatever its size). */
  readonly bytes: number | null
  /** `age`, `size`, `space` (eviction), `scrub mismatch` (the background scrub). */
  readonly reason: EvictedItem['reason'] | 'scrub mismatch'
  /** Which command removed it: `serve`, `gc`, or another that opened the data directory. */
  readonly by: string
  /** Repositories whose tags went with a manifest. */
  readonly repositories: readonly string[]
}

export interface EvictionLogOptions {
  readonly write: (entries: readonly LoggedEviction[]) => void
  readonly by: string
  readonly now?: (() => number) | undefined
}

export class EvictionLog implements EventSink {
  readonly #o: EvictionLogOptions
  readonly #now: () => number
  #pending: LoggedEviction[] = []
  #scheduled: NodeJS.Immediate | undefined

  constructor (options: EvictionLogOptions) {
    this.#o = options
    this.#now = options.now ?? Date.now
  }

  evicted (item: EvictedItem): void {
    this.#note({ kind: item.kind, digest: item.digest, bytes: item.size, reason: item.reason, repositories: [...new Set(item.tags.map(t => t.repository))] })
  }

  corruptRemoved (kind: 'blob' | 'manifest', digest: string): void {
    this.#note({ kind, digest, bytes: null, reason: 'scrub mismatch', repositories: [] })
  }

  #note (entry: Omit<LoggedEviction, 'at' | 'by'>): void {
    this.#pending.push({ at: this.#now(), by: this.#o.by, ...entry })
    if (this.#pending.length > KEPT_EVICTIONS) this.#pending.shift()
    this.#scheduled ??= setImmediate(() => this.flush())
  }

  /** Writes what was noted (also at close). */
  flush (): void {
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled)
    this.#scheduled = undefined
    if (this.#pending.length === 0) return
    const entries = this.#pending
    this.#pending = []
    this.#o.write(entries)
  }
}
