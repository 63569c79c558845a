// Progress of warm, export and import: one row per image (or per bundle) and
// a total, in bytes and blobs. On a terminal the rows are bars redrawn in
// place, and each finished row is printed once above them; anywhere else
// (a CI log, a pipe) every step is one plain line, so the log reads in order.

import { formatBytes } from '../cli/maintenance.js'

export type BlobOutcome = 'fetched' | 'cached'

/** One image (or bundle) being worked on. */
export interface ProgressRow {
  /** What it will take, once known: blobs (undefined: not known yet) and their bytes. */
  plan: (blobs: number | undefined, bytes: number) => void
  /** Bytes arrived (or written) for a blob under way. */
  advance: (bytes: number) => void
  /** A blob finished; `bytes` is its size, of which `advance` may already have reported some. */
  blobDone: (digest: string, bytes: number, outcome: BlobOutcome, advanced: number) => void
  done: (summary: string) => void
  failed: (reason: string) => void
}

export interface Progress {
  row: (name: string) => ProgressRow
  /** Stops redrawing; the last state stays on screen. */
  close: () => void
}

/** What a terminal needs to be drawn on: a TTY flag and a width. */
export interface ProgressStream {
  write: (text: string) => unknown
  readonly isTTY?: boolean | undefined
  readonly columns?: number | undefined
}

interface RowState {
  readonly name: string
  blobs: number | undefined
  bytes: number | undefined
  doneBlobs: number
  doneBytes: number
  fetched: number
  cached: number
  finished: 'ok' | 'failed' | undefined
  message: string
}

/** Bars on a terminal, plain lines elsewhere. `verb` names the work in plain lines: "warming", "exporting". */
export function createProgress (stream: ProgressStream, verb: string, options: { redrawMs?: number } = {}): Progress {
  return stream.isTTY === true ? new TerminalProgress(stream, options.redrawMs ?? 100) : new LineProgress(stream, verb)
}

/** Nothing at all (tests, --quiet). */
export const silentProgress: Progress = {
  row: () => ({ plan: () => {}, advance: () => {}, blobDone: () => {}, done: () => {}, failed: () => {} }),
  close: () => {}
}

abstract class ProgressBase implements Progress {
  protected readonly rows: RowState[] = []

  row (name: string): ProgressRow {
    const state: RowState = { name, blobs: undefined, bytes: undefined, doneBlobs: 0, doneBytes: 0, fetched: 0, cached: 0, finished: undefined, message: '' }
    this.rows.push(state)
    this.started(state)
    return {
      plan: (blobs, bytes) => {
        state.blobs = blobs
        state.bytes = bytes
        this.planned(state)
      },
      advance: bytes => {
        state.doneBytes += bytes
        this.changed()
      },
      blobDone: (digest, bytes, outcome, advanced) => {
        state.doneBlobs++
        state.doneBytes += bytes - advanced
        if (outcome === 'fetched') state.fetched++
        else state.cached++
        this.blob(state, digest, bytes, outcome)
      },
      done: summary => {
        state.finished = 'ok'
        state.message = summary
        this.finished(state)
      },
      failed: reason => {
        state.finished = 'failed'
        state.message = reason
        this.finished(state)
      }
    }
  }

  abstract close (): void
  protected abstract started (state: RowState): void
  protected abstract planned (state: RowState): void
  protected abstract changed (): void
  protected abstract blob (state: RowState, digest: string, bytes: number, outcome: BlobOutcome): void
  protected abstract finished (state: RowState): void

  protected total (): { blobs: number, doneBlobs: number, bytes: number, doneBytes: number, done: number } {
    let blobs = 0
    let doneBlobs = 0
    let bytes = 0
    let doneBytes = 0
    let done = 0
    for (const r of this.rows) {
      blobs += r.blobs ?? 0
      doneBlobs += r.doneBlobs
      bytes += r.bytes ?? 0
      doneBytes += r.doneBytes
      if (r.finished !== undefined) done++
    }
    return { blobs, doneBlobs, bytes, doneBytes, done }
  }
}

