// Just enough tar for OCI image layout bundles, streamed both ways: ustar
// headers for writing; for reading, ustar with pax and GNU long names, each
// header's checksum checked, and a bundle that ends before its end-of-archive
// marker called truncated. Entry bodies are streamed, never held whole.

import { TarError } from '../errors.js'

export const BLOCK = 512

/** A ustar header for a regular file (or a directory, with size 0). */
export function tarHeader (name: string, size: number, type: 'file' | 'directory' = 'file', mtime = 0): Buffer {
  const header = Buffer.alloc(BLOCK)
  let prefix = ''
  let base = name
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 155)
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) throw new TarError(`name too long for a ustar header: ${name}`)
    prefix = name.slice(0, cut)
    base = name.slice(cut + 1)
  }
  header.write(base, 0, 100, 'utf8')
  octal(header, 100, 8, type === 'directory' ? 0o755 : 0o644)
  octal(header, 108, 8, 0)
  octal(header, 116, 8, 0)
  if (size < 8 ** 11) {
    octal(header, 124, 12, size)
  } else {
    // Base-256 for files of 8 GiB and more, as GNU tar and Go's archive/tar read it.
    header[124] = 0x80
    let v = BigInt(size)
    for (let i = 135; i > 124; i--) {
      header[i] = Number(v & 0xffn)
      v >>= 8n
    }
  }
  octal(header, 136, 12, mtime)
  header.fill(0x20, 148, 156)
  header.write(type === 'directory' ? '5' : '0', 156, 1, 'ascii')
  header.write('ustar\0', 257, 6, 'ascii')
  header.write('00', 263, 2, 'ascii')
  header.write(prefix, 345, 155, 'utf8')
  let sum = 0
  for (const byte of header) sum += byte
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii')
  return header
}

function octal (buf: Buffer, offset: number, length: number, value: number): void {
  buf.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'ascii')
}

/** Zero bytes that bring `size` to a whole number of blocks. */
export function padding (size: number): Buffer {
  const rest = size % BLOCK
  return Buffer.alloc(rest === 0 ? 0 : BLOCK - rest)
}

/** Two zero blocks: the end-of-archive marker. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK)

// ---- reading ---------------------------------------------------------------

export interface TarEntry {
  readonly name: string
  readonly type: 'file' | 'directory' | 'other'
  readonly size: number
  /** The bytes, streamed; read it to its end (or call skip) before asking for the next entry. */
  readonly body: AsyncIterable<Buffer>
}

/** Reads exact byte counts from a stream of chunks, keeping at most one chunk over. */
class ChunkReader {
  readonly #source: AsyncIterator<Buffer>
  #pending: Buffer = Buffer.alloc(0)
  #ended = false
  /** Bytes consumed so far. */
  position = 0

  constructor (source: AsyncIterable<Buffer | string>) {
    const it = source[Symbol.asyncIterator]()
    this.#source = {
      next: async () => {
        const r = await it.next()
        return r.done === true ? r : { done: false, value: typeof r.value === 'string' ? Buffer.from(r.value) : r.value }
      },
      return: async () => {
        await it.return?.()
        return { done: true, value: undefined }
      }
    }
  }

  async #fill (): Promise<boolean> {
    if (this.#ended) return false
    const r = await this.#source.next()
    if (r.done === true) {
      this.#ended = true
      return false
    }
    this.#pending = this.#pending.length === 0 ? r.value : Buffer.concat([this.#pending, r.value])
    return true
  }

  /** Exactly n bytes, or fewer when the stream ends first. */
  async read (n: number): Promise<Buffer> {
    while (this.#pending.length < n) {
      if (!await this.#fill()) break
    }
    const out = this.#pending.subarray(0, Math.min(n, this.#pending.length))
    this.#pending = this.#pending.subarray(out.length)
    this.position += out.length
    return out
  }

  /** n bytes as they come; `short` is called (and must throw) if the stream ends first. */
  async * take (n: number, short: (got: number) => never): AsyncGenerator<Buffer> {
    let left = n
    while (left > 0) {
      if (this.#pending.length === 0 && !await this.#fill()) short(n - left)
      const piece = this.#pending.subarray(0, Math.min(left, this.#pending.length))
      this.#pending = this.#pending.subarray(piece.length)
      this.position += piece.length
      left -= piece.length
      yield piece
    }
  }

  async close (): Promise<void> {
    await this.#source.return?.()
  }
}

function field (header: Buffer, offset: number, length: number): string {
  const raw = header.subarray(offset, offset + length)
  const nul = raw.indexOf(0)
  return raw.subarray(0, nul === -1 ? length : nul).toString('utf8')
}

function numeric (header: Buffer, offset: number, length: number, what: string): number {
  const first = header[offset] ?? 0
  if ((first & 0x80) !== 0) {
    let v = BigInt(first & 0x7f)
    for (let i = offset + 1; i < offset + length; i++) v = (v << 8n) | BigInt(header[i] ?? 0)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TarError(`${what} is too large`)
    return Number(v)
  }
  const text = field(header, offset, length).trim()
  if (text === '') return 0
  if (!/^[0-7]+$/.test(text)) throw new TarError(`${what} is not an octal number: "${text}"`)
  return parseInt(text, 8)
}

function checksumOk (header: Buffer): boolean {
  const stored = field(header, 148, 8).trim()
  if (!/^[0-7]+$/.test(stored)) return false
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0)
  return sum === parseInt(stored, 8)
}

