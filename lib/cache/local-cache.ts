// The local cache: the SQLite index, the blob store and the hot in-memory LRU,
// kept in step. Every change to what the cache holds goes through here, so its
// invariants live in this one file:
//  - a blob's file is in the store, verified, before its row is written;
//  - on removal a row goes before its file: readers that have the file open
//    finish, and the next request is a miss that fetches it again;
//  - a row whose file is gone is a miss (the row is dropped), never a 500;
//  - the hot LRU holds manifests and tags by one key scheme, and never an
//    entry the index no longer has (nor one it could not write);
//  - a write the index cannot make (disk full, I/O error) that an answer does
//    not depend on (a manifest or tag to cache, a tag confirmation, an
//    access time) never fails the request: it is logged, counted, and the
//    cache reports itself degraded until a write succeeds again.
// `index` stays readable for queries that change nothing (totals, eviction
// candidates, pins, listings).

import type { Readable } from 'node:stream'
import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import type { BlobRow, CacheIndex } from '../db/cache-index.js'
import { ShortFileError } from '../errors.js'
import type { MirrorEvents } from '../events.js'
import type { BlobStore, TempFile } from '../store/blob-store.js'
import { AccessRecorder } from './access-recorder.js'
import { MAX_REFERRERS_ENTRIES } from '../oci/limits.js'
import { childrenOf } from '../oci/manifest.js'
import { bytesOf, pinnedContent } from './pins.js'

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
  /** Manifests and tags kept in memory. */
  readonly hotEntries: number
  readonly log: Logger
  readonly now?: () => number
  readonly events?: Pick<MirrorEvents, 'indexWriteFailed'> | undefined
}

/** A failed index write, as the cache reports it. */
export interface WriteFailure { readonly operation: string, readonly message: string, readonly at: number }

/** How often a run of failing index writes is logged again. */
const FAILURE_LOG_MS = 60_000

/** SQLite's answers for a database that cannot be written now, as opposed to a query that is wrong. */
const STORAGE_FAILURE = /^SQLITE_(FULL|IOERR|READONLY|BUSY|LOCKED|CANTOPEN|NOMEM|CORRUPT|NOTADB)/

export class LocalCache {
  readonly index: CacheIndex
  readonly store: BlobStore
  /** Last-access times and request counters, written to the index in batches. */
  readonly access: AccessRecorder
  readonly #log: Logger
  readonly #hot: LRUCache<string, HotEntry>
  readonly #now: () => number
  readonly #events: Pick<MirrorEvents, 'indexWriteFailed'> | undefined
  #failure: WriteFailure | undefined
  #failuresSinceLogged = 0
  #failureLoggedAt = -Infinity

  constructor (options: LocalCacheOptions) {
    this.index = options.index
    this.store = options.store
    this.#log = options.log
    this.#now = options.now ?? Date.now
    this.#events = options.events
    this.access = new AccessRecorder({
      sink: { recordAccess: batch => { this.#write('access', () => options.index.recordAccess(batch)) } },
      now: this.#now,
      onError: err => options.log.error({ err }, 'could not record last access')
    })
    this.#hot = new LRUCache<string, HotEntry>({
      max: options.hotEntries,
      maxSize: HOT_CACHE_BYTES,
      sizeCalculation: e => e.kind === 'manifest' ? e.manifest.content.length + 200 : 200
    })
  }

  // Blobs

  blob (digest: string): BlobRow | undefined {
    return this.index.getBlob(digest)
  }

  /**
   * Opens bytes [start, end] of a cached blob and records the access; undefined when
   * its file is gone, which drops the row (a miss, never a 500).
   */
  async openBlob (row: BlobRow, range: { start: number, end: number }): Promise<Readable | undefined> {
    const body = await this.store.openRead(row.digest, range)
    if (body === undefined) {
      this.#lostFile(row.digest)
      return undefined
    }
    body.once('error', err => {
      if (!(err instanceof ShortFileError)) return
      // This answer is cut; the next request is a miss and fetches the blob again.
      this.#log.error({ digest: row.digest, size: row.size, err: err.message }, 'cached blob file is shorter than its row; dropping the row')
      this.#write('blob row', () => this.index.deleteBlob(row.digest))
    })
    this.access.blob(row.digest)
    return body
  }

