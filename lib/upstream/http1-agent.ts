// Every request to an upstream (and to the hosts it redirects to), over
// HTTP/1.1 of the mirror's own. undici's parser copied every socket read
// (64 KiB) into its wasm memory and out again, each copy a new external buffer
// for V8 to account and collect: on a cold 200 MB blob that was most of the
// mirror's CPU beside the hash (bench/README.md, "The cold path, profiled"),
// and loading undici was a quarter of the process's memory at start. Here the
// socket reads straight into pooled buffers (net's `onread`;
// store/buffer-pool.ts), and a body is handed on as counted views of them:
// the only copies left are the kernel's.
//
// One connection carries one request at a time and is kept for the next while
// it stays clean: a body read to its end, no bytes beyond it, no
// `Connection: close`. Timeouts as undici's: connect (the TLS handshake
// included) and headers are totals, the body's is idle time between reads.

import { connect as netConnect, isIP, type LookupFunction, type OnReadOpts, type Socket } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls'
import { Readable } from 'node:stream'
import { UpstreamClosedError, UpstreamProtocolError, UpstreamTimeoutError } from '../errors.js'
import { ChunkedDecoder, FIELD_NAME, MAX_HEAD_BYTES, parseResponseHead, type BodyFraming } from './h1-message.js'

/** A socket read fills what is left of a pooled buffer; with less than this left, the next one is taken. */
const MIN_READ = 64 * 1024
/** What a body buffers before its socket is paused. */
const BODY_BUFFER = 1024 * 1024
/** A body dumped (a redirect's, an error's) is read to its end up to this; a longer one closes its connection. */
const MAX_DUMP_BYTES = 128 * 1024
const BAD_VALUE = /[\0\r\n]/

/** Where socket reads go: shared buffers, handed on in counted views (store/buffer-pool.ts BufferPool). */
export interface ReadBuffers {
  takeShared: () => Buffer
  view: (of: Buffer, start: number, end: number) => Buffer
  give: (chunk: Uint8Array) => void
}

export interface Http1AgentOptions {
  /** Milliseconds to connect, TLS handshake included. */
  readonly connectTimeout: number
  /** Milliseconds from the request written to its response head read whole. */
  readonly headersTimeout: number
  /** Milliseconds a body may go without a byte. */
  readonly bodyTimeout: number
  /** Milliseconds an idle connection is kept for the next request. */
  readonly keepAliveTimeout: number
  /** Connections per origin at once; more requests wait their turn, in order. */
  readonly maxConnectionsPerOrigin: number
  /** Idle connections kept per origin. */
  readonly maxIdlePerOrigin: number
  /** Resolves host names (the link-local guard). */
  readonly lookup: LookupFunction
  /** Extra TLS settings (a private CA). */
  readonly tls?: Pick<ConnectionOptions, 'ca'> | undefined
  readonly buffers: ReadBuffers
}

export interface Http1Response {
  readonly statusCode: number
  readonly headers: Record<string, string | string[]>
  readonly body: ResponseBody
}

/**
 * A response body: its chunks are counted views of pooled buffers, which whoever
 * is done with one may give back (ReadBuffers.give). Destroying it before its end
 * closes the connection.
 */
export class ResponseBody extends Readable {
  readonly #resume: () => void
  readonly #abort: () => void

  constructor (resume: () => void, abort: () => void) {
    super({ highWaterMark: BODY_BUFFER })
    this.#resume = resume
    this.#abort = abort
    // A body can fail before anyone reads it (the bytes after the head were bad, the upstream
    // went away while the download was being set up): that must not be an unhandled 'error'
    // event, which would end the process. Whoever reads it later gets the error all the same.
    this.on('error', () => {})
  }

  override _read (): void {
    this.#resume()
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    this.#abort()
    callback(err)
  }

  /** Reads the body to its end and drops it (a short one: the connection stays usable); never rejects. */
  async dump (): Promise<void> {
    if (this.readableEnded || this.destroyed) return
    await new Promise<void>(resolve => {
      let seen = 0
      this.on('data', (chunk: Buffer) => {
        seen += chunk.length
        if (seen > MAX_DUMP_BYTES) this.destroy()
      })
      this.on('error', () => {})
      this.once('close', resolve)
      this.once('end', resolve)
    })
  }
}

