// The parts of an HTTP/1.1 response the blob client reads itself: the head
// (status line and header fields, strictly: no bare LF, no obs-fold, no
// control bytes, one Content-Length), how its body is framed, and the chunked
// transfer coding. Everything here is bounded, since every byte comes from an
// upstream (or a CDN it redirects to) that the mirror does not control.

import { UpstreamProtocolError } from '../errors.js'

/** The most bytes a response head may take, CRLFCRLF included (undici's and Node's default). */
export const MAX_HEAD_BYTES = 16 * 1024
/** The most bytes a chunk-size line (with its extensions) may take. */
const MAX_CHUNK_LINE = 1024
/** The most bytes of trailer fields after the last chunk. */
const MAX_TRAILER_BYTES = 16 * 1024

export type BodyFraming =
  | { readonly kind: 'none' }
  | { readonly kind: 'length', readonly length: number }
  | { readonly kind: 'chunked' }
  /** Until the upstream closes the connection (neither Content-Length nor chunked). */
  | { readonly kind: 'close' }

export interface ResponseHead {
  readonly statusCode: number
  /** Lower-cased names; a repeated field is an array of its values in order. */
  readonly headers: Record<string, string | string[]>
  readonly framing: BodyFraming
  /** The connection may carry another request once this body has been read. */
  readonly reusable: boolean
}

const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: [^\x00-\x08\x0a-\x1f\x7f]*)?$/
/** A field name (RFC 9110 token), whole. */
export const FIELD_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const FIELD = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[\t ]*(.*?)[\t ]*$/
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/

/**
 * Parses a response head: `text` is its bytes as latin1, up to (not including)
 * the empty line that ends it. `method` decides whether a body follows.
 */
export function parseResponseHead (text: string, method: string): ResponseHead {
  const lines = text.split('\r\n')
  const statusLine = lines[0] ?? ''
  const status = STATUS_LINE.exec(statusLine)
  if (status === null) throw new UpstreamProtocolError(`not an HTTP/1.x status line: ${JSON.stringify(statusLine.slice(0, 64))}`)
  const http10 = status[1] === '0'
  const statusCode = Number(status[2])
  const headers: Record<string, string | string[]> = {}
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] ?? ''
    const field = FIELD.exec(line)
    if (field === null || line.includes('\r')) {
      throw new UpstreamProtocolError(line.startsWith(' ') || line.startsWith('\t')
        ? 'a folded header line (obs-fold)'
        : `a malformed header line: ${JSON.stringify(line.slice(0, 64))}`)
    }
    const name = (field[1] ?? '').toLowerCase()
    const value = field[2] ?? ''
    if (BAD_VALUE.test(value)) throw new UpstreamProtocolError(`a control character in header ${name}`)
    const before = headers[name]
    if (before === undefined) headers[name] = value
    else if (Array.isArray(before)) before.push(value)
    else headers[name] = [before, value]
  }
  const connection = listValues(headers.connection)
  const closes = connection.includes('close') || (http10 && !connection.includes('keep-alive'))
  const framing = bodyFraming(headers, statusCode, method)
  return { statusCode, headers, framing, reusable: !closes && framing.kind !== 'close' }
}

function bodyFraming (headers: Record<string, string | string[]>, statusCode: number, method: string): BodyFraming {
  const codings = listValues(headers['transfer-encoding'])
  const lengths = listValues(headers['content-length'])
  if (codings.length > 0 && lengths.length > 0) {
    // Each alone is fine; both is how requests are smuggled past proxies that pick different ones.
    throw new UpstreamProtocolError('both Transfer-Encoding and Content-Length')
  }
  if (method === 'HEAD' || statusCode === 204 || statusCode === 304 || statusCode < 200) return { kind: 'none' }
  if (codings.length > 0) {
    if (codings.length !== 1 || codings[0] !== 'chunked') throw new UpstreamProtocolError(`a transfer coding the mirror does not read: ${codings.join(', ')}`)
    return { kind: 'chunked' }
  }
  if (lengths.length > 0) {
    const first = lengths[0] ?? ''
    if (!/^\d{1,15}$/.test(first) || lengths.some(l => l !== first)) throw new UpstreamProtocolError(`an invalid Content-Length: ${lengths.join(', ').slice(0, 64)}`)
    const length = Number(first)
    return length === 0 ? { kind: 'none' } : { kind: 'length', length }
  }
  return { kind: 'close' }
}

