// Where blob bytes live, behind the few operations the cache needs of them:
// put a verified temp file, open a byte range, stat, delete, list. Temp files
// are always local files (downloads are hashed and read back from them while
// they grow); `put` moves one into the store under its digest. The filesystem
// (fs-blob-store.ts) is the first implementation; an object store is added
// beside it, and nothing above lib/cache/ changes.

import type { Readable } from 'node:stream'
import type { FileHandle } from 'node:fs/promises'
import type { BufferPool } from './buffer-pool.js'
import type { ByteOutput } from './file-reader.js'

/**
 * A body that can also write itself to an output without being streamed (FileReader does),
 * holding little memory for a client that reads slowly. Stream it, or call sendTo once.
 */
export interface SendableBody extends Readable {
  readonly sendTo: (out: ByteOutput, signal: AbortSignal) => Promise<void>
}

export function isSendable (body: Readable): body is SendableBody {
  return typeof (body as Partial<SendableBody>).sendTo === 'function'
}

export interface TempFile { readonly path: string, readonly handle: FileHandle }

/** A stored object found by `list`: its digest when its name is one, else undefined (a stray file). */
export interface StoredFile { readonly key: string, readonly digest: string | undefined, readonly size: number }

export interface TempEntry { readonly key: string, readonly size: number, readonly modifiedAt: number }

export interface BlobStore {
  /** Buffers blob reads go into; the HTTP layer gives them back once sent. */
  readonly readBuffers: BufferPool
  /** A local directory for staging files that will be `put` (import). */
  readonly tmpDir: string
  /** Makes what the store needs (directories, buckets); idempotent. */
  init: () => Promise<void>
  /** A new, exclusively created local temp file, open for reading and writing. */
  createTemp: () => Promise<TempFile>
  /** Moves a verified temp file into the store under its digest. */
  put: (tempPath: string, digest: string) => Promise<void>
  /** Removes a temp file (or staging directory). */
  discard: (tempPath: string) => Promise<void>
  /** Bytes [start, end] (inclusive) of a stored blob; undefined when there is none. A short object errors the stream. */
  openRead: (digest: string, range: { start: number, end: number }) => Promise<Readable | undefined>
  /** The stored size, or undefined when there is none. */
  stat: (digest: string) => Promise<number | undefined>
  delete: (digest: string) => Promise<void>
  /** Every stored object, for the consistency check. */
  list: () => AsyncIterable<StoredFile>
  removeEntry: (key: string) => Promise<void>
  /** Temp files and staging directories left in tmpDir. */
  listTemp: () => AsyncIterable<TempEntry>
  /** Bytes that can still be written (Infinity when the store cannot tell). */
  freeBytes: () => Promise<number>
  /** Throws when nothing can be written (readiness). */
  checkWritable: () => Promise<void>
}
