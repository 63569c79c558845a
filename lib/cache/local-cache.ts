// The local cache: the SQLite index, the blob store, the staging directory and
// the hot in-memory LRU, kept in step. It owns them: nothing above lib/cache/
// reaches the index or the store but through its methods, so its invariants
// live in this one file:
//  - a blob's file is in the store, verified, before its row is written;
//  - on removal a row goes before its file: readers that have the file open
//    finish, and the next request is a miss that fetches it again;
//  - a row whose file is gone is a miss (the row is dropped), never a 500;
//    a store that cannot answer (EACCES, EIO, a bucket's 500) is a 503, and
//    never taken for "gone": no row is dropped for it;
//  - the hot LRU holds manifests and tags by one key scheme, and never an
//    entry the index no longer has (nor one it could not write);
//  - a write the index cannot make (disk full, I/O error) that an answer does
//    not depend on (a manifest or tag to cache, a tag confirmation, an
//    access time) never fails the request: it is logged, counted, and the
//    cache reports itself degraded until a write succeeds again. A blob whose
//    row cannot be written is served and left in the store without one (the
//    next sweep indexes it); a blob whose row cannot be deleted still has its
//    file removed, since a full disk must be able to free room.

import { createHash } from 'node:crypto'
import type { Readable } from 'node:stream'
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import type { BlobRow, CacheIndex, CacheTotals, EvictionCandidate, Pin } from '../db/cache-index.js'
import { DigestMismatchError, ShortFileError, StorageUnavailableError } from '../errors.js'
import type { MirrorEvents } from '../events.js'
import type { BlobStore } from '../store/blob-store.js'
import type { BufferPool } from '../store/buffer-pool.js'
import type { Staging } from '../store/staging.js'
import { AccessRecorder } from './access-recorder.js'
import { EvictionLog, KEPT_EVICTIONS, type LoggedEviction } from './eviction-log.js'
import { evictBucket, publishPins, type BucketEvictionResult } from './bucket-eviction.js'
import type { EvictionPolicy } from './eviction.js'
import { FleetShare } from './fleet-share.js'
import { Uploads } from './uploads.js'
import { BlobDownload } from './blob-download.js'
import type { ChunkHasher } from './chunk-hasher.js'
import { cleanStaging, sweep, type StagingReport, type SweepOptions, type SweepReport } from './consistency.js'
import { MAX_REFERRERS_ENTRIES } from '../oci/limits.js'
import { childrenOf } from '../oci/manifest.js'
import { parseDigest } from '../oci/reference.js'
import { bytesOf, pinnedContent, type PinnedContent } from './pins.js'

export interface Manifest { readonly digest: string, readonly mediaType: string, readonly content: Buffer }

export interface TagAnswer { readonly digest: string, readonly confirmedAt: number }

type HotEntry =
  /** `repositories`: those the index is known to list for it (a memo of manifestBelongsTo; gone with the entry). */
  | { readonly kind: 'manifest', readonly manifest: Manifest, readonly repositories: Set<string> }
  | { readonly kind: 'tag', readonly digest: string, readonly confirmedAt: number }

/** Memory the hot LRU may use, whatever its entry count. */
const HOT_CACHE_BYTES = 256 * 1024 * 1024

const hotKey = {
  manifest: (digest: string): string => `m:${digest}`,
  tag: (repository: string, tag: string): string => `t:${repository}:${tag}`
}

/** A blob staged on local disk, verified, to be added with its rows (import). */
export interface VerifiedBlob {
  readonly path: string
  readonly digest: string
  readonly size: number
  readonly mediaType: string | null
  readonly repositories: ReadonlySet<string>
}

export interface CacheSummary {
  readonly bytes: number
  readonly blobs: number
  readonly manifests: number
  readonly tags: number
  readonly pinnedBytes: number
}

export interface LocalCacheOptions {
  readonly index: CacheIndex
  readonly store: BlobStore
  /** Where downloads and imports are written before they are verified and put in the store. */
  readonly staging: Staging
  /** The read-buffer pool the store reads into; hashing gives its buffers back. */
  readonly readBuffers: BufferPool
  /** Manifests and tags kept in memory. */
  readonly hotEntries: number
  readonly log: Logger
  readonly now?: () => number
  readonly events?: Pick<MirrorEvents, 'indexWriteFailed' | 'storeUpload'> | undefined
  /** Milliseconds between tries at putting a blob into a remote store (tests); see uploads.ts. */
  readonly uploadRetryDelays?: readonly number[] | undefined
  /** This node's name among a fleet's: its pins in a shared store go under it. */
  readonly node?: string | undefined
  /** The command that opened the cache (`serve`, `gc`…), as the eviction log names it. */
  readonly process?: string | undefined
}