/** `path` (and `size`) records of a pax extended header. */
function paxRecords (data: Buffer): Map<string, string> {
  const out = new Map<string, string>()
  let at = 0
  while (at < data.length) {
    const space = data.indexOf(0x20, at)
    if (space === -1) break
    const length = Number(data.subarray(at, space).toString('ascii'))
    if (!Number.isSafeInteger(length) || length <= 0 || at + length > data.length) throw new TarError('malformed pax header')
    const record = data.subarray(space + 1, at + length - 1).toString('utf8')
    const eq = record.indexOf('=')
    if (eq !== -1) out.set(record.slice(0, eq), record.slice(eq + 1))
    at += length
  }
  return out
}

const MAX_META_BYTES = 1024 * 1024

/**
 * The entries of a tar stream, in order. Throws TarError naming the entry (or
 * the last good one) for a bad header, a body cut short, or a stream that ends
 * without the end-of-archive marker.
 */
export async function * readTar (source: AsyncIterable<Buffer | string>): AsyncGenerator<TarEntry> {
  const reader = new ChunkReader(source)
  let last = '(start of the bundle)'
  let longName: string | undefined
  let pax = new Map<string, string>()
  try {
    for (;;) {
      const offset = reader.position
      const header = await reader.read(BLOCK)
      if (header.length === 0) throw new TarError(`bundle is truncated: it ends after ${last} without the end-of-archive marker`)
      if (header.length < BLOCK) throw new TarError(`bundle is truncated: a header after ${last} is cut short at byte ${offset + header.length}`)
      if (header.every(b => b === 0)) {
        // The end-of-archive marker; what follows (a second zero block, padding) is not read.
        return
      }
      if (!checksumOk(header)) throw new TarError(`bundle is corrupt: the header at byte ${offset} (after ${last}) fails its checksum`)
      const typeflag = String.fromCharCode(header[156] ?? 0)
      let size = numeric(header, 124, 12, `size of the entry after ${last}`)
      const magic = field(header, 257, 6)
      const prefix = magic.startsWith('ustar') ? field(header, 345, 155) : ''
      let name = longName ?? pax.get('path') ?? (prefix === '' ? field(header, 0, 100) : `${prefix}/${field(header, 0, 100)}`)
      const paxSize = pax.get('size')
      if (paxSize !== undefined && /^\d+$/.test(paxSize)) size = Number(paxSize)
      longName = undefined
      pax = new Map()
      const short = (got: number): never => {
        throw new TarError(`bundle is truncated: entry ${name} has ${got} of its ${size} bytes`)
      }
      const pad = (BLOCK - (size % BLOCK)) % BLOCK
      if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L') {
        if (size > MAX_META_BYTES) throw new TarError(`bundle is corrupt: an extended header after ${last} claims ${size} bytes`)
        const chunks: Buffer[] = []
        for await (const c of reader.take(size + pad, short)) chunks.push(c)
        const data = Buffer.concat(chunks).subarray(0, size)
        if (typeflag === 'x') pax = paxRecords(data)
        if (typeflag === 'L') longName = field(data, 0, data.length)
        continue
      }
      name = name.replace(/^(\.\/)+/, '')
      const type = typeflag === '0' || typeflag === '\0' || typeflag === '7' ? 'file' : typeflag === '5' ? 'directory' : 'other'
      // Links and the like carry no body of their own.
      const bodySize = type === 'other' && typeflag !== '' && '123456'.includes(typeflag) && typeflag !== '5' ? 0 : size
      let delivered = 0
      const body = (async function * () {
        for await (const piece of reader.take(bodySize, short)) {
          delivered += piece.length
          yield piece
        }
      })()
      yield { name, type, size: bodySize, body }
      // Whatever the consumer left unread of the body, then the padding.
      const rest = bodySize - delivered + ((BLOCK - (bodySize % BLOCK)) % BLOCK)
      for await (const _ of reader.take(rest, (got: number) => {
        if (delivered + got < bodySize) short(delivered + got)
        throw new TarError(`bundle is truncated: it ends inside the padding after ${name}`)
      })) { /* skipped */ }
      last = `entry ${name}`
    }
  } finally {
    await reader.close()
  }
}
