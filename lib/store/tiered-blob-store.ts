// A bucket with a local disk in front (storage.s3.localCache): the bucket is
// the truth the fleet shares; the node keeps copies of the blobs it served
// most recently on its own disk, so that hot blobs cost no bucket round trip.
// Bounded by size, least recently read first out. A copy is taken when this
// node uploads a blob (a hard link to the staged file, before the upload
// removes it) and when it reads one from the bucket (written beside, in the
// background, at most a few at a time, and only if it still fits).
//
// A copy is verified bytes under their digest, like every stored blob: serving
// one whose object another node has since evicted from the bucket serves the
// right bytes. Stat, list and delete go to the bucket; a delete drops the copy
// too.

import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { link, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Readable } from 'node:stream'
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { errnoCode } from '../errors.js'
import { Limiter } from '../limiter.js'
import { DIGEST_ALGORITHMS, parseDigest } from '../oci/reference.js'
import type { BlobStore, SharedContent, StoredObject } from './blob-store.js'
import type { BufferPool } from './buffer-pool.js'
import { FileReader } from './file-reader.js'

/** Copies being written from the bucket at once. */
const FILLS_AT_ONCE = 2
/** Reads of local copies for responses under way at once. */
const READS_AT_ONCE = 8

export interface TieredBlobStoreOptions {
  /** The bucket. */
  readonly remote: BlobStore & { readonly shared: SharedContent }
  /** The local copies go under `<dir>/<algorithm>/<2 hex>/<hex>`, on the staging volume. */
  readonly dir: string
  /** Bytes of local copies kept at most. */
  readonly maxBytes: number
  readonly readBuffers: BufferPool
  readonly log: Logger
}

export class TieredBlobStore implements BlobStore {
  readonly description: string
  readonly kind = 'remote'
  readonly shared: SharedContent
  readonly presignedUrl?: (digest: string, size: number) => Promise<string>
  readonly #remote: BlobStore
  readonly #dir: string
  readonly #readBuffers: BufferPool
  readonly #log: Logger
  /** The copies, by digest, least recently read first out (its disposal removes the file). */
  readonly #copies: LRUCache<string, number>
  readonly #fills = new Limiter(FILLS_AT_ONCE)
  readonly #filling = new Set<string>()
  readonly #reads = new Limiter(READS_AT_ONCE)

  constructor (options: TieredBlobStoreOptions) {
    this.#remote = options.remote
    this.shared = options.remote.shared
    const presign = options.remote.presignedUrl
    if (presign !== undefined) this.presignedUrl = async (digest, size) => await presign.call(options.remote, digest, size)
    this.#dir = options.dir
    this.#readBuffers = options.readBuffers
    this.#log = options.log
    this.description = `${options.remote.description}, hot blobs copied to ${options.dir}`
    this.#copies = new LRUCache<string, number>({
      maxSize: options.maxBytes,
      sizeCalculation: size => Math.max(1, size),
      dispose: (_size, digest, reason) => {
        if (reason === 'evict' || reason === 'delete') void rm(this.#pathOf(digest), { force: true })
      }
    })
  }

  #pathOf (digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return join(this.#dir, algorithm, hex.slice(0, 2), hex)
  }

  async init (): Promise<void> {
    await mkdir(this.#dir, { recursive: true })
    await this.#remote.init()
    // The copies a previous run left are counted in the background: opening never waits for a listing.
    void this.#adoptCopies().catch((err: unknown) => this.#log.warn({ err }, 'could not list the local copies of blobs'))
  }

  async #adoptCopies (): Promise<void> {
    for (const algorithm of await readdir(this.#dir).catch(() => [])) {
      const length = DIGEST_ALGORITHMS.get(algorithm)
      if (length === undefined) continue
      for (const prefix of await readdir(join(this.#dir, algorithm)).catch(() => [])) {
        for (const hex of await readdir(join(this.#dir, algorithm, prefix)).catch(() => [])) {
          if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) continue
          const digest = `${algorithm}:${hex}`
          if (this.#copies.has(digest)) continue
          const info = await stat(join(this.#dir, algorithm, prefix, hex)).catch(() => undefined)
          if (info?.isFile() === true) this.#copies.set(digest, info.size)
        }
      }
    }
  }

  async put (localPath: string, digest: string, size: number): Promise<void> {
    // The copy first, by a link to the verified file: the upload removes the staged name.
    if (size <= (this.#copies.maxSize ?? 0)) {
      const target = this.#pathOf(digest)
      try {
        await mkdir(dirname(target), { recursive: true })
        await link(localPath, target)
        this.#copies.set(digest, size)
      } catch (err) {
        if (errnoCode(err) !== 'EEXIST') this.#log.warn({ digest, err }, 'could not keep a local copy of a blob')
      }
    }
    await this.#remote.put(localPath, digest, size)
  }

  async openRead (digest: string, range: { start: number, end: number }): Promise<Readable | undefined> {
    if (this.#copies.get(digest) !== undefined) { // get: the copy was read, it is hot
      try {
        const handle = await open(this.#pathOf(digest), 'r')
        return new FileReader(handle, { start: range.start, end: range.end + 1, buffers: this.#readBuffers, reads: this.#reads, what: `local copy of ${digest}` })
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw err
        this.#copies.delete(digest) // removed by hand: the bucket has it
      }
    }
    const body = await this.#remote.openRead(digest, range)
    if (body !== undefined) this.#fill(digest)
    return body
  }

  /** Copies a blob read from the bucket to local disk, in the background, once. */
  #fill (digest: string): void {
    if (this.#filling.has(digest) || this.#fills.waiting > 100) return
    this.#filling.add(digest)
    void this.#fills.run(async () => {
      const size = await this.#remote.stat(digest)
      if (size === undefined || size > (this.#copies.maxSize ?? 0) || this.#copies.has(digest)) return
      const target = this.#pathOf(digest)
      const temp = `${target}.${randomBytes(4).toString('hex')}.part`
      await mkdir(dirname(target), { recursive: true })
      try {
        const body = size === 0 ? undefined : await this.#remote.openRead(digest, { start: 0, end: size - 1 })
        if (size > 0 && body === undefined) return
        const out = createWriteStream(temp, { flags: 'wx' })
        if (body === undefined) out.end()
        else await pipeline(body, out) // the store's LengthCheck errors a short body
        await rename(temp, target)
        this.#copies.set(digest, size)
      } catch (err) {
        await rm(temp, { force: true })
        this.#log.debug({ digest, err }, 'could not copy a blob from the bucket to local disk')
      }
    }).catch(() => {}).finally(() => this.#filling.delete(digest))
  }

  async stat (digest: string): Promise<number | undefined> {
    return await this.#remote.stat(digest)
  }

  async delete (digest: string): Promise<void> {
    this.#copies.delete(digest)
    await rm(this.#pathOf(digest), { force: true })
    await this.#remote.delete(digest)
  }

  list (): AsyncIterable<StoredObject> {
    return this.#remote.list()
  }

  async removeObject (key: string): Promise<void> {
    await this.#remote.removeObject(key)
  }

  async checkReady (): Promise<void> {
    await this.#remote.checkReady()
  }

  /** Bytes of local copies kept now. */
  get localBytes (): number { return this.#copies.calculatedSize }

  close (): void {
    this.#remote.close?.()
  }
}
