// Single-flight: concurrent callers asking for the same key share one run.

export class Inflight<T> {
  readonly #running = new Map<string, Promise<T>>()

  /** Joins the run for `key` if one is under way, else starts `fn`. `joined` tells which. */
  run (key: string, fn: () => Promise<T>): { promise: Promise<T>, joined: boolean } {
    const existing = this.#running.get(key)
    if (existing !== undefined) return { promise: existing, joined: true }
    const promise = fn().finally(() => {
      if (this.#running.get(key) === promise) this.#running.delete(key)
    })
    this.#running.set(key, promise)
    return { promise, joined: false }
  }

  get (key: string): Promise<T> | undefined {
    return this.#running.get(key)
  }

  get size (): number { return this.#running.size }
}