/** A failed index write, as the cache reports it. */
export interface WriteFailure { readonly operation: string, readonly message: string, readonly at: number }

/** How often a run of failing index writes is logged again. */
const FAILURE_LOG_MS = 60_000

/** SQLite's answers for a database that cannot be written now, as opposed to a query that is wrong. */
const STORAGE_FAILURE = /^SQLITE_(FULL|IOERR|READONLY|BUSY|LOCKED|CANTOPEN|NOMEM|CORRUPT|NOTADB)/

/** How a pass that hashes stored bytes is paced: called after each chunk, it waits as long as it likes and says whether to go on. */
export type HashPace = (bytes: number) => Promise<boolean>

export class LocalCache {
  readonly #index: CacheIndex
  readonly #store: BlobStore
  readonly #staging: Staging
  readonly #readBuffers: BufferPool
  /** Verified blobs on their way to a remote store; undefined for a local one. */
  readonly #uploads: Uploads | undefined
  /** What this node tells the fleet through a shared store, and asks it; undefined when the store is not shared. */
  readonly #fleet: FleetShare | undefined
  /** Last-access times and request counters, written to the index in batches. */
  readonly access: AccessRecorder
  /** The last evictions and scrub removals, written to the index (listens to `evicted` and `corruptRemoved`). */
  readonly evictions: EvictionLog
  readonly #log: Logger
  readonly #hot: LRUCache<string, HotEntry>
  readonly #now: () => number
  readonly #events: Pick<MirrorEvents, 'indexWriteFailed'> | undefined
  readonly #node: string
  #failure: WriteFailure | undefined
  #failuresSinceLogged = 0
  #failureLoggedAt = -Infinity

