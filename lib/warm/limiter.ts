// At most N tasks at once; the rest wait their turn in order.

export class Limiter {
  readonly #max: number
  #running = 0
  readonly #waiting: Array<() => void> = []

  constructor (max: number) {
    if (!Number.isSafeInteger(max) || max < 1) throw new Error(`a limit must be a positive integer, got ${max}`)
    this.#max = max
  }

  async run<T> (fn: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#max) await new Promise<void>(resolve => this.#waiting.push(resolve))
    else this.#running++
    try {
      return await fn()
    } finally {
      const next = this.#waiting.shift()
      if (next !== undefined) next() // the slot passes straight on
      else this.#running--
    }
  }
}