class LineProgress extends ProgressBase {
  readonly #stream: ProgressStream
  readonly #verb: string

  constructor (stream: ProgressStream, verb: string) {
    super()
    this.#stream = stream
    this.#verb = verb
  }

  close (): void {}

  protected started (state: RowState): void {
    this.#line(`${this.#verb} ${state.name}`)
  }

  protected planned (state: RowState): void {
    this.#line(`${state.name}: ${state.blobs ?? '?'} blobs, ${formatBytes(state.bytes ?? 0)}`)
  }

  protected changed (): void {}

  protected blob (state: RowState, digest: string, bytes: number, outcome: BlobOutcome): void {
    this.#line(`${state.name}: ${digest} ${formatBytes(bytes)} ${outcome} (${state.doneBlobs}/${state.blobs ?? '?'})`)
  }

  protected finished (state: RowState): void {
    this.#line(`${state.name}: ${state.finished === 'ok' ? state.message : `FAILED: ${state.message}`}`)
  }

  #line (text: string): void {
    this.#stream.write(`${text}\n`)
  }
}

const BAR_WIDTH = 24

class TerminalProgress extends ProgressBase {
  readonly #stream: ProgressStream
  readonly #timer: NodeJS.Timeout
  /** Rows finished but not yet printed above the live block. */
  readonly #settled: RowState[] = []
  #drawnLines = 0
  #dirty = false
  #closed = false

  constructor (stream: ProgressStream, redrawMs: number) {
    super()
    this.#stream = stream
    this.#timer = setInterval(() => { if (this.#dirty) this.#draw() }, redrawMs)
    this.#timer.unref()
  }

  close (): void {
    if (this.#closed) return
    clearInterval(this.#timer)
    this.#draw()
    this.#closed = true
  }

  protected started (): void { this.#dirty = true }
  protected planned (): void { this.#dirty = true }
  protected changed (): void { this.#dirty = true }
  protected blob (): void { this.#dirty = true }

  protected finished (state: RowState): void {
    this.#settled.push(state)
    this.#draw()
  }

  #draw (): void {
    if (this.#closed) return
    this.#dirty = false
    const width = Math.max(40, (this.#stream.columns ?? 80) - 1)
    let out = this.#drawnLines > 0 ? `\x1b[${this.#drawnLines}A\r\x1b[J` : ''
    for (const state of this.#settled.splice(0)) {
      out += fit(`${state.finished === 'ok' ? '✓' : '✗'} ${state.name}  ${state.finished === 'ok' ? state.message : `FAILED: ${state.message}`}`, width) + '\n'
    }
    const live = this.rows.filter(r => r.finished === undefined)
    // As many running rows as the screen has room for; the total line says how many there are.
    const shown = live.slice(0, 20)
    const lines = shown.map(r => fit(`  ${bar(r.doneBytes, r.bytes)} ${r.name}  ${sizes(r.doneBytes, r.bytes)}  ${r.doneBlobs}/${r.blobs ?? '?'} blobs`, width))
    const t = this.total()
    lines.push(fit(`  ${bar(t.doneBytes, t.bytes)} total  ${sizes(t.doneBytes, t.bytes)}  ${t.doneBlobs}/${t.blobs} blobs  ${t.done}/${this.rows.length} done${live.length > shown.length ? ` (${live.length - shown.length} more running)` : ''}`, width))
    out += lines.join('\n') + '\n'
    this.#drawnLines = lines.length
    this.#stream.write(out)
  }
}

function bar (done: number, total: number | undefined): string {
  if (total === undefined || total === 0) return `[${'·'.repeat(BAR_WIDTH)}]    `
  const fraction = Math.min(1, done / total)
  const filled = Math.round(fraction * BAR_WIDTH)
  return `[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}%`
}

function sizes (done: number, total: number | undefined): string {
  return `${formatBytes(done)}/${total === undefined ? '?' : formatBytes(total)}`
}

function fit (text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, width - 1)}…`
}
