// At most N tasks at once; the rest wait their turn in order.

export class Limiter {
  readonly #max: number
  #running = 0
  readonly #waiting: Array<() => void> = []

  constructor (max: number) {
    if (!Number.isSafeInteger(max) || max < 1) throw new Error(`a limit must be a positive integer, got ${max}`)
    this.#max = max
  }

  /** Tasks waiting for a slot. */
  get waiting (): number { return this.#waiting.length }

  /** Waits for a slot; the function returned gives it back (once, however often it is called). */
  async acquire (): Promise<() => void> {
    if (this.#running >= this.#max) await new Promise<void>(resolve => this.#waiting.push(resolve))
    else this.#running++
    let released = false
    return () => {
      if (released) return
      released = true
      const next = this.#waiting.shift()
      if (next !== undefined) next() // the slot passes straight on
      else this.#running--
    }
  }

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire()
    try {
      return await fn()
    } finally {
      release()
    }
  }
}

/**
 * At most `perSecond` a second on average, in bursts of up to that many (a
 * token bucket): for what must not reach a third party faster than that.
 */
export class RateLimit {
  readonly #perSecond: number
  readonly #burst: number
  readonly #now: () => number
  #tokens: number
  #at: number

  constructor (perSecond: number, now: () => number = Date.now) {
    if (!(perSecond > 0) || !Number.isFinite(perSecond)) throw new Error(`a rate must be a positive number, got ${perSecond}`)
    this.#perSecond = perSecond
    this.#burst = Math.max(1, perSecond)
    this.#now = now
    this.#tokens = this.#burst
    this.#at = now()
  }

  /** Takes one: 0 when it was there, else the milliseconds until one will be (nothing taken). */
  take (): number {
    const now = this.#now()
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#at) * this.#perSecond / 1000)
    this.#at = now
    if (this.#tokens >= 1) {
      this.#tokens -= 1
      return 0
    }
    return Math.ceil((1 - this.#tokens) * 1000 / this.#perSecond)
  }
}
