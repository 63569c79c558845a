// Content-addressed blob files: blobs/<algorithm>/<2 hex>/<hex>. A file only
// ever appears under its digest by rename from tmp/, after its bytes were
// verified, so a file in blobs/ is complete and correct or absent.

import { randomBytes } from 'node:crypto'
import { mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoCode } from '../errors.js'
import { parseDigest } from '../reference.js'
import { BufferPool } from './buffer-pool.js'
import { FileReader } from './file-reader.js'

/** Bytes per read when serving a blob. */
const READ_CHUNK = 1024 * 1024
/** Read buffers kept for reuse between responses (each response has up to three in use). */
const FREE_READ_BUFFERS = 8

export interface TempFile { readonly path: string, readonly handle: FileHandle }

export class BlobStore {
  readonly root: string
  /** Buffers blob reads go into; the HTTP layer gives them back once sent. */
  readonly readBuffers: BufferPool
  readonly #blobs: string
  readonly #tmp: string

  constructor (root: string, readBuffers = new BufferPool(READ_CHUNK, FREE_READ_BUFFERS)) {
    this.root = root
    this.readBuffers = readBuffers
    this.#blobs = join(root, 'blobs')
    this.#tmp = join(root, 'tmp')
  }

  async init (): Promise<void> {
    await mkdir(this.#blobs, { recursive: true })
    await mkdir(this.#tmp, { recursive: true })
  }

  pathOf (digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return join(this.#blobs, algorithm, hex.slice(0, 2), hex)
  }

  get tmpDir (): string { return this.#tmp }

  /** A new, exclusively created temp file open for reading and writing. */
  async createTemp (): Promise<TempFile> {
    const path = join(this.#tmp, `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}.part`)
    try {
      return { path, handle: await open(path, 'wx+') }
    } catch (err) {
      // tmp/ removed under a running mirror (by hand, by a tmp cleaner): make it again.
      if (!isNotFound(err)) throw err
      await mkdir(this.#tmp, { recursive: true })
      return { path, handle: await open(path, 'wx+') }
    }
  }

  /** Moves a verified temp file into place under its digest. */
  async commit (tempPath: string, digest: string): Promise<void> {
    const target = this.pathOf(digest)
    await mkdir(join(target, '..'), { recursive: true })
    await rename(tempPath, target)
  }

  async discard (tempPath: string): Promise<void> {
    await rm(tempPath, { force: true })
  }

  /** The size of the stored file, or undefined when there is none. */
  async size (digest: string): Promise<number | undefined> {
    try {
      const s = await stat(this.pathOf(digest))
      return s.isFile() ? s.size : undefined
    } catch (err) {
      if (isNotFound(err)) return undefined
      throw err
    }
  }

  /**
   * Opens the blob for reading bytes [start, end] (inclusive; the index knows the size, so
   * no stat); rejects with ENOENT when the file is gone. A file shorter than that errors the stream.
   */
  async openRead (digest: string, range: { start: number, end: number }): Promise<FileReader> {
    const handle = await open(this.pathOf(digest), 'r')
    return new FileReader(handle, { start: range.start, end: range.end + 1, buffers: this.readBuffers, what: `blob file ${digest}` })
  }

  async delete (digest: string): Promise<void> {
    await rm(this.pathOf(digest), { force: true })
  }
}

export function isNotFound (err: unknown): boolean {
  return errnoCode(err) === 'ENOENT'
}