/** The comma-separated values of a field (all its lines), trimmed and lower-cased. */
function listValues (value: string | string[] | undefined): string[] {
  if (value === undefined) return []
  const all = Array.isArray(value) ? value.join(',') : value
  return all.split(',').map(v => v.trim().toLowerCase()).filter(v => v !== '')
}

const CR = 13
const LF = 10

/**
 * The chunked transfer coding, undone as bytes arrive: data is handed on as
 * places in the input, never copied. Chunk extensions and trailer fields are
 * read past and dropped.
 */
export class ChunkedDecoder {
  #state: 'size' | 'data' | 'data-cr' | 'data-lf' | 'trailer' | 'done' = 'size'
  /** The line being read (a chunk size, or a trailer field), as latin1. */
  #line = ''
  #sawCr = false
  #remaining = 0
  #trailerBytes = 0

  get done (): boolean { return this.#state === 'done' }

  /**
   * Takes the next bytes; `data` gets where each run of body bytes is in `input`.
   * Returns how many bytes of `input` were the body's: when done, the rest belongs to no one.
   */
  feed (input: Buffer, data: (start: number, end: number) => void): number {
    let i = 0
    while (i < input.length && this.#state !== 'done') {
      switch (this.#state) {
        case 'data': {
          const take = Math.min(this.#remaining, input.length - i)
          data(i, i + take)
          i += take
          this.#remaining -= take
          if (this.#remaining === 0) this.#state = 'data-cr'
          break
        }
        case 'data-cr':
          if (input[i++] !== CR) throw new UpstreamProtocolError('a chunk not followed by CRLF')
          this.#state = 'data-lf'
          break
        case 'data-lf':
          if (input[i++] !== LF) throw new UpstreamProtocolError('a chunk not followed by CRLF')
          this.#state = 'size'
          break
        default: {
          // A line: a chunk size, or a trailer field.
          const byte = input[i++] ?? 0
          if (this.#sawCr) {
            if (byte !== LF) throw new UpstreamProtocolError('a bare CR in chunked framing')
            this.#sawCr = false
            this.#endLine()
          } else if (byte === CR) {
            this.#sawCr = true
          } else if (byte === LF) {
            throw new UpstreamProtocolError('a bare LF in chunked framing')
          } else {
            this.#line += String.fromCharCode(byte)
            const bound = this.#state === 'size' ? MAX_CHUNK_LINE : MAX_TRAILER_BYTES - this.#trailerBytes
            if (this.#line.length > bound) throw new UpstreamProtocolError(this.#state === 'size' ? 'a chunk-size line too long' : 'trailer fields too long')
          }
        }
      }
    }
    return i
  }

  #endLine (): void {
    const line = this.#line
    this.#line = ''
    if (this.#state === 'trailer') {
      if (line === '') this.#state = 'done'
      else this.#trailerBytes += line.length + 2
      return
    }
    const size = /^([0-9a-fA-F]{1,12})(?:[\t ]*;[^\x00-\x08\x0a-\x1f\x7f]*)?$/.exec(line)
    if (size === null) throw new UpstreamProtocolError(`an invalid chunk size: ${JSON.stringify(line.slice(0, 32))}`)
    const n = Number.parseInt(size[1] ?? '', 16)
    if (n === 0) {
      this.#state = 'trailer'
    } else {
      this.#remaining = n
      this.#state = 'data'
    }
  }
}
