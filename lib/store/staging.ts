// The local directory downloads and imports are written to before their
// bytes are verified and handed to the blob store. It is always a local
// directory, whatever the store (a node whose blobs live in a bucket still
// stages on its own disk: downloads are hashed and read back from the file
// while it grows), so it is its own part rather than a duty of every store.
// Its free space is what a download needs room in.

import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { access, mkdir, open, readdir, rm, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoCode } from '../errors.js'
import { Limiter } from '../limiter.js'
import type { BufferPool } from './buffer-pool.js'
import { freeBytes } from './disk-space.js'
import { FileReader } from './file-reader.js'

/** Reads of staged files for responses under way at once (a blob verified and on its way to a bucket). */
const READS_AT_ONCE = 8

export interface TempFile { readonly path: string, readonly handle: FileHandle }

export interface TempEntry { readonly path: string, readonly size: number, readonly modifiedAt: number }

export interface StagingOptions {
  /** The directory; made when missing. */
  readonly dir: string
  /** Free bytes on the volume of a path; statfs unless a test of a full disk says otherwise. */
  readonly freeBytes?: ((path: string) => Promise<number>) | undefined
  /** Buffers reads of staged files go into. */
  readonly readBuffers: BufferPool
}

export class Staging {
  readonly #dir: string
  readonly #freeBytes: (path: string) => Promise<number>
  readonly #readBuffers: BufferPool
  readonly #reads = new Limiter(READS_AT_ONCE)

  constructor (options: StagingOptions) {
    this.#dir = options.dir
    this.#freeBytes = options.freeBytes ?? freeBytes
    this.#readBuffers = options.readBuffers
  }

  async init (): Promise<void> {
    await mkdir(this.#dir, { recursive: true })
  }

  /** A new, exclusively created temp file, open for reading and writing. */
  async createTemp (): Promise<TempFile> {
    const path = this.#newPath('', '.part')
    try {
      return { path, handle: await open(path, 'wx+') }
    } catch (err) {
      // The directory removed under a running mirror (by hand, by a tmp cleaner): make it again.
      if (errnoCode(err) !== 'ENOENT') throw err
      await this.init()
      return { path, handle: await open(path, 'wx+') }
    }
  }

  /** A new, empty directory for the files of one import; `discard` removes it whole. */
  async createDirectory (prefix: string): Promise<string> {
    const path = this.#newPath(`${prefix}-`, '')
    await this.init()
    await mkdir(path)
    return path
  }

  /** Bytes [start, end] (inclusive) of a staged file; undefined when it is gone. */
  async openRead (path: string, range: { start: number, end: number }): Promise<FileReader | undefined> {
    let handle
    try {
      handle = await open(path, 'r')
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined
      throw err
    }
    return new FileReader(handle, { start: range.start, end: range.end + 1, buffers: this.#readBuffers, reads: this.#reads, what: `staged file ${path}` })
  }

  /** Removes a temp file or directory of this staging area (gone already is fine). */
  async discard (path: string): Promise<void> {
    await rm(path, { recursive: true, force: true })
  }

  /** What is left in the directory: temp files and import directories. */
  async * list (): AsyncIterable<TempEntry> {
    let names: string[]
    try {
      names = await readdir(this.#dir)
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return
      throw err
    }
    for (const name of names) {
      const path = join(this.#dir, name)
      const info = await stat(path).catch(() => undefined)
      if (info !== undefined) yield { path, size: info.size, modifiedAt: info.mtimeMs }
    }
  }

  /** Bytes that can still be written to the staging volume (Infinity when it cannot be told). */
  async freeBytes (): Promise<number> {
    return await this.#freeBytes(this.#dir).catch(() => Infinity)
  }

  /** Throws when nothing can be written (readiness). */
  async checkWritable (): Promise<void> {
    await access(this.#dir, constants.W_OK)
  }

  #newPath (prefix: string, suffix: string): string {
    return join(this.#dir, `${prefix}${Date.now().toString(36)}-${randomBytes(6).toString('hex')}${suffix}`)
  }
}
