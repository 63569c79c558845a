// Just enough of ustar (POSIX.1-1988) to write image layers: regular files
// and directories, owned by root, mtime 0, so a layer depends only on its
// content.

import type { Readable } from 'node:stream'

export interface TarEntry {
  readonly name: string
  readonly type: 'file' | 'directory'
  readonly mode?: number
  /** For files: the byte count of content. */
  readonly size?: number
  readonly content?: Readable | Buffer
}

const block = 512

function field (header: Buffer, offset: number, length: number, value: string): void {
  const bytes = Buffer.from(value, 'utf8')
  if (bytes.length > length) throw new Error(`tar: "${value}" does not fit in ${length} bytes`)
  bytes.copy(header, offset)
}

function octal (value: number, length: number): string {
  // length - 1 digits and a NUL, as GNU tar and Go's archive/tar write them.
  return value.toString(8).padStart(length - 1, '0') + '\0'
}

export function tarHeader (entry: TarEntry): Buffer {
  const header = Buffer.alloc(block)
  const isDir = entry.type === 'directory'
  const name = isDir && !entry.name.endsWith('/') ? entry.name + '/' : entry.name
  let prefix = ''
  let base = name
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 155)
    if (cut <= 0) throw new Error(`tar: name too long: ${name}`)
    prefix = name.slice(0, cut)
    base = name.slice(cut + 1)
  }
  field(header, 0, 100, base)
  field(header, 100, 8, octal(entry.mode ?? (isDir ? 0o755 : 0o644), 8))
  field(header, 108, 8, octal(0, 8)) // uid
  field(header, 116, 8, octal(0, 8)) // gid
  field(header, 124, 12, octal(isDir ? 0 : entry.size ?? 0, 12))
  field(header, 136, 12, octal(0, 12)) // mtime
  field(header, 148, 8, '        ') // checksum, counted as spaces
  field(header, 156, 1, isDir ? '5' : '0')
  field(header, 257, 6, 'ustar\0')
  field(header, 263, 2, '00')
  field(header, 265, 32, 'root')
  field(header, 297, 32, 'root')
  field(header, 345, 155, prefix)
  let sum = 0
  for (const byte of header) sum += byte
  field(header, 148, 8, sum.toString(8).padStart(6, '0') + '\0 ')
  return header
}

/** The archive as a stream of chunks, for Readable.from(). */
export async function * tarChunks (entries: readonly TarEntry[]): AsyncGenerator<Buffer> {
  for (const entry of entries) {
    yield tarHeader(entry)
    if (entry.type === 'directory') continue
    const size = entry.size ?? 0
    let written = 0
    if (Buffer.isBuffer(entry.content)) {
      yield entry.content
      written = entry.content.length
    } else if (entry.content !== undefined) {
      for await (const chunk of entry.content) {
        const buffer = chunk as Buffer
        written += buffer.length
        yield buffer
      }
    }
    if (written !== size) throw new Error(`tar: ${entry.name} declared ${size} bytes, got ${written}`)
    const padding = (block - (size % block)) % block
    if (padding > 0) yield Buffer.alloc(padding)
  }
  yield Buffer.alloc(block * 2) // end of archive
}