  /** Whether a cached blob's file is there (HEAD), recording the access; a lost file drops the row. */
  async hasBlob (row: BlobRow): Promise<boolean> {
    if (await this.store.stat(row.digest) === undefined) {
      this.#lostFile(row.digest)
      return false
    }
    this.access.blob(row.digest)
    return true
  }

  #lostFile (digest: string): void {
    // The index outlived the file (deleted by hand, lost in a crash).
    this.#log.warn({ digest }, 'indexed blob has no file; dropping the row')
    this.index.deleteBlob(digest)
  }

  async createTemp (): Promise<TempFile> {
    return await this.store.createTemp()
  }

  async discardTemp (path: string): Promise<void> {
    await this.store.discard(path)
  }

  /** Adds a blob whose bytes in `tempPath` were verified: the file goes into the store, then its row. */
  async addBlob (tempPath: string, digest: string, size: number, repository: string, mediaType: string | null): Promise<void> {
    await this.store.put(tempPath, digest)
    this.index.putBlob(digest, size, repository, mediaType)
  }

  /** Indexes a stored file that had no row, once its bytes were found to match its digest (consistency check). */
  indexStoredBlob (digest: string, size: number): void {
    if (this.index.getBlob(digest) === undefined) this.index.putBlobRow(digest, size)
  }

  /**
   * Whether a cached blob may be served under a repository: it was fetched from upstream
   * under it (or confirmed there), or a cached manifest of that repository names it.
   */
  blobBelongsTo (digest: string, repository: string): boolean {
    return this.index.blobBelongsTo(digest, repository)
  }

  /** Upstream confirmed that the repository has the blob. */
  addBlobRepository (digest: string, repository: string): void {
    this.#write('blob repository', () => this.index.addBlobRepository(digest, repository))
  }

  /** Whether a cached manifest may be served by digest under a repository: fetched or confirmed there. */
  manifestBelongsTo (digest: string, repository: string): boolean {
    const hot = this.#hot.get(hotKey.manifest(digest))
    if (hot?.kind === 'manifest' && hot.repositories.has(repository)) return true
    const belongs = this.index.manifestBelongsTo(digest, repository)
    if (belongs && hot?.kind === 'manifest') hot.repositories.add(repository)
    return belongs
  }

  /** Upstream confirmed that the repository has the manifest. */
  addManifestRepository (digest: string, repository: string): void {
    this.#write('manifest repository', () => this.index.addManifestRepository(digest, repository))
  }

  /** Removes a blob: its row first, then its file. */
  async removeBlob (digest: string): Promise<void> {
    this.index.deleteBlob(digest)
    await this.store.delete(digest)
  }

  // Manifests and tags

  /** A cached manifest, from memory or the index. */
  manifest (digest: string): Manifest | undefined {
    const hot = this.#hot.get(hotKey.manifest(digest))
    if (hot?.kind === 'manifest') return hot.manifest
    const row = this.index.getManifest(digest)
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
    const row = this.index.getTag(repository, tag)
    if (row === undefined) return undefined
    this.#hot.set(key, { kind: 'tag', digest: row.digest, confirmedAt: row.confirmedAt })
    return row
  }

  /**
   * Stores a manifest and, when a tag is given, points the tag at it (one transaction).
   * False when the index could not take it: the answer is then served uncached.
   */
  putManifest (repository: string, manifest: Manifest, tag?: string): boolean {
    // Bytes the cache has already keep the media type they were first stored with, whichever upstream sends them again.
    const stored = this.manifest(manifest.digest) ?? manifest
    if (!this.#write('manifest', () => this.index.putManifest(repository, stored, tag, blobsOf(stored)))) return false
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
    if (this.#write('tag confirmation', () => this.index.confirmTag(repository, tag, now))) {
      this.#hot.set(hotKey.tag(repository, tag), { kind: 'tag', digest, confirmedAt: now })
    }
  }

  deleteTag (repository: string, tag: string): void {
    // Forgotten in memory whatever the index says: upstream no longer has the tag.
    this.#hot.delete(hotKey.tag(repository, tag))
    this.#write('tag deletion', () => this.index.deleteTag(repository, tag))
  }

  /** As an event sink of a serving mirror: notes in the index which upstreams are down, for `registry-mirror stats`. */
  upstreamState (upstream: string, down: { since: number } | undefined): void {
    this.noteUpstreamDown(upstream, down?.since ?? 0)
  }

  /** Since when (ms) a serving mirror found an upstream down; 0 when it answers. */
  noteUpstreamDown (upstream: string, since: number): void {
    this.#write('upstream state', () => this.index.setCounter(`upstream.${upstream}.down_since`, since))
  }

  /** The upstreams a serving mirror has marked down, with since when. */
  upstreamsDown (): Array<{ upstream: string, since: number }> {
    const out: Array<{ upstream: string, since: number }> = []
    for (const [name, value] of this.index.counters()) {
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
    this.#write('probe', () => this.index.addCounters(new Map([['index.probe', 0]])))
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
    const tags = this.index.deleteManifest(digest)
    this.#hot.delete(hotKey.manifest(digest))
    for (const { repository, tag } of tags) this.#hot.delete(hotKey.tag(repository, tag))
    return tags
  }

  // Listings

  /** The tags the cache knows for a repository, sorted. */
  tags (repository: string): string[] {
    return this.index.listTags(repository)
  }

  repositories (): string[] {
    return this.index.repositories()
  }

  referrers (repository: string, subject: string, artifactType: string): { content: Buffer, fetchedAt: number } | undefined {
    return this.index.getReferrers(repository, subject, artifactType)
  }

  /** Stores a referrers answer; the cache keeps at most MAX_REFERRERS_ENTRIES, the oldest going first. */
  putReferrers (repository: string, subject: string, artifactType: string, content: Buffer): void {
    this.#write('referrers', () => this.index.putReferrers(repository, subject, artifactType, content, MAX_REFERRERS_ENTRIES))
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
      const row = this.index.getBlob(blob.digest)
      if (row !== undefined && row.size === blob.size && await this.store.stat(blob.digest) === blob.size) {
        present++
        continue
      }
      await this.store.put(blob.path, blob.digest)
      added++
    }
    // A crash here leaves the rows all in or all out (files already moved without rows
    // are re-hashed and indexed by the next consistency check).
    const tagList = [...tags]
    this.index.transaction(() => {
      for (const blob of blobList) {
        const [first, ...others] = [...blob.repositories]
        this.index.putBlob(blob.digest, blob.size, first ?? '', blob.mediaType)
        for (const repository of others) this.index.addBlobRepository(blob.digest, repository)
      }
      for (const m of manifests) {
        for (const repository of m.repositories) this.index.putManifest(repository, m, undefined, blobsOf(m))
      }
      for (const { repository, tag, manifest } of tagList) this.index.putManifest(repository, manifest, tag, blobsOf(manifest))
    })
    // Only once the rows are in: a tag the hot LRU still maps to its old digest is forgotten.
    for (const { repository, tag } of tagList) this.#hot.delete(hotKey.tag(repository, tag))
    return { added, present }
  }

  // What the cache holds

  /** Bytes of blobs and manifests, from the index. */
  usedBytes (): number {
    const t = this.index.totals()
    return t.blobBytes + t.manifestBytes
  }

  summary (): CacheSummary {
    const t = this.index.totals()
    return { bytes: t.blobBytes + t.manifestBytes, blobs: t.blobs, manifests: t.manifests, tags: t.tags, pinnedBytes: bytesOf(this.index, pinnedContent(this.index).digests) }
  }

  close (): void {
    this.access.close()
    this.index.close()
  }
}

/** The blobs a manifest names (config, layers, artifact blobs): they belong to its repositories. */
function blobsOf (manifest: Manifest): string[] {
  return childrenOf(manifest.content).filter(c => c.kind !== 'manifest').map(c => c.digest)
}
