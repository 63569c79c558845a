// Where verified blob bytes live, behind the few operations the cache needs
// of them: put a verified local file in, open a byte range, stat, delete,
// list. The filesystem (fs-blob-store.ts) is the first implementation; an
// object store is the second, and nothing above lib/cache/ changes.
//
// Not here: the local staging area downloads are written to before they are
// verified (staging.ts), which every store has alike, and the read-buffer pool
// (made once by lib/core.ts and handed to whoever reads). Nor free space: the
// filesystem store lives on the staging volume (a file moves in by rename), so
// the staging volume's room is the cache's, and a bucket has no such bound.
//
// What every method promises about failure, so that the cache can tell "not
// there" from "cannot tell now": not found is an answer (undefined); anything
// else (EACCES, EIO, a bucket's 500 or SlowDown) is thrown, and the cache never
// takes a thrown error for "gone".

import type { Readable } from 'node:stream'

/**
 * What a store shared by a fleet keeps besides blobs, so that a node serves what another fetched
 * without asking upstream: manifests by digest, and which repository upstream showed to have
 * which digest (the check every node makes before serving content under a repository's name).
 */
export interface SharedContent {
  putManifest: (digest: string, mediaType: string, content: Buffer) => Promise<void>
  /** Undefined when the store has none (or one larger than a manifest may be). */
  getManifest: (digest: string) => Promise<{ mediaType: string, content: Buffer } | undefined>
  /** Upstream showed that the repository has the content (fetched there, or confirmed with a HEAD). */
  putLink: (repository: string, digest: string) => Promise<void>
  hasLink: (repository: string, digest: string) => Promise<boolean>
  /** Marks a blob as served now, fleet-wide (its mark's time is the fleet's last access to it). */
  mark: (digest: string) => Promise<void>
  /** When a blob was last marked (ms), or undefined. */
  markedAt: (digest: string) => Promise<number | undefined>
  /** Every mark: the fleet's last access of each blob. */
  marks: () => AsyncIterable<{ readonly digest: string, readonly at: number }>
  /** Records that a node pins a blob or manifest (no node's eviction pass deletes it). */
  putPin: (node: string, digest: string) => Promise<void>
  removePin: (node: string, digest: string) => Promise<void>
  pins: () => AsyncIterable<{ readonly node: string, readonly digest: string }>
  /** How long after a client was last handed a blob it may still fetch it (a presigned URL's life), in ms. */
  holdMs: (size: number) => number
}

/** A stored object found by `list`: its digest when its name is one, else undefined (a stray object). */
export interface StoredObject {
  readonly key: string
  readonly digest: string | undefined
  readonly size: number
  /** When it was stored (ms), where the store says. */
  readonly storedAt?: number | undefined
}

export interface BlobStore {
  /** Names the store in logs and readiness ("filesystem /var/lib/...", "s3 bucket ..."). */
  readonly description: string
  /**
   * local: a put is a rename on the staging volume, done before a download's clients are
   * released. remote: a put is an upload, done in the background after they are (cache/uploads.ts),
   * and the store may be shared by other nodes (the sweep leaves objects without a row alone).
   */
  readonly kind: 'local' | 'remote'
  /** Makes what the store needs (directories); idempotent. */
  init: () => Promise<void>
  /** Puts a verified local file in under its digest; the local file is gone afterwards (moved, or uploaded and removed). */
  put: (localPath: string, digest: string, size: number) => Promise<void>
  /** Bytes [start, end] (inclusive) of a stored blob; undefined when there is none. A short object errors the stream. */
  openRead: (digest: string, range: { start: number, end: number }) => Promise<Readable | undefined>
  /** The stored size, or undefined when there is none. */
  stat: (digest: string) => Promise<number | undefined>
  /** Removes a blob; one already gone is fine. */
  delete: (digest: string) => Promise<void>
  /** Every stored object (the full sweep: gc, and once in the background after `serve` starts). */
  list: () => AsyncIterable<StoredObject>
  /** Removes a stored object by its `list` key (a stray that matches no digest). */
  removeObject: (key: string) => Promise<void>
  /** Throws, naming what is wrong, when blobs can be neither read nor written (readiness). */
  checkReady: () => Promise<void>
  /** A URL a client can fetch the blob from itself (a presigned GET); only stores that can offer one have it. */
  readonly presignedUrl?: (digest: string, size: number) => Promise<string>
  /** Manifests and repository links for a fleet; only a store nodes share has it. */
  readonly shared?: SharedContent
  /** Lets go of connections; after the cache has closed. */
  readonly close?: () => void
}
