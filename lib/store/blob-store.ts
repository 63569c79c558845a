// Content-addressed blob files: blobs/<algorithm>/<2 hex>/<hex>. A file only
// ever appears under its digest by rename from tmp/, after its bytes were
// verified, so a file in blobs/ is complete and correct or absent.

import { randomBytes } from 'node:crypto'
import { createReadStream, type ReadStream } from 'node:fs'
import { mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { parseDigest } from '../reference.js'

export interface TempFile { readonly path: string, readonly handle: FileHandle }

export class BlobStore {
  readonly root: string
  readonly #blobs: string
  readonly #tmp: string

  constructor (root: string) {
    this.root = root
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
    const handle = await open(path, 'wx+')
    return { path, handle }
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

  /** Opens the blob for reading; rejects with ENOENT when the file is gone. */
  async openRead (digest: string, range?: { start: number, end: number }): Promise<ReadStream> {
    const handle = await open(this.pathOf(digest), 'r')
    return createReadStream('', { fd: handle, autoClose: true, highWaterMark: 1024 * 1024, ...range })
  }

  async delete (digest: string): Promise<void> {
    await rm(this.pathOf(digest), { force: true })
  }
}

export function isNotFound (err: unknown): boolean {
  return typeof err === 'object' && err !== null && 'code' in err && err.code === 'ENOENT'
}