  constructor (options: LocalCacheOptions) {
    this.#index = options.index
    this.#store = options.store
    this.#staging = options.staging
    this.#readBuffers = options.readBuffers
    this.#fleet = options.store.shared === undefined ? undefined : new FleetShare(options.store.shared, options.log)
    this.#uploads = options.store.kind === 'local'
      ? undefined
      : new Uploads({
        put: async blob => await options.store.put(blob.path, blob.digest, blob.size),
        // Only now, with the object in the store, is the blob indexed.
        stored: blob => {
          this.#write('blob', () => options.index.putBlob(blob.digest, blob.size, blob.repository, blob.mediaType))
          this.#fleet?.linked(blob.repository, blob.digest)
        },
        abandoned: async blob => await options.staging.discard(blob.path),
        log: options.log,
        events: options.events,
        retryDelays: options.uploadRetryDelays
      })
    this.#log = options.log
    this.#now = options.now ?? Date.now
    this.#events = options.events
    this.#node = options.node ?? 'node'
    this.access = new AccessRecorder({
      sink: { recordAccess: batch => { this.#write('access', () => options.index.recordAccess(batch)) } },
      now: this.#now,
      onError: err => options.log.error({ err }, 'could not record last access')
    })
    this.evictions = new EvictionLog({
      write: entries => { this.#write('eviction log', () => options.index.logEvictions(entries, KEPT_EVICTIONS)) },
      by: options.process ?? 'serve',
      now: this.#now
    })
    this.#hot = new LRUCache<string, HotEntry>({
      max: options.hotEntries,
      maxSize: HOT_CACHE_BYTES,
      sizeCalculation: e => e.kind === 'manifest' ? e.manifest.content.length + 200 : 200
    })
  }

  // Blobs

  /** A cached blob: indexed, or verified and on its way to a remote store. */
  blob (digest: string): BlobRow | undefined {
    const row = this.#index.getBlob(digest)
    if (row !== undefined) return row
    const pending = this.#uploads?.get(digest)
    return pending === undefined ? undefined : { digest, size: pending.size, mediaType: pending.mediaType, createdAt: 0, accessedAt: 0 }
  }

  /**
   * Opens bytes [start, end] of a cached blob and records the access; undefined when
   * its file is gone, which drops the row (a miss, never a 500).
   */
  async openBlob (row: BlobRow, range: { start: number, end: number }): Promise<Readable | undefined> {
    const pending = this.#uploads?.get(row.digest)
    // On its way to the store: read from staging (gone there once stored: then from the store).
    const staged = pending === undefined ? undefined : await this.#staging.openRead(pending.path, range)
    if (staged !== undefined) {
      this.access.blob(row.digest)
      return staged
    }
    const body = await this.#storeCall('read', row.digest, async () => await this.#store.openRead(row.digest, range))
    if (body !== undefined) void this.#fleet?.accessed(row.digest, this.#now(), false)
    if (body === undefined) {
      this.#lostFile(row.digest)
      return undefined
    }
    body.once('error', err => {
      if (err instanceof DigestMismatchError) {
        // Only a shared store's reads are checked (its bytes cross a network, and other nodes write
        // to it): the object is not what its name says, so it goes, for every node, and this answer
        // is cut before its last byte. The next request fetches the blob again.
        this.#log.error({ digest: row.digest, size: row.size, err: err.message }, 'a stored blob does not match its digest; removing it')
        this.#write('blob row', () => this.#index.deleteBlob(row.digest))
        this.#store.delete(row.digest).catch((err: unknown) => this.#log.warn({ digest: row.digest, err }, 'could not remove a corrupt blob from the store'))
        return
      }
      if (!(err instanceof ShortFileError)) return
      // This answer is cut; the next request is a miss and fetches the blob again.
      this.#log.error({ digest: row.digest, size: row.size, err: err.message }, 'cached blob file is shorter than its row; dropping the row')
      this.#write('blob row', () => this.#index.deleteBlob(row.digest))
    })
    this.access.blob(row.digest)
    return body
  }

  /**
   * A blob another node put into a shared remote store, indexed here when the store has it: asked
   * before going upstream. False for a local store, and when the store cannot answer now (the
   * blob is then fetched from upstream, which a failing store need not stop).
   */
  async adoptStored (digest: string, repository: string): Promise<boolean> {
    if (this.#uploads === undefined) return false
    let size: number | undefined
    try {
      size = await this.#store.stat(digest)
    } catch (err) {
      this.#log.warn({ digest, store: this.#store.description, err }, 'the blob store could not say whether it has a blob; asking upstream')
      return false
    }
    if (size === undefined) return false
    // Another node recorded that upstream showed this repository has it: no HEAD upstream to confirm.
    const linked = await this.#fleet?.isLinked(repository, digest) === true
    this.#log.debug({ digest, size, repository, linked }, 'blob found in the shared store')
    return this.#write('adopted blob', () => {
      if (this.#index.getBlob(digest) === undefined) this.#index.putBlobRow(digest, size)
      if (linked) this.#index.addBlobRepository(digest, repository)
    })
  }

  /**
   * A manifest another node cached under this repository, from the shared store, stored here as
   * if fetched: asked before going upstream for a manifest by digest. Undefined without a shared
   * store, when it has none for the repository, or when it cannot answer.
   */
  async adoptStoredManifest (digest: string, repository: string): Promise<Manifest | undefined> {
    const found = await this.#fleet?.manifest(repository, digest)
    if (found === undefined) return undefined
    // Stored as fetched, without telling the fleet what it just told us.
    return this.#putManifest(repository, found, undefined, false) ? this.manifest(digest) ?? found : found
  }

  /**
   * Where a client can fetch a stored blob itself (a presigned URL), when the store offers one;
   * undefined for a blob still on its way to the store, or a store that cannot.
   */
  async blobUrl (row: BlobRow): Promise<string | undefined> {
    const presign = this.#store.presignedUrl
    if (presign === undefined || this.#uploads?.get(row.digest) !== undefined) return undefined
    // Marked first: no node's eviction may take it while this client may still fetch it. A mark
    // written now protects it from now only: the object may have gone before, so it is looked at.
    if (await this.#fleet?.accessed(row.digest, this.#now(), true) === true &&
      await this.#storeCall('stat', row.digest, async () => await this.#store.stat(row.digest)) === undefined) {
      this.#lostFile(row.digest)
      return undefined
    }
    const url = await this.#storeCall('presign', row.digest, async () => await presign.call(this.#store, row.digest, row.size))
    this.access.blob(row.digest)
    return url
  }

  /** Whether a cached blob's file is there (HEAD), recording the access; a lost file drops the row (a local store). */
  async hasBlob (row: BlobRow): Promise<boolean> {
    // A remote store is not asked: its row was written only once the object was there, and a
    // bucket round trip per HEAD (clients HEAD every blob) would cost more than it tells.
    if (this.#uploads !== undefined) {
      this.access.blob(row.digest)
      return true
    }
    if (await this.#storeCall('stat', row.digest, async () => await this.#store.stat(row.digest)) === undefined) {
      this.#lostFile(row.digest)
      return false
    }
    this.access.blob(row.digest)
    return true
  }

  #lostFile (digest: string): void {
    // The index outlived the file (deleted by hand, lost in a crash).
    this.#log.warn({ digest }, 'indexed blob has no file; dropping the row')
    this.#write('lost blob row', () => this.#index.deleteBlob(digest))
  }

  /** A store call on a request's path: "not found" is an answer, any other failure a 503 that drops nothing. */
  async #storeCall<T> (operation: string, digest: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      this.#log.error({ digest, operation, store: this.#store.description, err }, 'the blob store failed; answering 503, the row is kept')
      throw new StorageUnavailableError(operation, err, { digest })
    }
  }

  // Staging: where downloads and imports are written before they are verified

  /**
   * A download of a blob into the cache (run it with the upstream body): staged to a temp file,
   * verified, then put in the store with its row. Throws when no temp file can be made (ENOSPC).
   */
  async startDownload (options: { digest: string, size: number | undefined, repository: string, mediaType: string | null, hasher?: ChunkHasher | undefined }): Promise<BlobDownload> {
    const { digest, repository, mediaType } = options
    return new BlobDownload({
      digest,
      size: options.size,
      temp: await this.#staging.createTemp(),
      commit: async (tempPath, size) => { await this.addBlob(tempPath, digest, size, repository, mediaType) },
      discard: async tempPath => await this.#staging.discard(tempPath),
      buffers: this.#readBuffers,
      hasher: options.hasher
    })
  }

  /** A new staging directory (an import's files); removed with discardTemp. */
  async createStagingDirectory (prefix: string): Promise<string> {
    return await this.#staging.createDirectory(prefix)
  }

  async discardTemp (path: string): Promise<void> {
    await this.#staging.discard(path)
  }

  /** Room left for a download: the staging volume's (which the filesystem store shares). */
  async freeBytes (): Promise<number> {
    return await this.#staging.freeBytes()
  }

  /**
   * Adds a blob whose bytes in `tempPath` were verified: the file goes into the store, then its
   * row. False when the row could not be written: the blob is stored unindexed (the next sweep
   * indexes it) and the answer is served all the same.
   */
  async addBlob (tempPath: string, digest: string, size: number, repository: string, mediaType: string | null): Promise<boolean> {
    if (this.#uploads !== undefined) {
      // A remote store: the upload is never on a client's path (uploads.ts); served from staging meanwhile.
      if (!this.#uploads.add({ digest, size, path: tempPath, repository, mediaType })) await this.#staging.discard(tempPath)
      return true
    }
    await this.#store.put(tempPath, digest, size)
    return this.#write('blob', () => this.#index.putBlob(digest, size, repository, mediaType))
  }

  /**
   * Whether a cached blob may be served under a repository: it was fetched from upstream
   * under it (or confirmed there), or a cached manifest of that repository names it.
   */
  blobBelongsTo (digest: string, repository: string): boolean {
    return this.#uploads?.get(digest)?.repository === repository || this.#index.blobBelongsTo(digest, repository)
  }

  /** Upstream confirmed that the repository has the blob. */
  addBlobRepository (digest: string, repository: string): void {
    this.#write('blob repository', () => this.#index.addBlobRepository(digest, repository))
    this.#fleet?.linked(repository, digest)
  }

  /** Whether a cached manifest may be served by digest under a repository: fetched or confirmed there. */
  manifestBelongsTo (digest: string, repository: string): boolean {
    const hot = this.#hot.get(hotKey.manifest(digest))
    if (hot?.kind === 'manifest' && hot.repositories.has(repository)) return true
    const belongs = this.#index.manifestBelongsTo(digest, repository)
    if (belongs && hot?.kind === 'manifest') hot.repositories.add(repository)
    return belongs
  }

  /** Upstream confirmed that the repository has the manifest. */
  addManifestRepository (digest: string, repository: string): void {
    this.#write('manifest repository', () => this.#index.addManifestRepository(digest, repository))
    this.#fleet?.linked(repository, digest)
  }

  /**
   * Removes a blob: its row first, then its file. A row the index cannot delete now (a full
   * disk) does not keep the file: freeing room comes first, and a row without its file is a miss.
   */
  async removeBlob (digest: string): Promise<void> {
    this.#write('blob removal', () => this.#index.deleteBlob(digest))
    // A shared bucket's objects go only by the fleet's rule (bucket-eviction.ts), never by one node's rows.
    if (this.#fleet === undefined) await this.#store.delete(digest)
  }

  /** Whether removing blobs frees room on this node's disk (a local store), for making room. */
  get evictionFreesDisk (): boolean {
    return this.#store.kind === 'local'
  }

  /** The shared bucket's eviction pass (bucket-eviction.ts); undefined without a shared store. */
  async evictShared (policy: EvictionPolicy, options: { dryRun?: boolean | undefined, events?: Pick<MirrorEvents, 'evicted'> | undefined }): Promise<BucketEvictionResult | undefined> {
    const shared = this.#store.shared
    if (shared === undefined) return undefined
    return await evictBucket({
      store: this.#store,
      shared,
      node: this.#node,
      pinned: () => new Set(this.pinnedContent().digests),
      dropRow: digest => { this.#write('blob removal', () => this.#index.deleteBlob(digest)) },
      log: this.#log,
      now: this.#now,
      events: options.events
    }, policy, options)
  }

  // Manifests and tags

  /** A cached manifest, from memory or the index. */
  manifest (digest: string): Manifest | undefined {
    const hot = this.#hot.get(hotKey.manifest(digest))
    if (hot?.kind === 'manifest') return hot.manifest
    const row = this.#index.getManifest(digest)
    if (row === undefined) return undefined
    const manifest: Manifest = { digest: row.digest, mediaType: row.mediaType, content: row.content }
    this.#hot.set(hotKey.manifest(digest), { kind: 'manifest', manifest, repositories: new Set() })
    return manifest
  }

  /** What the cache says a tag points at, and when upstream last confirmed it. */
  tag (repository: string, tag: string): TagAnswer | undefined {
    const key = hotKey.tag(repository, tag)
    const hot = this.#hot.get(key)
    if (hot?.kind === 'tag') return hot
    const row = this.#index.getTag(repository, tag)
    if (row === undefined) return undefined
    this.#hot.set(key, { kind: 'tag', digest: row.digest, confirmedAt: row.confirmedAt })
    return row
  }

  /**
   * Stores a manifest and, when a tag is given, points the tag at it (one transaction).
   * False when the index could not take it: the answer is then served uncached.
   */
  putManifest (repository: string, manifest: Manifest, tag?: string): boolean {
    return this.#putManifest(repository, manifest, tag, true)
  }

  #putManifest (repository: string, manifest: Manifest, tag: string | undefined, share: boolean): boolean {
    // Bytes the cache has already keep the media type they were first stored with, whichever upstream sends them again.
    const stored = this.manifest(manifest.digest) ?? manifest
    if (!this.#write('manifest', () => this.#index.putManifest(repository, stored, tag, blobsOf(stored)))) return false
    if (share) this.#fleet?.manifestStored(repository, stored)
    const hot = this.#hot.get(hotKey.manifest(manifest.digest))
    const repositories = hot?.kind === 'manifest' ? hot.repositories : new Set<string>()
    repositories.add(repository)
    this.#hot.set(hotKey.manifest(manifest.digest), { kind: 'manifest', manifest: stored, repositories })
    if (tag !== undefined) this.#hot.set(hotKey.tag(repository, tag), { kind: 'tag', digest: manifest.digest, confirmedAt: this.#now() })
    return true
  }

  /** Records that upstream still maps the tag to the digest the cache has (if the index can take it). */
  confirmTag (repository: string, tag: string, digest: string): void {
    const now = this.#now()
    if (this.#write('tag confirmation', () => this.#index.confirmTag(repository, tag, now))) {
      this.#hot.set(hotKey.tag(repository, tag), { kind: 'tag', digest, confirmedAt: now })
    }
  }

  deleteTag (repository: string, tag: string): void {
    // Forgotten in memory whatever the index says: upstream no longer has the tag.
    this.#hot.delete(hotKey.tag(repository, tag))
    this.#write('tag deletion', () => this.#index.deleteTag(repository, tag))
  }

  /** As an event sink of a serving mirror: notes in the index which upstreams are down, for `registry-mirror stats`. */
  upstreamState (upstream: string, down: { since: number } | undefined): void {
    this.noteUpstreamDown(upstream, down?.since ?? 0)
  }

  /** Since when (ms) a serving mirror found an upstream down; 0 when it answers. */
  noteUpstreamDown (upstream: string, since: number): void {
    this.#write('upstream state', () => this.#index.setCounter(`upstream.${upstream}.down_since`, since))
  }

  /** The upstreams a serving mirror has marked down, with since when. */
  upstreamsDown (): Array<{ upstream: string, since: number }> {
    const out: Array<{ upstream: string, since: number }> = []
    for (const [name, value] of this.#index.counters()) {
      const m = /^upstream\.(.+)\.down_since$/.exec(name)
      if (m?.[1] !== undefined && value > 0) out.push({ upstream: m[1], since: value })
    }
    return out
  }

  /** Why the cache is degraded (its index failed a write, and none has succeeded since), or undefined. */
  get failure (): WriteFailure | undefined {
    return this.#failure
  }

  /** Tries a small write now: a degraded cache whose index can be written again recovers. */
  probeWrite (): WriteFailure | undefined {
    this.#write('probe', () => this.#index.addCounters(new Map([['index.probe', 0]])))
    return this.#failure
  }

  /** Runs an index write an answer does not depend on; a storage failure is logged and counted, not thrown. */
  #write (operation: string, fn: () => void): boolean {
    try {
      fn()
    } catch (err) {
      const code = typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : ''
      if (!STORAGE_FAILURE.test(code)) throw err
      const now = this.#now()
      this.#failure = { operation, message: `${code}: ${err instanceof Error ? err.message : String(err)}`, at: now }
      this.#events?.indexWriteFailed(operation)
      this.#failuresSinceLogged++
      if (now - this.#failureLoggedAt >= FAILURE_LOG_MS) {
        this.#log.error({ operation, code, failures: this.#failuresSinceLogged }, 'the cache index cannot be written (disk full?); answers are served, uncached where need be')
        this.#failureLoggedAt = now
        this.#failuresSinceLogged = 0
      }
      return false
    }
    if (this.#failure !== undefined) {
      this.#log.warn({ operation, since: new Date(this.#failure.at).toISOString() }, 'the cache index can be written again')
      this.#failure = undefined
      this.#failureLoggedAt = -Infinity
      this.#failuresSinceLogged = 0
    }
    return true
  }

  /** Removes a manifest and every tag that points at it; returns those tags. */
  removeManifest (digest: string): Array<{ repository: string, tag: string }> {
    const tags = this.#index.deleteManifest(digest)
    this.#hot.delete(hotKey.manifest(digest))
    for (const { repository, tag } of tags) this.#hot.delete(hotKey.tag(repository, tag))
    return tags
  }

  // Listings

  /** The tags the cache knows for a repository, sorted. */
  tags (repository: string): string[] {
    return this.#index.listTags(repository)
  }

  repositories (): string[] {
    return this.#index.repositories()
  }

  referrers (repository: string, subject: string, artifactType: string): { content: Buffer, fetchedAt: number } | undefined {
    return this.#index.getReferrers(repository, subject, artifactType)
  }

  /** Stores a referrers answer; the cache keeps at most MAX_REFERRERS_ENTRIES, the oldest going first. */
  putReferrers (repository: string, subject: string, artifactType: string, content: Buffer): void {
    this.#write('referrers', () => this.#index.putReferrers(repository, subject, artifactType, content, MAX_REFERRERS_ENTRIES))
  }

  /**
   * Adds verified blobs with the manifests and tags that name them (import): the files
   * go into the store first, then every row in one transaction, blobs before the
   * manifests that name them and tags last, so that no tag ever names a manifest, nor a
   * manifest a blob, the cache does not have. Returns how many blobs were new.
   */
  async addVerified (
    blobs: Iterable<VerifiedBlob>,
    manifests: Iterable<Manifest & { readonly repositories: ReadonlySet<string> }>,
    tags: Iterable<{ readonly repository: string, readonly tag: string, readonly manifest: Manifest }>
  ): Promise<{ added: number, present: number }> {
    const blobList = [...blobs]
    let added = 0
    let present = 0
    for (const blob of blobList) {
      const row = this.#index.getBlob(blob.digest)
      if (row !== undefined && row.size === blob.size && await this.#store.stat(blob.digest) === blob.size) {
        present++
        continue
      }
      await this.#store.put(blob.path, blob.digest, blob.size)
      added++
    }
    // A crash here leaves the rows all in or all out (files already moved without rows
    // are re-hashed and indexed by the next consistency check).
    const tagList = [...tags]
    const manifestList = [...manifests]
    this.#index.transaction(() => {
      for (const blob of blobList) {
        const [first, ...others] = [...blob.repositories]
        this.#index.putBlob(blob.digest, blob.size, first ?? '', blob.mediaType)
        for (const repository of others) this.#index.addBlobRepository(blob.digest, repository)
      }
      for (const m of manifestList) {
        for (const repository of m.repositories) this.#index.putManifest(repository, m, undefined, blobsOf(m))
      }
      for (const { repository, tag, manifest } of tagList) this.#index.putManifest(repository, manifest, tag, blobsOf(manifest))
    })
    // A fleet sharing the bucket serves what was imported here too (an air-gapped site imports into one node).
    for (const blob of blobList) for (const repository of blob.repositories) this.#fleet?.linked(repository, blob.digest)
    for (const m of manifestList) for (const repository of m.repositories) this.#fleet?.manifestStored(repository, m)
    for (const { repository, manifest } of tagList) this.#fleet?.manifestStored(repository, manifest)
    // Only once the rows are in: a tag the hot LRU still maps to its old digest is forgotten.
    for (const { repository, tag } of tagList) this.#hot.delete(hotKey.tag(repository, tag))
    return { added, present }
  }

  // What the cache holds

  /** Bytes of blobs and manifests, from the index. */
  usedBytes (): number {
    return this.#index.usedBytes()
  }

  summary (): CacheSummary {
    const t = this.#index.totals()
    return { bytes: t.blobBytes + t.manifestBytes, blobs: t.blobs, manifests: t.manifests, tags: t.tags, pinnedBytes: this.bytesOf(this.pinnedContent().digests) }
  }

  totals (): CacheTotals {
    return this.#index.totals()
  }

  /** The repositories holding the most bytes, most first (a scan of the index: the status page's, at most once a minute). */
  largestRepositories (limit: number): Array<{ repository: string, bytes: number, blobs: number }> {
    return this.#index.largestRepositories(limit)
  }

  /** Request counters and marks (`stats`). */
  counters (): Map<string, number> {
    return this.#index.counters()
  }

  // Pins

  addPin (repository: string, reference: string): void {
    this.#index.addPin(repository, reference)
  }

  /** True when there was such a pin. */
  deletePin (repository: string, reference: string): boolean {
    return this.#index.deletePin(repository, reference)
  }

  pins (): Pin[] {
    return this.#index.pins()
  }

  /**
   * Tells a shared store what this node pins now (pin and unpin do, so that no other node's
   * eviction pass takes a pinned blob before this node's next one): false without a shared store.
   */
  async publishPins (): Promise<boolean> {
    const shared = this.#store.shared
    if (shared === undefined) return false
    await publishPins(shared, this.#node, new Set(this.pinnedContent().digests))
    return true
  }

  /** What the pins protect: their manifests and everything those name. */
  pinnedContent (): PinnedContent {
    return pinnedContent(this.#index)
  }

  /** Bytes the cache holds of these blobs and manifests. */
  bytesOf (digests: Iterable<string>): number {
    return bytesOf(this.#index, digests)
  }

  // For eviction and the scrub: reads that leave the hot LRU and the access times alone

  /** A stored manifest's bytes, read from the index without warming the hot LRU. */
  storedManifest (digest: string): Buffer | undefined {
    return this.#index.getManifest(digest)?.content
  }

  /** Blobs and manifests last accessed before `before`, least recently used first. */
  evictionCandidates (before: number, limit: number): EvictionCandidate[] {
    return this.#index.evictionCandidates(before, limit)
  }

  /** Drops referrers answers fetched before `before`. */
  dropReferrersBefore (before: number): void {
    this.#write('referrers expiry', () => this.#index.deleteReferrersBefore(before))
  }

  /** Blob rows after `digest` in digest order, a page at a time. */
  blobsAfter (digest: string, limit: number): Array<{ digest: string, size: number }> {
    return this.#index.blobsAfter(digest, limit)
  }

  manifestDigests (): string[] {
    return this.#index.manifestDigests()
  }

  /**
   * Whether a stored blob's bytes match its digest: undefined when they could not be read whole
   * (gone, cut short, the store failing, or `pace` said stop), never a guess.
   */
  async storedBlobMatches (digest: string, size: number, pace?: HashPace): Promise<boolean | undefined> {
    const { algorithm } = parseDigest(digest)
    const hash = createHash(algorithm)
    if (size > 0) {
      let body: Readable | undefined
      try {
        body = await this.#store.openRead(digest, { start: 0, end: size - 1 })
      } catch {
        return undefined
      }
      if (body === undefined) return undefined
      try {
        for await (const chunk of body) {
          const bytes = chunk as Buffer
          hash.update(bytes)
          this.#readBuffers.give(bytes)
          if (pace !== undefined && !await pace(bytes.length)) {
            body.destroy()
            return undefined
          }
        }
      } catch {
        return undefined
      }
    }
    return `${algorithm}:${hash.digest('hex')}` === digest
  }

  // Consistency

  /** Removes what interrupted downloads and imports left in staging (those younger than `minAgeMs` may still be written). */
  async cleanStaging (options: { minAgeMs: number, dryRun?: boolean | undefined, now?: (() => number) | undefined }): Promise<StagingReport> {
    return await cleanStaging({ staging: this.#staging, log: this.#log, ...options })
  }

  /**
   * The full sweep: every stored object and every row compared (gc, and once in the background
   * after `serve` starts). Linear in the cache; never run when a command merely opens it.
   */
  async sweep (options: SweepOptions = {}): Promise<SweepReport> {
    return await sweep({
      store: this.#store,
      log: this.#log,
      rows: () => this.#allBlobRows(),
      row: digest => this.#index.getBlob(digest),
      manifests: () => this.#index.manifestDigests(),
      manifest: digest => this.#index.getManifest(digest)?.content,
      matches: async (digest, size) => await this.storedBlobMatches(digest, size),
      removeBlob: async digest => await this.removeBlob(digest),
      removeManifest: digest => { this.removeManifest(digest) },
      indexStored: (digest, size) => this.#write('sweep', () => { if (this.#index.getBlob(digest) === undefined) this.#index.putBlobRow(digest, size) })
    }, options)
  }

  /** Every blob row, read a page at a time (a cache may hold hundreds of thousands). */
  * #allBlobRows (): Iterable<{ digest: string, size: number }> {
    let after = ''
    for (;;) {
      const page = this.#index.blobsAfter(after, 1000)
      if (page.length === 0) return
      yield * page
      after = page[page.length - 1]?.digest ?? after
    }
  }

  /** What stops this cache from serving, for readiness; empty when nothing does. */
  async problems (): Promise<string[]> {
    const problems: string[] = []
    try {
      this.#index.ping()
    } catch (err) {
      problems.push(`index: ${err instanceof Error ? err.message : String(err)}`)
    }
    const checks: Array<[string, () => Promise<void>]> = [
      ['staging', async () => await this.#staging.checkWritable()],
      ['storage', async () => await this.#store.checkReady()]
    ]
    for (const [what, check] of checks) {
      try {
        await check()
      } catch (err) {
        problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`)
      }
    }
    // Degraded: the index failed a write and none has succeeded since (a probe tries one now).
    const failure = this.#failure === undefined ? undefined : this.probeWrite()
    if (failure !== undefined) problems.push(`index: cannot be written (${failure.operation}: ${failure.message}); answers are served, uncached where need be`)
    return problems
  }

  /** Resolves once the blobs on their way to a remote store are stored or given up; takes no more. */
  async finishUploads (): Promise<void> {
    await this.#uploads?.close()
    this.#fleet?.close()
    await this.#fleet?.idle()
  }

  /** The last evictions (of every command), newest first. */
  recentEvictions (limit: number): LoggedEviction[] {
    return this.#index.recentEvictions(limit).map(e => ({ ...e, reason: e.reason as LoggedEviction['reason'] }))
  }

  close (): void {
    this.access.close()
    this.evictions.flush()
    this.#index.close()
  }
}

/** The blobs a manifest names (config, layers, artifact blobs): they belong to its repositories. */
function blobsOf (manifest: Manifest): string[] {
  return childrenOf(manifest.content).filter(c => c.kind !== 'manifest').map(c => c.digest)
}
