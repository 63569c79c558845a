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
