// The SQLite index of what the cache holds. Blob bytes live in the blob store;
// manifests (small, at most 4 MiB) live here, so a tag and the manifest it
// points at are written in one transaction and a tag can never name a manifest
// the mirror does not have.

import Database from 'better-sqlite3'
import type { Database as DB, Statement } from 'better-sqlite3'

/** Last-access times and counters gathered in memory, applied in one transaction. */
export interface AccessBatch {
  /** digest -> latest access time */
  readonly blobs: ReadonlyMap<string, number>
  readonly manifests: ReadonlyMap<string, number>
  /** Counters to add to the persistent ones (hits, misses), for `registry-mirror stats`. */
  readonly counters: ReadonlyMap<string, number>
}

export interface BlobRow { digest: string, size: number, mediaType: string | null, createdAt: number, accessedAt: number }
export interface ManifestRow { digest: string, mediaType: string, size: number, content: Buffer }
export interface TagRow { repository: string, tag: string, digest: string, confirmedAt: number }

const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    media_type TEXT,
    created_at INTEGER NOT NULL,
    accessed_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX blobs_accessed ON blobs (accessed_at);
  CREATE TABLE blob_repositories (
    digest TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, repository)
  ) WITHOUT ROWID;
  CREATE TABLE manifests (
    digest TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    content BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    accessed_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX manifests_accessed ON manifests (accessed_at);
  CREATE TABLE manifest_repositories (
    digest TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, repository)
  ) WITHOUT ROWID;
  CREATE INDEX manifest_repositories_repo ON manifest_repositories (repository);
  CREATE TABLE tags (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    confirmed_at INTEGER NOT NULL,
    PRIMARY KEY (repository, tag)
  ) WITHOUT ROWID;
  CREATE TABLE referrers (
    repository TEXT NOT NULL,
    subject TEXT NOT NULL,
    artifact_type TEXT NOT NULL,
    content BLOB NOT NULL,
    fetched_at INTEGER NOT NULL,
    PRIMARY KEY (repository, subject, artifact_type)
  ) WITHOUT ROWID;
  `,
  `
  CREATE TABLE pins (
    repository TEXT NOT NULL,
    reference TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (repository, reference)
  ) WITHOUT ROWID;
  CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX tags_digest ON tags (digest);
  `,
  // Which blobs each cached manifest names, so a blob belongs to every repository that has
  // a cached manifest naming it; filled here for the manifests already cached. Referrers
  // answers get indexes for bounding and for eviction with their subject.
  `
  CREATE TABLE IF NOT EXISTS manifest_blobs (
    manifest TEXT NOT NULL,
    blob TEXT NOT NULL,
    PRIMARY KEY (manifest, blob)
  ) WITHOUT ROWID;
  CREATE INDEX IF NOT EXISTS manifest_blobs_blob ON manifest_blobs (blob);
  INSERT OR IGNORE INTO manifest_blobs (manifest, blob)
    SELECT digest, json_extract(CAST(content AS TEXT), '$.config.digest') FROM manifests
    WHERE json_valid(CAST(content AS TEXT)) AND json_type(CAST(content AS TEXT), '$.config.digest') = 'text';
  INSERT OR IGNORE INTO manifest_blobs (manifest, blob)
    SELECT m.digest, json_extract(e.value, '$.digest') FROM manifests m, json_each(CAST(m.content AS TEXT), '$.layers') e
    WHERE json_valid(CAST(m.content AS TEXT)) AND json_type(CAST(m.content AS TEXT), '$.layers') = 'array' AND json_type(e.value, '$.digest') = 'text';
  INSERT OR IGNORE INTO manifest_blobs (manifest, blob)
    SELECT m.digest, json_extract(e.value, '$.digest') FROM manifests m, json_each(CAST(m.content AS TEXT), '$.blobs') e
    WHERE json_valid(CAST(m.content AS TEXT)) AND json_type(CAST(m.content AS TEXT), '$.blobs') = 'array' AND json_type(e.value, '$.digest') = 'text';
  INSERT OR IGNORE INTO manifest_blobs (manifest, blob)
    SELECT m.digest, json_extract(e.value, '$.blobSum') FROM manifests m, json_each(CAST(m.content AS TEXT), '$.fsLayers') e
    WHERE json_valid(CAST(m.content AS TEXT)) AND json_type(CAST(m.content AS TEXT), '$.fsLayers') = 'array' AND json_type(e.value, '$.blobSum') = 'text';
  CREATE INDEX IF NOT EXISTS referrers_fetched ON referrers (fetched_at);
  CREATE INDEX IF NOT EXISTS referrers_subject ON referrers (subject);
  `,
  // The last evictions, whichever command made them (cache/eviction-log.ts keeps at most 100).
  `
  CREATE TABLE IF NOT EXISTS eviction_log (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    digest TEXT NOT NULL,
    bytes INTEGER,
    reason TEXT NOT NULL,
    by TEXT NOT NULL,
    repositories TEXT NOT NULL
  );
  `
]

export interface CacheTotals {
  blobBytes: number
  blobs: number
  manifestBytes: number
  manifests: number
  tags: number
  repositories: number
  oldestAccess: number | null
  newestAccess: number | null
}

export interface EvictionCandidate { kind: 'blob' | 'manifest', digest: string, size: number, accessedAt: number }
export interface Pin { repository: string, reference: string, createdAt: number }

export interface CacheIndexOptions { readonly path: string, readonly now?: () => number }

export class CacheIndex {
  readonly #db: DB
  readonly #now: () => number
  readonly #s: {
    getBlob: Statement<[string], { digest: string, size: number, media_type: string | null, created_at: number, accessed_at: number }>
    putBlob: Statement<[string, number, string | null, number, number]>
    addBlobRepo: Statement<[string, string]>
    deleteBlob: Statement<[string]>
    deleteBlobRepos: Statement<[string]>
    touchBlob: Statement<[number, string]>
    getManifest: Statement<[string], { digest: string, media_type: string, size: number, content: Buffer }>
    putManifest: Statement<[string, string, number, Buffer, number, number]>
    addManifestRepo: Statement<[string, string]>
    touchManifest: Statement<[number, string]>
    getTag: Statement<[string, string], { repository: string, tag: string, digest: string, confirmed_at: number }>
    putTag: Statement<[string, string, string, number]>
    confirmTag: Statement<[number, string, string]>
    deleteTag: Statement<[string, string]>
    listTags: Statement<[string], { tag: string }>
    repositories: Statement<[], { repository: string }>
    getReferrers: Statement<[string, string, string], { content: Buffer, fetched_at: number }>
    putReferrers: Statement<[string, string, string, Buffer, number]>
    countReferrers: Statement<[], { n: number }>
    trimReferrers: Statement<[number]>
    deleteReferrersOf: Statement<[string]>
    deleteReferrersBefore: Statement<[number]>
    addManifestBlob: Statement<[string, string]>
    deleteManifestBlobs: Statement<[string]>
    blobMember: Statement<[string, string, string, string], { one: number }>
    manifestMember: Statement<[string, string], { one: number }>
    candidates: Statement<[{ before: number, limit: number }], { kind: 'blob' | 'manifest', digest: string, size: number, accessed_at: number }>
    tagsOf: Statement<[string], { repository: string, tag: string }>
    deleteTagsOf: Statement<[string]>
    deleteManifest: Statement<[string]>
    deleteManifestRepos: Statement<[string]>
    allBlobs: Statement<[], { digest: string, size: number }>
    addPin: Statement<[string, string, number]>
    deletePin: Statement<[string, string]>
    pins: Statement<[], { repository: string, reference: string, created_at: number }>
    addCounter: Statement<[string, number]>
    counters: Statement<[], { name: string, value: number }>
  }

  constructor (options: CacheIndexOptions) {
    this.#now = options.now ?? Date.now
    this.#db = new Database(options.path)
    this.#db.pragma('journal_mode = WAL')
    this.#db.pragma('synchronous = NORMAL')
    this.#db.pragma('foreign_keys = ON')
    this.#db.pragma('busy_timeout = 5000')
    this.#migrate()
    const db = this.#db
    this.#s = {
      getBlob: db.prepare('SELECT digest, size, media_type, created_at, accessed_at FROM blobs WHERE digest = ?'),
      putBlob: db.prepare(`INSERT INTO blobs (digest, size, media_type, created_at, accessed_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (digest) DO UPDATE SET size = excluded.size, media_type = coalesce(excluded.media_type, media_type), accessed_at = excluded.accessed_at`),
      addBlobRepo: db.prepare('INSERT OR IGNORE INTO blob_repositories (digest, repository) VALUES (?, ?)'),
      deleteBlob: db.prepare('DELETE FROM blobs WHERE digest = ?'),
      deleteBlobRepos: db.prepare('DELETE FROM blob_repositories WHERE digest = ?'),
      touchBlob: db.prepare('UPDATE blobs SET accessed_at = max(accessed_at, ?) WHERE digest = ?'),
      getManifest: db.prepare('SELECT digest, media_type, size, content FROM manifests WHERE digest = ?'),
      putManifest: db.prepare(`INSERT INTO manifests (digest, media_type, size, content, created_at, accessed_at) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (digest) DO UPDATE SET accessed_at = excluded.accessed_at`),
      addManifestRepo: db.prepare('INSERT OR IGNORE INTO manifest_repositories (digest, repository) VALUES (?, ?)'),
      touchManifest: db.prepare('UPDATE manifests SET accessed_at = max(accessed_at, ?) WHERE digest = ?'),
      getTag: db.prepare('SELECT repository, tag, digest, confirmed_at FROM tags WHERE repository = ? AND tag = ?'),
      putTag: db.prepare(`INSERT INTO tags (repository, tag, digest, confirmed_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest, confirmed_at = excluded.confirmed_at`),
      confirmTag: db.prepare('UPDATE tags SET confirmed_at = ? WHERE repository = ? AND tag = ?'),
      deleteTag: db.prepare('DELETE FROM tags WHERE repository = ? AND tag = ?'),
      listTags: db.prepare('SELECT tag FROM tags WHERE repository = ? ORDER BY tag'),
      repositories: db.prepare('SELECT repository FROM manifest_repositories UNION SELECT repository FROM tags ORDER BY repository'),
      getReferrers: db.prepare('SELECT content, fetched_at FROM referrers WHERE repository = ? AND subject = ? AND artifact_type = ?'),
      putReferrers: db.prepare(`INSERT INTO referrers (repository, subject, artifact_type, content, fetched_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (repository, subject, artifact_type) DO UPDATE SET content = excluded.content, fetched_at = excluded.fetched_at`),
      countReferrers: db.prepare('SELECT count(*) AS n FROM referrers'),
      trimReferrers: db.prepare(`DELETE FROM referrers WHERE (repository, subject, artifact_type) IN
        (SELECT repository, subject, artifact_type FROM referrers ORDER BY fetched_at LIMIT ?)`),
      deleteReferrersOf: db.prepare('DELETE FROM referrers WHERE subject = ?'),
      deleteReferrersBefore: db.prepare('DELETE FROM referrers WHERE fetched_at < ?'),
      addManifestBlob: db.prepare('INSERT OR IGNORE INTO manifest_blobs (manifest, blob) VALUES (?, ?)'),
      deleteManifestBlobs: db.prepare('DELETE FROM manifest_blobs WHERE manifest = ?'),
      blobMember: db.prepare(`SELECT 1 AS one FROM blob_repositories WHERE digest = ? AND repository = ?
        UNION ALL SELECT 1 AS one FROM manifest_blobs mb JOIN manifest_repositories mr ON mr.digest = mb.manifest
        WHERE mb.blob = ? AND mr.repository = ? LIMIT 1`),
      manifestMember: db.prepare('SELECT 1 AS one FROM manifest_repositories WHERE digest = ? AND repository = ?'),
      candidates: db.prepare(`SELECT kind, digest, size, accessed_at FROM (
          SELECT 'blob' AS kind, digest, size, accessed_at FROM blobs WHERE accessed_at < @before
          UNION ALL SELECT 'manifest' AS kind, digest, size, accessed_at FROM manifests WHERE accessed_at < @before)
        ORDER BY accessed_at, digest LIMIT @limit`),
      tagsOf: db.prepare('SELECT repository, tag FROM tags WHERE digest = ?'),
      deleteTagsOf: db.prepare('DELETE FROM tags WHERE digest = ?'),
      deleteManifest: db.prepare('DELETE FROM manifests WHERE digest = ?'),
      deleteManifestRepos: db.prepare('DELETE FROM manifest_repositories WHERE digest = ?'),
      allBlobs: db.prepare('SELECT digest, size FROM blobs'),
      addPin: db.prepare('INSERT OR IGNORE INTO pins (repository, reference, created_at) VALUES (?, ?, ?)'),
      deletePin: db.prepare('DELETE FROM pins WHERE repository = ? AND reference = ?'),
      pins: db.prepare('SELECT repository, reference, created_at FROM pins ORDER BY repository, reference'),
      addCounter: db.prepare(`INSERT INTO counters (name, value) VALUES (?, ?)
        ON CONFLICT (name) DO UPDATE SET value = value + excluded.value`),
      counters: db.prepare('SELECT name, value FROM counters')
    }
  }

  #migrate (): void {
    const version = this.#db.pragma('user_version', { simple: true })
    if (typeof version !== 'number') throw new Error('cannot read the index schema version')
    if (version > MIGRATIONS.length) {
      throw new Error(`the cache index has schema version ${version}, newer than this registry-mirror understands (${MIGRATIONS.length})`)
    }
    for (let v = version; v < MIGRATIONS.length; v++) {
      const sql = MIGRATIONS[v] ?? ''
      this.#db.transaction(() => {
        this.#db.exec(sql)
        this.#db.pragma(`user_version = ${v + 1}`)
      })()
    }
  }

  getBlob (digest: string): BlobRow | undefined {
    const r = this.#s.getBlob.get(digest)
    return r === undefined ? undefined : { digest: r.digest, size: r.size, mediaType: r.media_type, createdAt: r.created_at, accessedAt: r.accessed_at }
  }

  putBlob (digest: string, size: number, repository: string, mediaType: string | null = null): void {
    const now = this.#now()
    this.#db.transaction(() => {
      this.#s.putBlob.run(digest, size, mediaType, now, now)
      this.#s.addBlobRepo.run(digest, repository)
    })()
  }

  /** A blob row with no repository known (a file found on disk by gc). */
  putBlobRow (digest: string, size: number): void {
    const now = this.#now()
    this.#s.putBlob.run(digest, size, null, now, now)
  }

  addBlobRepository (digest: string, repository: string): void {
    this.#s.addBlobRepo.run(digest, repository)
  }

  /** Drops a blob's row; used when its file turned out to be missing. */
  deleteBlob (digest: string): void {
    this.#db.transaction(() => {
      this.#s.deleteBlob.run(digest)
      this.#s.deleteBlobRepos.run(digest)
    })()
  }

  getManifest (digest: string): ManifestRow | undefined {
    const r = this.#s.getManifest.get(digest)
    return r === undefined ? undefined : { digest: r.digest, mediaType: r.media_type, size: r.size, content: r.content }
  }

  /**
   * Stores a manifest of a repository, with the blobs it names (which then belong to that
   * repository), and, when a tag is given, points the tag at it, all in one transaction.
   */
  putManifest (repository: string, manifest: { digest: string, mediaType: string, content: Buffer }, tag?: string, blobs: readonly string[] = []): void {
    const now = this.#now()
    this.#db.transaction(() => {
      this.#s.putManifest.run(manifest.digest, manifest.mediaType, manifest.content.length, manifest.content, now, now)
      this.#s.addManifestRepo.run(manifest.digest, repository)
      for (const blob of blobs) this.#s.addManifestBlob.run(manifest.digest, blob)
      if (tag !== undefined) this.#s.putTag.run(repository, tag, manifest.digest, now)
    })()
  }

  getTag (repository: string, tag: string): TagRow | undefined {
    const r = this.#s.getTag.get(repository, tag)
    return r === undefined ? undefined : { repository: r.repository, tag: r.tag, digest: r.digest, confirmedAt: r.confirmed_at }
  }

  /** Records that upstream still maps the tag to the digest the cache has. */
  confirmTag (repository: string, tag: string, at: number = this.#now()): void {
    this.#s.confirmTag.run(at, repository, tag)
  }

  deleteTag (repository: string, tag: string): void {
    this.#s.deleteTag.run(repository, tag)
  }

  listTags (repository: string): string[] {
    return this.#s.listTags.all(repository).map(r => r.tag)
  }

  repositories (): string[] {
    return this.#s.repositories.all().map(r => r.repository)
  }

  getReferrers (repository: string, subject: string, artifactType: string): { content: Buffer, fetchedAt: number } | undefined {
    const r = this.#s.getReferrers.get(repository, subject, artifactType)
    return r === undefined ? undefined : { content: r.content, fetchedAt: r.fetched_at }
  }

  /** Stores a referrers answer; past `limit` answers, the oldest go. */
  putReferrers (repository: string, subject: string, artifactType: string, content: Buffer, limit: number): void {
    this.#db.transaction(() => {
      this.#s.putReferrers.run(repository, subject, artifactType, content, this.#now())
      const over = (this.#s.countReferrers.get()?.n ?? 0) - limit
      if (over > 0) this.#s.trimReferrers.run(over)
    })()
  }

  /** Referrers answers fetched before `before`; returns how many went. */
  deleteReferrersBefore (before: number): number {
    return this.#s.deleteReferrersBefore.run(before).changes
  }

  /** Whether the blob belongs to the repository: fetched from it, or named by a cached manifest of it. */
  blobBelongsTo (digest: string, repository: string): boolean {
    return this.#s.blobMember.get(digest, repository, digest, repository) !== undefined
  }

  manifestBelongsTo (digest: string, repository: string): boolean {
    return this.#s.manifestMember.get(digest, repository) !== undefined
  }

  addManifestRepository (digest: string, repository: string): void {
    this.#s.addManifestRepo.run(digest, repository)
  }

  /** Applies batched last-access times in one transaction. */
  recordAccess (batch: AccessBatch): void {
    this.#db.transaction(() => {
      for (const [digest, at] of batch.blobs) this.#s.touchBlob.run(at, digest)
      for (const [digest, at] of batch.manifests) this.#s.touchManifest.run(at, digest)
      for (const [name, value] of batch.counters) this.#s.addCounter.run(name, value)
    })()
  }

  /** Adds evictions to the log and keeps only its last `keep` rows. */
  logEvictions (entries: ReadonlyArray<{ at: number, kind: string, digest: string, bytes: number | null, reason: string, by: string, repositories: readonly string[] }>, keep: number): void {
    const insert = this.#db.prepare('INSERT INTO eviction_log (at, kind, digest, bytes, reason, by, repositories) VALUES (?, ?, ?, ?, ?, ?, ?)')
    this.#db.transaction(() => {
      for (const e of entries) insert.run(e.at, e.kind, e.digest, e.bytes, e.reason, e.by, JSON.stringify(e.repositories))
      this.#db.prepare('DELETE FROM eviction_log WHERE id <= (SELECT max(id) FROM eviction_log) - ?').run(keep)
    })()
  }

  /** The last evictions, newest first. */
  recentEvictions (limit: number): Array<{ at: number, kind: 'blob' | 'manifest', digest: string, bytes: number | null, reason: string, by: string, repositories: string[] }> {
    const rows = this.#db.prepare('SELECT at, kind, digest, bytes, reason, by, repositories FROM eviction_log ORDER BY id DESC LIMIT ?').all(limit) as Array<{ at: number, kind: 'blob' | 'manifest', digest: string, bytes: number | null, reason: string, by: string, repositories: string }>
    return rows.map(r => ({ ...r, repositories: parseNames(r.repositories) }))
  }

  /**
   * The repositories holding the most bytes of blobs (fetched under the repository, or named by
   * one of its cached manifests), most first. A scan of every blob: the status page asks rarely.
   */
  largestRepositories (limit: number): Array<{ repository: string, bytes: number, blobs: number }> {
    return this.#db.prepare(`
      WITH held (repository, digest) AS (
        SELECT repository, digest FROM blob_repositories
        UNION
        SELECT mr.repository, mb.blob FROM manifest_repositories mr JOIN manifest_blobs mb ON mb.manifest = mr.digest
      )
      SELECT held.repository AS repository, sum(b.size) AS bytes, count(*) AS blobs
      FROM held JOIN blobs b ON b.digest = held.digest
      GROUP BY held.repository ORDER BY bytes DESC, repository LIMIT ?`).all(limit) as Array<{ repository: string, bytes: number, blobs: number }>
  }

  totals (): CacheTotals {
    // One scan per table for the count and the bytes; the oldest and newest from the access index.
    const b = this.#db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes, (SELECT min(accessed_at) FROM blobs) AS oldest, (SELECT max(accessed_at) FROM blobs) AS newest FROM blobs')
      .get() as { n: number, bytes: number, oldest: number | null, newest: number | null }
    const m = this.#db.prepare('SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes, (SELECT min(accessed_at) FROM manifests) AS oldest, (SELECT max(accessed_at) FROM manifests) AS newest FROM manifests')
      .get() as { n: number, bytes: number, oldest: number | null, newest: number | null }
    const tags = (this.#db.prepare('SELECT count(*) AS n FROM tags').get() as { n: number }).n
    const oldest = [b.oldest, m.oldest].filter((v): v is number => v !== null)
    const newest = [b.newest, m.newest].filter((v): v is number => v !== null)
    return {
      blobBytes: b.bytes,
      blobs: b.n,
      manifestBytes: m.bytes,
      manifests: m.n,
      tags,
      repositories: this.repositories().length,
      oldestAccess: oldest.length > 0 ? Math.min(...oldest) : null,
      newestAccess: newest.length > 0 ? Math.max(...newest) : null
    }
  }

  /** Bytes of blobs and manifests: what eviction bounds (a scan of sizes only, cheaper than totals). */
  usedBytes (): number {
    return (this.#db.prepare('SELECT (SELECT coalesce(sum(size), 0) FROM blobs) + (SELECT coalesce(sum(size), 0) FROM manifests) AS bytes').get() as { bytes: number }).bytes
  }

  /** Blobs and manifests last accessed before `before`, least recently used first. */
  evictionCandidates (before: number, limit: number): EvictionCandidate[] {
    return this.#s.candidates.all({ before, limit }).map(r => ({ kind: r.kind, digest: r.digest, size: r.size, accessedAt: r.accessed_at }))
  }

  /** Removes a manifest and every tag that points at it, in one transaction; returns those tags. */
  deleteManifest (digest: string): Array<{ repository: string, tag: string }> {
    return this.#db.transaction(() => {
      const tags = this.#s.tagsOf.all(digest)
      this.#s.deleteTagsOf.run(digest)
      this.#s.deleteManifestRepos.run(digest)
      this.#s.deleteManifestBlobs.run(digest)
      this.#s.deleteReferrersOf.run(digest)
      this.#s.deleteManifest.run(digest)
      return tags
    })()
  }

  /** Blob rows after `digest` in digest order, for walking them a page at a time. */
  blobsAfter (digest: string, limit: number): Array<{ digest: string, size: number }> {
    return this.#db.prepare('SELECT digest, size FROM blobs WHERE digest > ? ORDER BY digest LIMIT ?').all(digest, limit) as Array<{ digest: string, size: number }>
  }

  manifestDigests (): string[] {
    return this.#db.prepare('SELECT digest FROM manifests').pluck().all() as string[]
  }

  allBlobs (): Array<{ digest: string, size: number }> {
    return this.#s.allBlobs.all()
  }

  addPin (repository: string, reference: string): void {
    this.#s.addPin.run(repository, reference, this.#now())
  }

  /** True when there was such a pin. */
  deletePin (repository: string, reference: string): boolean {
    return this.#s.deletePin.run(repository, reference).changes > 0
  }

  pins (): Pin[] {
    return this.#s.pins.all().map(r => ({ repository: r.repository, reference: r.reference, createdAt: r.created_at }))
  }

  addCounters (values: ReadonlyMap<string, number>): void {
    if (values.size === 0) return
    this.#db.transaction(() => {
      for (const [name, value] of values) this.#s.addCounter.run(name, value)
    })()
  }

  setCounter (name: string, value: number): void {
    this.#db.prepare('INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value').run(name, value)
  }

  counters (): Map<string, number> {
    return new Map(this.#s.counters.all().map(r => [r.name, r.value]))
  }

  /** Runs `fn` as one transaction: every write in it lands, or none does. */
  transaction<T> (fn: () => T): T {
    return this.#db.transaction(fn)()
  }

  /** Throws when the index cannot answer. */
  ping (): void {
    this.#db.prepare('SELECT 1').get()
  }

  close (): void {
    if (this.#db.open) this.#db.close()
  }
}

/** A JSON list of names as the eviction log stores it; anything else reads as none. */
function parseNames (text: string): string[] {
  try {
    const v: unknown = JSON.parse(text)
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []
  } catch {
    return []
  }
}
