// Requests under way per client address, so that one client cannot take every
// answer the mirror can give; past the limit, a burst waits its turn. A node
// starting fifty pods, or a CI runner, asks for a few hundred manifests and
// blobs at once and then nothing for minutes: a 429 for the tail of that burst
// makes the runtime back off for seconds to minutes (kubelet's image pull
// back-off), where waiting a moment costs a connection and a few bytes.
//
// Bounded throughout: per client at most maxUnderWay running and maxWaiting
// waiting (each for at most maxWait), and a client's entry goes as soon as it
// has nothing under way or waiting, so the map holds only clients with an open
// request, which the connection limits bound.

import { TooManyRequestsError } from '../errors.js'

export interface ClientRequestLimitOptions {
  /** Requests under way at once per client. */
  readonly maxUnderWay: number
  /** Requests past that waiting their turn per client (0: 429 at once). */
  readonly maxWaiting: number
  /** Milliseconds a request waits for its turn before it gets 429. */
  readonly maxWait: number
}

/** A place among a client's requests under way; release() gives it back (once, however often it is called). */
export interface Turn {
  release: () => void
}

interface Waiter {
  /** Hands the waiter the turn of a request that finished. */
  readonly admit: () => void
}

interface ClientRequests {
  underWay: number
  /** In arrival order (a Set iterates in insertion order), so the turn goes to the one that waited longest. */
  readonly waiting: Set<Waiter>
}

export class ClientRequestLimit {
  readonly #o: ClientRequestLimitOptions
  readonly #clients = new Map<string, ClientRequests>()

  constructor (options: ClientRequestLimitOptions) {
    for (const [name, value, min] of [['maxUnderWay', options.maxUnderWay, 1], ['maxWaiting', options.maxWaiting, 0], ['maxWait', options.maxWait, 1]] as const) {
      if (!Number.isSafeInteger(value) || value < min) throw new Error(`ClientRequestLimit: ${name} must be an integer of at least ${min}, got ${value}`)
    }
    this.#o = options
  }

  /** Clients with a request under way or waiting (what the map holds). */
  get clients (): number { return this.#clients.size }

  /**
   * A turn for a request of `client`: at once while it has fewer than
   * maxUnderWay under way, else once one of them finishes (first come, first
   * served). 429 at once when maxWaiting already wait, or after maxWait.
   * Undefined when `gone` fires while the request waits (its client left): it
   * leaves the queue, and there is nobody to answer.
   */
  async acquire (client: string, gone: AbortSignal): Promise<Turn | undefined> {
    const now = this.tryAcquire(client)
    if (now !== undefined) return now
    const entry = this.#clients.get(client) ?? this.#track(client)
    const { maxUnderWay, maxWaiting, maxWait } = this.#o
    if (entry.waiting.size >= maxWaiting) {
      throw new TooManyRequestsError(`${maxUnderWay} requests are under way from this address and ${maxWaiting} more waiting; try again in a moment`, { limit: maxUnderWay, waiting: maxWaiting }, { 'retry-after': '1' })
    }
    if (gone.aborted) {
      this.#forgetIfIdle(client, entry)
      return undefined
    }
    const waiting = entry.waiting
    return await new Promise<Turn | undefined>((resolve, reject) => {
      const leave = (): void => {
        waiting.delete(waiter)
        clearTimeout(timer)
        gone.removeEventListener('abort', onGone)
      }
      const waiter: Waiter = {
        admit: () => {
          leave()
          resolve(this.#turn(client, entry))
        }
      }
      const onGone = (): void => {
        leave()
        this.#forgetIfIdle(client, entry)
        resolve(undefined)
      }
      const timer = setTimeout(() => {
        leave()
        this.#forgetIfIdle(client, entry)
        reject(new TooManyRequestsError(`${maxUnderWay} requests from this address were still under way after ${maxWait} ms of waiting; try again in a moment`, { limit: maxUnderWay }, { 'retry-after': '1' }))
      }, maxWait)
      gone.addEventListener('abort', onGone, { once: true })
      waiting.add(waiter)
    })
  }

  /** A turn at once while the client has fewer than maxUnderWay under way; undefined when it would have to wait (`acquire`). */
  tryAcquire (client: string): Turn | undefined {
    const entry = this.#clients.get(client) ?? this.#track(client)
    if (entry.underWay >= this.#o.maxUnderWay) return undefined
    entry.underWay++
    return this.#turn(client, entry)
  }

  #track (client: string): ClientRequests {
    const entry: ClientRequests = { underWay: 0, waiting: new Set() }
    this.#clients.set(client, entry)
    return entry
  }

  #turn (client: string, entry: ClientRequests): Turn {
    let released = false
    return {
      release: () => {
        if (released) return
        released = true
        const next = entry.waiting.values().next()
        // The turn passes straight to the request that waited longest; underWay stays as it is.
        if (next.done !== true) {
          next.value.admit()
          return
        }
        entry.underWay--
        this.#forgetIfIdle(client, entry)
      }
    }
  }

  #forgetIfIdle (client: string, entry: ClientRequests): void {
    if (entry.underWay === 0 && entry.waiting.size === 0 && this.#clients.get(client) === entry) this.#clients.delete(client)
  }
}