export class Http1Agent {
  readonly #options: Http1AgentOptions
  readonly #idle = new Map<string, Connection[]>()
  readonly #busy = new Set<Connection>()
  /** Connections per origin, busy or idle. */
  readonly #open = new Map<string, number>()
  /** Requests waiting for a connection to an origin at its cap: handed an idle one, or room for a new one. */
  readonly #waiting = new Map<string, Array<(connection: Connection | undefined) => void>>()
  #closed = false
  #drained: (() => void) | undefined

  constructor (options: Http1AgentOptions) {
    this.#options = options
  }

  /**
   * Sends `method` for `url` with `headers` and resolves with the response head
   * and a body to read; rejects when no head arrives (the socket's error, an
   * UpstreamTimeoutError, UpstreamClosedError or UpstreamProtocolError). At
   * maxConnectionsPerOrigin, waits for one of them, in order.
   */
  async request (method: 'GET' | 'HEAD', url: URL, headers: Readonly<Record<string, string>>): Promise<Http1Response> {
    const request = requestHead(method, url, headers)
    const origin = url.origin
    if (this.#closed) throw new UpstreamClosedError('the upstream agent is closed')
    let connection = this.#idleConnection(origin)
    if (connection === undefined && (this.#open.get(origin) ?? 0) >= this.#options.maxConnectionsPerOrigin) {
      connection = await new Promise<Connection | undefined>(resolve => {
        const queue = this.#waiting.get(origin) ?? []
        queue.push(resolve)
        this.#waiting.set(origin, queue)
      })
      if (this.#closed) {
        connection?.destroy()
        throw new UpstreamClosedError('the upstream agent is closed')
      }
    }
    if (connection === undefined) {
      this.#open.set(origin, (this.#open.get(origin) ?? 0) + 1)
      connection = new Connection(url, this.#options, { released: c => this.#released(c), gone: c => this.#gone(c) })
    }
    this.#busy.add(connection)
    return await connection.exchange(request, method)
  }

  /** Idle connections now, over every origin. */
  get idle (): number {
    let n = 0
    for (const list of this.#idle.values()) n += list.length
    return n
  }

  /** Takes no more requests; resolves once those under way have ended. */
  async close (): Promise<void> {
    this.#closed = true
    this.#dropIdle()
    if (this.#busy.size === 0) return
    await new Promise<void>(resolve => { this.#drained = resolve })
  }

  /** Cuts every connection, under way or idle. */
  async destroy (): Promise<void> {
    this.#closed = true
    this.#dropIdle()
    for (const c of [...this.#busy]) c.destroy()
  }

  #dropIdle (): void {
    for (const list of this.#idle.values()) for (const c of list) c.destroy()
    this.#idle.clear()
    for (const queue of this.#waiting.values()) for (const wake of queue.splice(0)) wake(undefined)
    this.#waiting.clear()
  }

  #idleConnection (origin: string): Connection | undefined {
    const list = this.#idle.get(origin)
    if (list === undefined) return undefined
    const connection = list.pop()
    if (list.length === 0) this.#idle.delete(origin)
    return connection
  }

  /** The next request waiting for this origin, if one is. */
  #nextWaiting (origin: string): ((connection: Connection | undefined) => void) | undefined {
    const queue = this.#waiting.get(origin)
    const wake = queue?.shift()
    if (queue !== undefined && queue.length === 0) this.#waiting.delete(origin)
    return wake
  }

  /** A connection's exchange has ended: to a request waiting for it, kept if it can carry another, else closed. */
  #released (connection: Connection): void {
    this.#busy.delete(connection)
    if (!this.#closed && connection.reusable) {
      const wake = this.#nextWaiting(connection.origin)
      if (wake !== undefined) {
        wake(connection)
        return
      }
      const list = this.#idle.get(connection.origin) ?? []
      if (list.length < this.#options.maxIdlePerOrigin) {
        list.push(connection)
        this.#idle.set(connection.origin, list)
        connection.idle()
      } else {
        connection.destroy()
      }
    } else {
      connection.destroy()
    }
    if (this.#busy.size === 0) this.#drained?.()
  }

  /** A connection is closed (once): its origin has room for another. */
  #gone (connection: Connection): void {
    const origin = connection.origin
    const open = (this.#open.get(origin) ?? 1) - 1
    if (open > 0) this.#open.set(origin, open)
    else this.#open.delete(origin)
    const list = this.#idle.get(origin)
    const at = list?.indexOf(connection) ?? -1
    if (list !== undefined && at >= 0) {
      list.splice(at, 1)
      if (list.length === 0) this.#idle.delete(origin)
    }
    this.#nextWaiting(origin)?.(undefined)
  }
}

function requestHead (method: 'GET' | 'HEAD', url: URL, headers: Readonly<Record<string, string>>): string {
  let head = `${method} ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`
  for (const [name, value] of Object.entries(headers)) {
    // A token from an upstream's token service ends up here: it must not end the line.
    if (!FIELD_NAME.test(name) || BAD_VALUE.test(value)) throw new UpstreamProtocolError(`header ${JSON.stringify(name)} cannot be sent: it holds a line break or is no field name`)
    head += `${name}: ${value}\r\n`
  }
  return `${head}connection: keep-alive\r\n\r\n`
}

type Phase = 'connecting' | 'head' | 'body' | 'idle' | 'gone'

interface ConnectionOwner {
  /** The exchange has ended (its body read or abandoned): the connection may be free for another. */
  readonly released: (c: Connection) => void
  /** The connection is closed; called once. */
  readonly gone: (c: Connection) => void
}

/** One socket to one origin, carrying one exchange at a time. */
class Connection {
  readonly origin: string
  readonly #socket: Socket
  readonly #options: Http1AgentOptions
  readonly #owner: ConnectionOwner
  #phase: Phase = 'connecting'
  #connected = false
  /** The pooled buffer socket reads go into (this connection's hold on it), and how much of it they filled. */
  #slab: Buffer | undefined
  #used = 0
  #timer: NodeJS.Timeout | undefined
  #reusable = true
  /** The exchange under way: its head, or its body. */
  #head: { resolve: (r: Http1Response) => void, reject: (err: Error) => void, bytes: Buffer, sawAny: boolean } | undefined
  #body: { stream: ResponseBody, framing: BodyFraming, remaining: number, chunked: ChunkedDecoder | undefined } | undefined
  #paused = false
  #method: 'GET' | 'HEAD' = 'GET'
  #pendingRequest: string | undefined

  constructor (url: URL, options: Http1AgentOptions, owner: ConnectionOwner) {
    this.origin = url.origin
    this.#options = options
    this.#owner = owner
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname
    const https = url.protocol === 'https:'
    const port = url.port !== '' ? Number(url.port) : (https ? 443 : 80)
    const onread = { buffer: () => this.#nextBuffer(), callback: (n: number, buf: Uint8Array) => this.#onRead(n, buf) }
    // tls.connect takes onread as net.connect does (Node's docs), though its type does not say so.
    const secure: ConnectionOptions & { onread: OnReadOpts } = { host, port, servername: isIP(host) === 0 ? host : undefined, ALPNProtocols: ['http/1.1'], lookup: options.lookup, onread, ...options.tls }
    this.#socket = https
      ? tlsConnect(secure)
      : netConnect({ host, port, lookup: options.lookup, onread })
    this.#socket.setNoDelay(true)
    this.#socket.once(https ? 'secureConnect' : 'connect', () => this.#onConnect())
    this.#socket.on('error', err => this.#fail(err))
    this.#socket.on('end', () => this.#onEnd())
    this.#socket.on('close', () => {
      this.#fail(new UpstreamClosedError(`${this.origin} closed the connection`))
      // No read goes into the buffer after this.
      if (this.#slab !== undefined) this.#options.buffers.give(this.#slab)
      this.#slab = undefined
    })
    this.#socket.on('timeout', () => this.#fail(new UpstreamTimeoutError('BODY_TIMEOUT', `${this.origin} sent no body bytes for ${this.#options.bodyTimeout} ms`)))
    this.#arm(options.connectTimeout, () => new UpstreamTimeoutError('CONNECT_TIMEOUT', `connecting to ${this.origin} took longer than ${options.connectTimeout} ms`))
  }

  get reusable (): boolean { return this.#reusable && this.#phase === 'idle' }

  /** Sends `request` (a whole request head) and resolves with the response head. */
  async exchange (request: string, method: 'GET' | 'HEAD'): Promise<Http1Response> {
    // Closed while it was being handed over: the caller may try again on another.
    if (this.#phase === 'gone') throw new UpstreamClosedError(`the connection to ${this.origin} closed before the request went out`)
    this.#method = method
    if (this.#phase === 'idle') clearTimeout(this.#timer)
    return await new Promise<Http1Response>((resolve, reject) => {
      this.#head = { resolve, reject, bytes: Buffer.alloc(0), sawAny: false }
      if (this.#connected) this.#send(request)
      else this.#pendingRequest = request
    })
  }

  /** Kept for the next request, until keepAliveTimeout. */
  idle (): void {
    this.#phase = 'idle'
    this.#socket.setTimeout(0)
    this.#arm(this.#options.keepAliveTimeout, () => new UpstreamClosedError('idle'))
  }

  destroy (): void {
    this.#fail(new UpstreamClosedError(`the connection to ${this.origin} was closed by the mirror`))
  }

  #onConnect (): void {
    this.#connected = true
    clearTimeout(this.#timer)
    const request = this.#pendingRequest
    this.#pendingRequest = undefined
    if (request !== undefined) this.#send(request)
  }

  #send (request: string): void {
    this.#phase = 'head'
    this.#arm(this.#options.headersTimeout, () => new UpstreamTimeoutError('HEADERS_TIMEOUT', `${this.origin} sent no whole response head within ${this.#options.headersTimeout} ms`))
    this.#socket.write(request, 'latin1')
  }

  /** A timer for a phase's total time (connect, head, idle); one at a time. */
  #arm (ms: number, error: () => Error): void {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => this.#fail(error()), ms)
    this.#timer.unref()
  }

  /** Where the next socket read goes: the rest of the buffer, or a new one. */
  #nextBuffer (): Buffer {
    const buffers = this.#options.buffers
    if (this.#slab === undefined || this.#slab.length - this.#used < MIN_READ) {
      // Every read into the old one is done: the views handed on hold it from here.
      if (this.#slab !== undefined) buffers.give(this.#slab)
      this.#slab = buffers.takeShared()
      this.#used = 0
    }
    return this.#slab.subarray(this.#used)
  }

  /** A socket read of `n` bytes into the view #nextBuffer gave; false pauses the socket. */
  #onRead (n: number, view: Uint8Array): boolean {
    const slab = this.#slab
    const buffers = this.#options.buffers
    // A buffer is only ever appended to while this connection holds it, so views handed on
    // stay valid after the next read.
    const chunk = slab !== undefined && view.buffer === slab.buffer
      ? buffers.view(slab, view.byteOffset - slab.byteOffset, view.byteOffset - slab.byteOffset + n)
      : Buffer.from(view.buffer, view.byteOffset, n)
    this.#used += n
    try {
      this.#take(chunk)
    } catch (err) {
      this.#fail(err instanceof Error ? err : new Error(String(err)))
      return false
    } finally {
      // What was handed on holds views of its own.
      buffers.give(chunk)
    }
    return !this.#paused
  }

  #take (chunk: Buffer): void {
    if (this.#phase === 'head') {
      this.#takeHead(chunk)
      return
    }
    if (this.#phase === 'body') {
      this.#takeBody(chunk)
      return
    }
    // Bytes nobody asked for: the connection is not clean now.
    this.#reusable = false
    this.destroy()
  }

  #takeHead (chunk: Buffer): void {
    const head = this.#head
    if (head === undefined) return
    head.sawAny = true
    const before = head.bytes.length
    const bytes = before === 0 ? chunk : Buffer.concat([head.bytes, chunk])
    const end = bytes.indexOf('\r\n\r\n', Math.max(0, before - 3), 'latin1')
    if (end < 0 || end + 4 > MAX_HEAD_BYTES) {
      if (bytes.length > MAX_HEAD_BYTES || end >= 0) throw new UpstreamProtocolError(`${this.origin} sent a response head over ${MAX_HEAD_BYTES} bytes`)
      // Kept past this read: a copy, since the chunk's buffer goes back to the pool.
      head.bytes = bytes === chunk ? Buffer.from(chunk) : bytes
      return
    }
    head.bytes = Buffer.alloc(0)
    const parsed = parseResponseHead(bytes.toString('latin1', 0, end), this.#method)
    const buffers = this.#options.buffers
    // The body's first bytes: a counted view when the head came in this one chunk.
    const rest = bytes === chunk ? buffers.view(chunk, end + 4, chunk.length) : bytes.subarray(end + 4)
    try {
      if (parsed.statusCode < 200) {
        // 100 Continue, 103 Early Hints: the answer follows. 101 would switch protocols, which a GET never asks for.
        if (parsed.statusCode === 101) throw new UpstreamProtocolError(`${this.origin} switched protocols on a GET`)
        if (rest.length > 0) this.#takeHead(rest)
        return
      }
      this.#head = undefined
      clearTimeout(this.#timer)
      if (!parsed.reusable) this.#reusable = false
      // Bound to this body: an earlier body of this connection, read or destroyed late, must not
      // resume or abandon the exchange that came after it.
      const stream: ResponseBody = new ResponseBody(() => this.#resume(stream), () => this.#abandon(stream))
      const framing = parsed.framing
      this.#body = { stream, framing, remaining: framing.kind === 'length' ? framing.length : 0, chunked: framing.kind === 'chunked' ? new ChunkedDecoder() : undefined }
      this.#phase = 'body'
      this.#socket.setTimeout(this.#options.bodyTimeout)
      head.resolve({ statusCode: parsed.statusCode, headers: parsed.headers, body: stream })
      if (framing.kind === 'none') this.#complete(rest.length)
      else if (rest.length > 0) this.#takeBody(rest)
    } finally {
      buffers.give(rest)
    }
  }

  #takeBody (chunk: Buffer): void {
    const body = this.#body
    if (body === undefined) return
    const push = (start: number, end: number): void => {
      if (!body.stream.push(this.#options.buffers.view(chunk, start, end)) && !this.#paused) {
        // A reader that is behind (a slow disk, a slow client) is not the upstream going quiet.
        this.#paused = true
        this.#socket.setTimeout(0)
      }
    }
    switch (body.framing.kind) {
      case 'length': {
        const take = Math.min(body.remaining, chunk.length)
        push(0, take)
        body.remaining -= take
        if (body.remaining === 0) this.#complete(chunk.length - take)
        return
      }
      case 'chunked': {
        const decoder = body.chunked ?? new ChunkedDecoder()
        const used = decoder.feed(chunk, push)
        if (decoder.done) this.#complete(chunk.length - used)
        return
      }
      default:
        push(0, chunk.length)
    }
  }

  /** The body has all its bytes; `extra` more arrived after them. */
  #complete (extra: number): void {
    const body = this.#body
    this.#body = undefined
    // Bytes past the end of an answer: whatever the upstream meant, the connection carries no other.
    if (extra > 0) this.#reusable = false
    this.#socket.setTimeout(0)
    this.#phase = 'idle'
    this.#paused = false
    body?.stream.push(null)
    this.#owner.released(this)
  }

  #resume (stream: ResponseBody): void {
    if (this.#body?.stream !== stream || !this.#paused) return
    this.#paused = false
    if (this.#phase !== 'body') return
    this.#socket.setTimeout(this.#options.bodyTimeout)
    this.#socket.resume()
  }

  /** A body was destroyed by its reader: unless it had ended, the connection cannot be reused. */
  #abandon (stream: ResponseBody): void {
    if (this.#body?.stream !== stream) return
    this.#body = undefined
    this.#reusable = false
    this.#phase = 'gone'
    this.#socket.destroy()
    this.#owner.released(this)
  }

  #onEnd (): void {
    const body = this.#body
    if (body !== undefined && body.framing.kind === 'close') {
      this.#reusable = false
      this.#complete(0)
      return
    }
    this.#fail(new UpstreamClosedError(body !== undefined
      ? `${this.origin} closed the connection before the body's end`
      : `${this.origin} closed the connection before answering`))
  }

  #fail (err: Error): void {
    if (this.#phase === 'gone') return
    const phase = this.#phase
    this.#phase = 'gone'
    this.#reusable = false
    clearTimeout(this.#timer)
    this.#socket.destroy()
    const head = this.#head
    const body = this.#body
    this.#head = undefined
    this.#body = undefined
    if (head !== undefined) head.reject(err)
    if (body !== undefined) body.stream.destroy(err)
    if (phase !== 'idle' && (head !== undefined || body !== undefined)) this.#owner.released(this)
    this.#owner.gone(this)
  }
}
