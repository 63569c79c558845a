// Open connections per client address, checked as each is accepted: past
// maxConnections the listener takes no more from anyone, so without this one
// address opening silent connections (each held for headersTimeout) could
// take every slot. A connection past its address's share is closed before a
// byte is read; the others' connections are untouched.
//
// Trusted proxies are not capped: a balancer carries many clients on its
// connections, which the per-client request limit tells apart by
// X-Forwarded-For once the headers arrive; only the global maxConnections
// bounds a balancer. Each listener has a ConnectionCap of its own, so a flood
// on the main listener leaves the operational one answering.

import type { Server, Socket } from 'node:net'
import type { Logger } from 'pino'
import type { ConnectionRefusal, MirrorEvents } from '../events.js'
import { plainAddress } from '../ip-address.js'
import type { TrustedProxies } from './client-address.js'

export interface ConnectionCapOptions {
  /** Connections one address may hold open on this listener. */
  readonly maxPerClient: number
  /** Exempt: balancers carry many clients. */
  readonly trusted: TrustedProxies
  readonly events: Pick<MirrorEvents, 'connectionRefused'>
  readonly log: Logger
  /** Names the listener in log lines: "main", "ops". */
  readonly listener: string
  readonly now?: (() => number) | undefined
}

/** A refusal is logged once per address per minute, and at most LINES_PER_MINUTE lines in all: a flood of refusals cannot flood the log. */
const LOG_EVERY = 60_000
const LINES_PER_MINUTE = 60
/** Addresses whose last refusal line is remembered; past this, the oldest is forgotten (and may be logged again). */
const REMEMBERED = 1024

export class ConnectionCap {
  readonly #o: ConnectionCapOptions
  readonly #now: () => number
  /** Open connections by address; an address with none has no entry. */
  readonly #open = new Map<string, number>()
  /** When each address may be logged again, and its refusals not logged since (in order of the last line). */
  readonly #logged = new Map<string, { until: number, unlogged: number }>()
  #window = { start: 0, lines: 0 }

  constructor (options: ConnectionCapOptions) {
    if (!Number.isSafeInteger(options.maxPerClient) || options.maxPerClient < 1) throw new Error(`ConnectionCap: maxPerClient must be a positive integer, got ${options.maxPerClient}`)
    this.#o = options
    this.#now = options.now ?? Date.now
  }

  /** Addresses with a connection open (what the map holds). */
  get clients (): number { return this.#open.size }

  /** Caps each connection `server` accepts; counts (and logs) those it drops past maxConnections. */
  watch (server: Server): void {
    server.on('connection', (socket: Socket) => { this.#admit(socket) })
    // Node closes connections past server.maxConnections before 'connection'; it says so with 'drop'.
    server.on('drop', (data?: { remoteAddress?: string }) => {
      this.#refused('max-connections', plainAddress(data?.remoteAddress ?? ''))
    })
  }

  #admit (socket: Socket): void {
    const remote = socket.remoteAddress
    // Gone already (reset before it was accepted): nothing to count.
    if (remote === undefined) return
    const address = plainAddress(remote)
    if (this.#o.trusted.includes(address)) return
    const open = this.#open.get(address) ?? 0
    if (open >= this.#o.maxPerClient) {
      socket.destroy()
      this.#refused('per-client', address)
      return
    }
    this.#open.set(address, open + 1)
    socket.once('close', () => {
      const left = (this.#open.get(address) ?? 1) - 1
      if (left <= 0) this.#open.delete(address)
      else this.#open.set(address, left)
    })
  }

  #refused (reason: ConnectionRefusal, address: string): void {
    this.#o.events.connectionRefused(reason)
    const now = this.#now()
    // Past maxConnections the server is full for everyone: one line a minute says so, whoever knocks.
    const key = reason === 'max-connections' ? reason : address
    const last = this.#logged.get(key)
    if (last !== undefined && now < last.until) {
      last.unlogged++
      return
    }
    if (now - this.#window.start >= LOG_EVERY) this.#window = { start: now, lines: 0 }
    if (this.#window.lines >= LINES_PER_MINUTE) return
    this.#window.lines++
    this.#logged.delete(key)
    this.#logged.set(key, { until: now + LOG_EVERY, unlogged: 0 })
    if (this.#logged.size > REMEMBERED) {
      const oldest = this.#logged.keys().next()
      if (oldest.done !== true) this.#logged.delete(oldest.value)
    }
    // Refusals since the last line that said so, which no line has reported yet.
    const unlogged = last?.unlogged ?? 0
    if (reason === 'per-client') {
      this.#o.log.warn({ address, listener: this.#o.listener, limit: this.#o.maxPerClient, unlogged }, 'connection refused: this address holds its share of connections (limits.maxConnectionsPerClient); further refusals from it are logged once a minute')
    } else {
      this.#o.log.warn({ address: address === '' ? undefined : address, listener: this.#o.listener, unlogged }, 'connection refused: the listener is full (limits.maxConnections); further refusals are logged once a minute')
    }
  }
}
