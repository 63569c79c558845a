// A bucket with a local disk in front (storage.s3.localCache): the bucket is
// the truth the fleet shares; the node keeps copies of the blobs it served
// most recently on its own disk, so that hot blobs cost no bucket round trip.
// Bounded by size, least recently read first out. A copy is taken when this
// node uploads a blob (a hard link to the staged file, before the upload
// removes it) and when it reads one from the bucket: from the very bytes a
// client is sent when it reads from the start, else by a read of its own in
// the background, at most a few at a time, and only if it still fits.
//
// A copy is verified bytes under their digest, like every stored blob: serving
// one whose object another node has since evicted from the bucket serves the
// right bytes. Stat, list and delete go to the bucket; a delete drops the copy
// too.

import { createHash, randomBytes, type Hash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { link, mkdir, open, readdir, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { Transform, type Readable, type TransformCallback } from 'node:stream'
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
    if (body === undefined) return undefined
    // Read from the start: the copy is written from these same bytes as they go to the client.
    // From elsewhere (a resumed pull): copied in the background, by a read of its own.
    if (range.start === 0 && range.end < (this.#copies.maxSize ?? 0) && !this.#filling.has(digest)) return this.#tee(digest, body)
    this.#fill(digest)
    return body
  }

  /** Passes `body` on while a copy is written beside (CopyingReader), kept if it is the whole blob. */
  #tee (digest: string, body: Readable): Readable {
    this.#filling.add(digest)
    const target = this.#pathOf(digest)
    const copying = new CopyingReader(digest, `${target}.${randomBytes(4).toString('hex')}.part`, async (temp, size) => {
      if (this.#copies.has(digest)) return false
      await rename(temp, target)
      this.#copies.set(digest, size)
      return true
    }, this.#log)
    copying.once('close', () => this.#filling.delete(digest))
    pipeline(body, copying).catch(() => {}) // the reader sees its errors
    return copying
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

/**
 * Passes a blob's bytes on unchanged while writing them to `temp`, and hands the file to `keep` at
 * the end if the bytes hash to the digest (a read of part of the blob never does). Written before
 * passed on, so the copy is in place when the reader sees the end. A failed write (a full disk)
 * drops the copy, never the read; a reader that goes away leaves no file.
 */
class CopyingReader extends Transform {
  readonly #digest: string
  readonly #temp: string
  readonly #keep: (temp: string, size: number) => Promise<boolean>
  readonly #log: Logger
  readonly #hash: Hash
  #file: FileHandle | undefined
  #copying = true
  #bytes = 0

  constructor (digest: string, temp: string, keep: (temp: string, size: number) => Promise<boolean>, log: Logger) {
    super()
    this.#digest = digest
    this.#temp = temp
    this.#keep = keep
    this.#log = log
    this.#hash = createHash(parseDigest(digest).algorithm)
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (!this.#copying) {
      callback(null, chunk)
      return
    }
    this.#write(chunk).then(() => callback(null, chunk), async (err: unknown) => {
      this.#log.debug({ digest: this.#digest, err }, 'could not copy a blob from the bucket to local disk')
      this.#copying = false
      await this.#discard()
      callback(null, chunk)
    })
  }

  async #write (chunk: Buffer): Promise<void> {
    if (this.#file === undefined) {
      await mkdir(dirname(this.#temp), { recursive: true })
      this.#file = await open(this.#temp, 'wx')
    }
    await this.#file.write(chunk)
    this.#hash.update(chunk)
    this.#bytes += chunk.length
  }

  override _flush (callback: TransformCallback): void {
    void this.#finish().finally(() => callback())
  }

  async #finish (): Promise<void> {
    if (!this.#copying) return
    this.#copying = false
    const whole = `${parseDigest(this.#digest).algorithm}:${this.#hash.digest('hex')}` === this.#digest
    try {
      await this.#file?.close()
      this.#file = undefined
      if (whole && (this.#bytes > 0 || await this.#empty()) && await this.#keep(this.#temp, this.#bytes)) return
    } catch (err) {
      this.#log.debug({ digest: this.#digest, err }, 'could not keep a copy of a blob from the bucket')
    }
    await this.#discard()
  }

  /** An empty blob still gets its (empty) file. */
  async #empty (): Promise<boolean> {
    await writeFile(this.#temp, '', { flag: 'wx' })
    return true
  }

  async #discard (): Promise<void> {
    await this.#file?.close().catch(() => {})
    this.#file = undefined
    await rm(this.#temp, { force: true })
  }

  override _destroy (err: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.#copying) {
      callback(err)
      return
    }
    this.#copying = false
    void this.#discard().finally(() => callback(err))
  }
}
