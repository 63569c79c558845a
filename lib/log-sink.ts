// Where log lines go: a file descriptor (stdout), written off the event loop,
// one batch at a time. Logging never stops the mirror: a destination that
// blocks (a stalled stdout pipe) or fails (a full disk under a log file)
// costs only the lines that cannot be written — queued up to a bound, then
// dropped and counted — and once writes succeed again, one line says how many
// were lost.

import { write as fsWrite } from 'node:fs'
import type { DestinationStream } from 'pino'
import { errnoCode } from './errors.js'

export interface LogSinkOptions {
  /** Bytes of lines waiting for the destination before new ones are dropped. */
  readonly maxQueuedBytes?: number
  /** After a failed write, how long to wait before trying again. */
  readonly retryMs?: number
  readonly now?: () => number
}

/** The most one write takes from the queue. */
const BATCH_BYTES = 256 * 1024

export class LogSink implements DestinationStream {
  readonly #fd: number
  readonly #maxQueued: number
  readonly #retryMs: number
  readonly #now: () => number
  #queue: Buffer[] = []
  #queued = 0
  #writing = false
  #retry: NodeJS.Timeout | undefined
  #dropped = 0
  #unreported = 0
  #failure: string | undefined
  #scheduled = false

  constructor (fd: number, options: LogSinkOptions = {}) {
    this.#fd = fd
    this.#maxQueued = options.maxQueuedBytes ?? 4 * 1024 * 1024
    this.#retryMs = options.retryMs ?? 1000
    this.#now = options.now ?? Date.now
  }

  /** Lines dropped since the start. */
  get dropped (): number { return this.#dropped }

  write (line: string): void {
    const bytes = Buffer.from(line)
    if (this.#queued + bytes.length > this.#maxQueued) {
      this.#drop(1)
      return
    }
    this.#queue.push(bytes)
    this.#queued += bytes.length
    // The lines of one turn of the event loop go out in one write.
    if (this.#scheduled) return
    this.#scheduled = true
    setImmediate(() => {
      this.#scheduled = false
      this.#pump()
    })
  }

  #drop (lines: number): void {
    this.#dropped += lines
    this.#unreported += lines
  }

  #pump (): void {
    if (this.#writing || this.#retry !== undefined || this.#queue.length === 0) return
    if (this.#unreported > 0 && this.#failure === undefined) this.#report()
    const batch: Buffer[] = []
    let size = 0
    while (this.#queue.length > 0 && (size === 0 || size + (this.#queue[0]?.length ?? 0) <= BATCH_BYTES)) {
      const next = this.#queue.shift() ?? Buffer.alloc(0)
      batch.push(next)
      size += next.length
    }
    this.#writing = true
    this.#send(Buffer.concat(batch, size), batch.length)
  }

  /** Writes all of `chunk` (short writes go on with the rest); on failure its lines are dropped. */
  #send (chunk: Buffer, lines: number): void {
    fsWrite(this.#fd, chunk, 0, chunk.length, null, (err, written) => {
      if (err !== null) {
        this.#queued -= chunk.length
        if (errnoCode(err) === 'EAGAIN') {
          // A non-blocking destination that is full: keep the lines, try again shortly.
          this.#queue.unshift(chunk)
          this.#queued += chunk.length
        } else {
          this.#drop(lines)
          this.#failure = `${errnoCode(err) ?? 'error'}: ${err.message}`
        }
        this.#writing = false
        this.#retry = setTimeout(() => {
          this.#retry = undefined
          this.#pump()
        }, this.#retryMs)
        this.#retry.unref()
        return
      }
      if (written < chunk.length) {
        this.#queued -= written
        this.#send(chunk.subarray(written), lines)
        return
      }
      this.#queued -= chunk.length
      this.#writing = false
      this.#failure = undefined
      this.#pump()
    })
  }

  /** The line that says what was lost, ahead of the queue, once the destination takes writes again. */
  #report (): void {
    const line = Buffer.from(`${JSON.stringify({ level: 40, time: this.#now(), name: 'registry-mirror', dropped: this.#unreported, msg: 'the log destination failed or stalled: log lines were dropped' })}\n`)
    this.#unreported = 0
    this.#queue.unshift(line)
    this.#queued += line.length
  }
}
