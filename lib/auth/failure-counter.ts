// Failed logins, counted per client address and, for IPv6, per /64 as well:
// an attacker with an IPv6 network has as many addresses as it likes, but
// one /64 is what a host or a LAN is given. Past the bound, the address (or
// the network) gets 429 for the rest of the window, before any check. The
// counts are bounded: a flood from many addresses cannot grow them.

import { isIPv6 } from 'node:net'
import { LRUCache } from 'lru-cache'
import { TooManyRequestsError } from '../errors.js'
import { prefix64 } from '../ip-address.js'

/** Addresses and networks counted at most (the least recently failing forgotten first). */
const COUNTED = 10_000
/** A /64 holds a LAN of hosts, each with its own address: it may fail this many times what one address may. */
export const NETWORK_FACTOR = 4

export interface FailureCounterOptions {
  /** Failures per address within `window` (milliseconds) before it is refused for the rest of it. */
  readonly maxFailures: number
  readonly window: number
  readonly now?: (() => number) | undefined
}

interface Count { count: number, readonly since: number }

export class FailureCounter {
  readonly #o: FailureCounterOptions
  readonly #now: () => number
  readonly #counts: LRUCache<string, Count>

  constructor (options: FailureCounterOptions) {
    this.#o = options
    this.#now = options.now ?? Date.now
    this.#counts = new LRUCache({ max: COUNTED, ttl: options.window })
  }

  /** Throws a 429 (with Retry-After) when the address or its /64 is past its failures. */
  check (address: string): void {
    for (const [key, max] of this.#keys(address)) {
      const seen = this.#current(key)
      if (seen !== undefined && seen.count >= max) {
        const wait = Math.max(1, Math.ceil((seen.since + this.#o.window - this.#now()) / 1000))
        const from = key.startsWith('net:') ? 'this network' : 'this address'
        throw new TooManyRequestsError(`too many failed logins from ${from}; try again in ${wait} s`, undefined, { 'retry-after': String(wait) })
      }
    }
  }

  record (address: string): void {
    for (const [key] of this.#keys(address)) {
      const seen = this.#current(key)
      if (seen === undefined) this.#counts.set(key, { count: 1, since: this.#now() })
      else seen.count++
    }
  }

  /** The count within its window (the cache's own expiry is a bound on memory, not the window's clock). */
  #current (key: string): Count | undefined {
    const seen = this.#counts.get(key)
    if (seen === undefined || seen.since + this.#o.window > this.#now()) return seen
    this.#counts.delete(key)
    return undefined
  }

  #keys (address: string): Array<[string, number]> {
    const keys: Array<[string, number]> = [[`addr:${address}`, this.#o.maxFailures]]
    const network = isIPv6(address) ? prefix64(address) : undefined
    if (network !== undefined) keys.push([`net:${network}`, this.#o.maxFailures * NETWORK_FACTOR])
    return keys
  }
}
