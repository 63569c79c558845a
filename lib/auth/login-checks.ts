// The order in which logins get their bcrypt check. A check costs a core for
// milliseconds to a tenth of a second, so only a few run at once and a
// bounded number wait; past that, 429. Names the htpasswd file lists have a
// lane of their own, served first: a flood of made-up names from many
// addresses fills only its own lane, and a user of the mirror still logs in.
// Within the listed lane each name may have only a few checks waiting, so a
// flood aimed at one user's name leaves room for the others.

import { TooManyRequestsError } from '../errors.js'

export type Lane = 'listed' | 'unlisted'

export interface LoginChecksOptions {
  /** Checks running at once. */
  readonly atOnce: number
  /** Checks waiting, per lane. */
  readonly waiting: number
  /** Checks waiting for one listed name. */
  readonly waitingPerName: number
}

interface Waiter { readonly name: string, readonly start: () => void }

export class LoginChecks {
  readonly #o: LoginChecksOptions
  #running = 0
  readonly #queues: Record<Lane, Waiter[]> = { listed: [], unlisted: [] }
  /** Checks waiting per listed name; a name goes when none waits. */
  readonly #perName = new Map<string, number>()

  constructor (options: LoginChecksOptions) {
    this.#o = options
  }

  /** Checks waiting in a lane. */
  waiting (lane: Lane): number { return this.#queues[lane].length }

  /** Runs the check in its turn; a 429 at once when its lane, or its name's share of the listed lane, is full. */
  async run<T> (lane: Lane, name: string, check: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#o.atOnce) await this.#wait(lane, name)
    else this.#running++
    try {
      return await check()
    } finally {
      this.#next()
    }
  }

  async #wait (lane: Lane, name: string): Promise<void> {
    const queue = this.#queues[lane]
    const mine = lane === 'listed' ? this.#perName.get(name) ?? 0 : 0
    if (queue.length >= this.#o.waiting || mine >= this.#o.waitingPerName) {
      throw new TooManyRequestsError('too many logins are being checked; try again in a moment', undefined, { 'retry-after': '1' })
    }
    if (lane === 'listed') this.#perName.set(name, mine + 1)
    await new Promise<void>(resolve => queue.push({ name, start: resolve }))
  }

  /** A check ended: its slot passes to the first listed name waiting, else the first other. */
  #next (): void {
    const listed = this.#queues.listed.shift()
    if (listed !== undefined) {
      const left = (this.#perName.get(listed.name) ?? 1) - 1
      if (left <= 0) this.#perName.delete(listed.name)
      else this.#perName.set(listed.name, left)
      listed.start()
      return
    }
    const other = this.#queues.unlisted.shift()
    if (other !== undefined) other.start()
    else this.#running--
  }
}
