// Blob files on the local filesystem: blobs/<algorithm>/<2 hex>/<hex>. A file
// only ever appears under its digest by rename from tmp/, after its bytes were
// verified, so a file in blobs/ is complete and correct or absent.

import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { access, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoCode } from '../errors.js'
import { Limiter } from '../limiter.js'
import { DIGEST_ALGORITHMS, parseDigest } from '../oci/reference.js'
import type { BlobStore, StoredFile, TempFile } from './blob-store.js'
import { BufferPool } from './buffer-pool.js'
import { freeBytes } from './disk-space.js'
import { FileReader } from './file-reader.js'

/**
 * Bytes per read buffer. A client that stops reading holds one (file-reader.ts sendTo), so this
 * is the most of the mirror's memory a slow reader of a cached blob can hold; one that keeps up
 * gets READ_RUN of them per read.
 */
const READ_CHUNK = 256 * 1024
/** Read buffers kept for reuse between responses. */
const FREE_READ_BUFFERS = 32
/** Reads for responses under way at once (file-reader.ts); libuv's thread pool has four threads. */
const READS_AT_ONCE = 8

export interface FsBlobStoreOptions {
  readonly root: string
  readonly readBuffers?: BufferPool
  /** Free bytes on the volume of a path; statfs unless a test of a full disk says otherwise. */
  readonly freeBytes?: ((path: string) => Promise<number>) | undefined
}

export class FsBlobStore implements BlobStore {
  readonly root: string
  readonly readBuffers: BufferPool
  readonly tmpDir: string
  readonly #blobs: string
  readonly #freeBytes: (path: string) => Promise<number>
  readonly #reads = new Limiter(READS_AT_ONCE)

  constructor (options: FsBlobStoreOptions) {
    this.root = options.root
    this.readBuffers = options.readBuffers ?? new BufferPool(READ_CHUNK, FREE_READ_BUFFERS)
    this.#blobs = join(options.root, 'blobs')
    this.tmpDir = join(options.root, 'tmp')
    this.#freeBytes = options.freeBytes ?? freeBytes
  }

  async init (): Promise<void> {
    await mkdir(this.#blobs, { recursive: true })
    await mkdir(this.tmpDir, { recursive: true })
  }

  #pathOf (digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return join(this.#blobs, algorithm, hex.slice(0, 2), hex)
  }

  async createTemp (): Promise<TempFile> {
    const path = join(this.tmpDir, `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}.part`)
    try {
      return { path, handle: await open(path, 'wx+') }
    } catch (err) {
      // tmp/ removed under a running mirror (by hand, by a tmp cleaner): make it again.
      if (errnoCode(err) !== 'ENOENT') throw err
      await mkdir(this.tmpDir, { recursive: true })
      return { path, handle: await open(path, 'wx+') }
    }
  }

  async put (tempPath: string, digest: string): Promise<void> {
    const target = this.#pathOf(digest)
    await mkdir(join(target, '..'), { recursive: true })
    await rename(tempPath, target)
  }

  async discard (tempPath: string): Promise<void> {
    await rm(tempPath, { recursive: true, force: true })
  }

  async stat (digest: string): Promise<number | undefined> {
    try {
      const s = await stat(this.#pathOf(digest))
      return s.isFile() ? s.size : undefined
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined
      throw err
    }
  }

  async openRead (digest: string, range: { start: number, end: number }): Promise<FileReader | undefined> {
    let handle
    try {
      handle = await open(this.#pathOf(digest), 'r')
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined
      throw err
    }
    return new FileReader(handle, { start: range.start, end: range.end + 1, buffers: this.readBuffers, reads: this.#reads, what: `blob file ${digest}` })
  }

  async delete (digest: string): Promise<void> {
    await rm(this.#pathOf(digest), { force: true })
  }

  async * list (): AsyncIterable<StoredFile> {
    for (const algorithm of await listDir(this.#blobs)) {
      const length = DIGEST_ALGORITHMS.get(algorithm)
      for (const prefix of await listDir(join(this.#blobs, algorithm))) {
        for (const name of await listDir(join(this.#blobs, algorithm, prefix))) {
          const path = join(this.#blobs, algorithm, prefix, name)
          const info = await stat(path).catch(() => undefined)
          if (info === undefined || !info.isFile()) continue
          const wellNamed = length !== undefined && name.length === length && /^[a-f0-9]+$/.test(name) && name.startsWith(prefix) && prefix.length === 2
          yield { key: path, digest: wellNamed ? `${algorithm}:${name}` : undefined, size: info.size }
        }
      }
    }
  }

  async removeEntry (key: string): Promise<void> {
    await rm(key, { force: true })
  }

  async * listTemp (): AsyncIterable<{ readonly key: string, readonly size: number, readonly modifiedAt: number }> {
    for (const name of await listDir(this.tmpDir)) {
      const path = join(this.tmpDir, name)
      const info = await stat(path).catch(() => undefined)
      if (info !== undefined) yield { key: path, size: info.size, modifiedAt: info.mtimeMs }
    }
  }

  async freeBytes (): Promise<number> {
    return await this.#freeBytes(this.root).catch(() => Infinity)
  }

  async checkWritable (): Promise<void> {
    await access(this.tmpDir, constants.W_OK)
  }
}

async function listDir (path: string): Promise<string[]> {
  try {
    return await readdir(path)
  } catch (err) {
    const code = errnoCode(err)
    if (code === 'ENOENT' || code === 'ENOTDIR') return []
    throw err
  }
}
