// Blob files on the local filesystem: blobs/<algorithm>/<2 hex>/<hex>. A file
// only ever appears under its digest by rename from the staging directory
// (which must be on the same volume), after its bytes were verified, so a file
// in blobs/ is complete and correct or absent.

import { constants } from 'node:fs'
import { access, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoCode } from '../errors.js'
import { Limiter } from '../limiter.js'
import { DIGEST_ALGORITHMS, parseDigest } from '../oci/reference.js'
import type { BlobStore, StoredObject } from './blob-store.js'
import type { BufferPool } from './buffer-pool.js'
import { FileReader } from './file-reader.js'

/** Reads for responses under way at once (file-reader.ts); libuv's thread pool has four threads. */
const READS_AT_ONCE = 8

export interface FsBlobStoreOptions {
  /** Blob files go under `<root>/blobs`. */
  readonly root: string
  /** Buffers reads go into; the HTTP layer gives them back once sent. */
  readonly readBuffers: BufferPool
}

export class FsBlobStore implements BlobStore {
  readonly description: string
  readonly kind = 'local'
  readonly #blobs: string
  readonly #readBuffers: BufferPool
  readonly #reads = new Limiter(READS_AT_ONCE)

  constructor (options: FsBlobStoreOptions) {
    this.#blobs = join(options.root, 'blobs')
    this.description = `filesystem ${this.#blobs}`
    this.#readBuffers = options.readBuffers
  }

  async init (): Promise<void> {
    await mkdir(this.#blobs, { recursive: true })
  }

  #pathOf (digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return join(this.#blobs, algorithm, hex.slice(0, 2), hex)
  }

  async put (localPath: string, digest: string): Promise<void> {
    const target = this.#pathOf(digest)
    await mkdir(join(target, '..'), { recursive: true })
    await rename(localPath, target)
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
    return new FileReader(handle, { start: range.start, end: range.end + 1, buffers: this.#readBuffers, reads: this.#reads, what: `blob file ${digest}` })
  }

  async delete (digest: string): Promise<void> {
    await rm(this.#pathOf(digest), { force: true })
  }

  async * list (): AsyncIterable<StoredObject> {
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

  async removeObject (key: string): Promise<void> {
    // Only ever a file under blobs/: a key is a path list() gave.
    if (!key.startsWith(`${this.#blobs}/`)) throw new Error(`not a blob file of this store: ${key}`)
    await rm(key, { force: true })
  }

  async checkReady (): Promise<void> {
    await access(this.#blobs, constants.W_OK)
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
