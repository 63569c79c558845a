// One upstream's circuit: after repeated connect failures or timeouts it is
// marked down for a back-off period, during which no request is sent (what
// the cache can answer is answered at once, the rest gets 503 at once, with
// no connect timeout to wait out); then one probe request is let through,
// and its answer closes the circuit again or doubles the back-off.

export interface CircuitOptions {
  /** Failures in a row that open the circuit. */
  readonly threshold?: number
  readonly backoffMs?: number
  readonly maxBackoffMs?: number
  readonly now?: () => number
  /** Told when the upstream goes down (with when the next probe may go) and when it is back. */
  readonly onChange: (down: { since: number, until: number } | undefined) => void
}

export class CircuitBreaker {
  readonly #threshold: number
  readonly #baseBackoff: number
  readonly #maxBackoff: number
  readonly #now: () => number
  readonly #onChange: CircuitOptions['onChange']
  #failures = 0
  #backoff: number
  #down: { since: number, until: number } | undefined
  #probing = false

  constructor (options: CircuitOptions) {
    this.#threshold = options.threshold ?? 5
    this.#baseBackoff = options.backoffMs ?? 30_000
    this.#maxBackoff = options.maxBackoffMs ?? 5 * 60_000
    this.#backoff = this.#baseBackoff
    this.#now = options.now ?? Date.now
    this.#onChange = options.onChange
  }

  /** Since when the upstream is down, and when the next probe may go; undefined while it is up. */
  get down (): { since: number, until: number } | undefined { return this.#down }

  /** Whether a request may go now: always while up; while down, one probe once the back-off is over. */
  admit (): boolean {
    if (this.#down === undefined) return true
    if (this.#probing || this.#now() < this.#down.until) return false
    this.#probing = true
    return true
  }

  /** The upstream answered (whatever it said). */
  succeeded (): void {
    this.#failures = 0
    this.#probing = false
    if (this.#down === undefined) return
    this.#down = undefined
    this.#backoff = this.#baseBackoff
    this.#onChange(undefined)
  }

  /** A connection could not be made, or the upstream did not answer in time. */
  failed (): void {
    const now = this.#now()
    // A request let through before the circuit opened, failing after: the circuit is open already.
    if (this.#down !== undefined && !this.#probing) return
    if (this.#down !== undefined) {
      // The probe failed: down again, for longer.
      this.#probing = false
      this.#backoff = Math.min(this.#backoff * 2, this.#maxBackoff)
      this.#down = { since: this.#down.since, until: now + this.#backoff }
      this.#onChange(this.#down)
      return
    }
    this.#failures++
    if (this.#failures < this.#threshold) return
    this.#down = { since: now, until: now + this.#backoff }
    this.#onChange(this.#down)
  }
}
