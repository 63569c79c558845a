// Makes the index and the blob store agree. Two passes of very different cost:
//
// - cleanStaging, whenever a data directory is opened: what interrupted
//   downloads and imports left in the staging directory goes. Its cost is the
//   few files there, not the size of the cache.
// - sweep, in `registry-mirror gc` and once in the background after `serve`
//   starts: the store is listed once, and every row is compared with it. A
//   row whose file is gone is dropped (that blob becomes a miss), one whose
//   file has the wrong size is removed, and a stored file without a row is
//   re-hashed and indexed when it matches its name, removed when it does not.
//   Linear in the cache, and on a bucket a full listing: never on the way to
//   answering `stats` or to serving.
//
// A store that fails (EACCES, EIO, a bucket's 500) is never taken for "gone":
// the row or file it could not tell about is left as it is and counted.
//
// The sweep may run beside a serving mirror: a blob committed while it runs
// is found by the row it gets or by a second look before anything is
// removed, and a file that vanishes while it is hashed is left alone.

import type { Logger } from 'pino'
import { matchesDigest } from '../oci/digest-check.js'
import type { BlobStore } from '../store/blob-store.js'
import type { Staging } from '../store/staging.js'

export interface StagingReport {
  tempFilesRemoved: number
}

export interface SweepReport extends StagingReport {
  rowsDropped: number
  filesIndexed: number
  filesRemoved: number
  blobsChecked: number
  /** With verify: cached blobs and manifests whose bytes no longer match their digest (removed). */
  corruptRemoved: number
  /** Rows and files the store could not tell about (it failed); left as they were. */
  unreadable: number
}

export interface SweepOptions {
  /** Report what would be repaired, and repair nothing (`gc --dry-run`). */
  readonly dryRun?: boolean | undefined
  /** Re-hash every cached blob and manifest too, removing those that do not match (`gc --verify`). */
  readonly verify?: boolean | undefined
  /** Stops the sweep where it is (a serving mirror closing); what it did stays done. */
  readonly signal?: AbortSignal | undefined
}

/** Rows compared between two turns given to requests, when the sweep runs beside a serving mirror. */
const TURN = 1000

/** What the sweep works on: the store itself, and the cache's own operations on its index. */
export interface SweepParts {
  readonly store: BlobStore
  readonly log: Logger
  rows: () => Iterable<{ digest: string, size: number }>
  row: (digest: string) => { size: number } | undefined
  manifests: () => Iterable<string>
  manifest: (digest: string) => Buffer | undefined
  /** Undefined when the bytes could not be read whole. */
  matches: (digest: string, size: number) => Promise<boolean | undefined>
  removeBlob: (digest: string) => Promise<void>
  removeManifest: (digest: string) => void
  indexStored: (digest: string, size: number) => void
}

export function emptySweepReport (): SweepReport {
  return { tempFilesRemoved: 0, rowsDropped: 0, filesIndexed: 0, filesRemoved: 0, blobsChecked: 0, corruptRemoved: 0, unreadable: 0 }
}

export function repairs (report: SweepReport): number {
  return report.tempFilesRemoved + report.rowsDropped + report.filesIndexed + report.filesRemoved + report.corruptRemoved
}

export interface StagingCleanOptions {
  readonly staging: Staging
  readonly log: Logger
  /** Temp files younger than this are left alone: a running mirror may be writing them. 0 for `serve`, which owns the directory. */
  readonly minAgeMs: number
  readonly dryRun?: boolean | undefined
  readonly now?: (() => number) | undefined
}

export async function cleanStaging (options: StagingCleanOptions): Promise<StagingReport> {
  const { staging, log } = options
  const now = options.now ?? Date.now
  const dryRun = options.dryRun === true
  const report: StagingReport = { tempFilesRemoved: 0 }
  for await (const temp of staging.list()) {
    if (now() - temp.modifiedAt < options.minAgeMs) continue
    log.info({ file: temp.path, bytes: temp.size, dryRun }, 'removing temp file of an interrupted download')
    if (!dryRun) await staging.discard(temp.path)
    report.tempFilesRemoved++
  }
  return report
}

export async function sweep (parts: SweepParts, options: SweepOptions): Promise<SweepReport> {
  const { store, log } = parts
  const dryRun = options.dryRun === true
  const report = emptySweepReport()
  let unreadableLogged = false
  const unreadable = (what: Record<string, unknown>, err: unknown): void => {
    report.unreadable++
    if (!unreadableLogged) log.error({ ...what, store: store.description, err }, 'the blob store failed during the sweep; what it could not tell about is left as it is')
    unreadableLogged = true
  }
  // What the store says it holds now, as the stat of each would (undefined: gone; an error: cannot tell).
  const stat = async (digest: string): Promise<number | undefined | Error> => {
    try {
      return await store.stat(digest)
    } catch (err) {
      return err instanceof Error ? err : new Error(String(err))
    }
  }

  // 1. What the store holds, listed once. A listing cut short by a failure leaves the rest to
  // the rows' own stat below: what it did not list is never taken for missing.
  const stored = new Map<string, number>()
  const strays: string[] = []
  try {
    for await (const object of store.list()) {
      if (options.signal?.aborted === true) return report
      if (object.digest === undefined) strays.push(object.key)
      else stored.set(object.digest, object.size)
    }
  } catch (err) {
    unreadable({ listing: 'cut short' }, err)
  }

  // 2. Rows whose file is gone or has the wrong size; with verify, whose bytes no longer match.
  for (const { digest, size } of parts.rows()) {
    if (report.blobsChecked % TURN === 0) {
      await new Promise(resolve => setImmediate(resolve))
      if (options.signal?.aborted === true) return report
    }
    report.blobsChecked++
    let actual: number | undefined | Error = stored.get(digest)
    // Not listed, or listed at another size: looked at again, since it may have changed since the listing.
    if (actual !== size) actual = await stat(digest)
    if (actual instanceof Error) {
      unreadable({ digest }, actual)
      continue
    }
    if (actual === size) {
      if (options.verify === true && await parts.matches(digest, size) === false) {
        log.error({ digest, size, dryRun }, 'cached blob does not match its digest (bit rot?); removing it')
        if (!dryRun) await parts.removeBlob(digest)
        report.corruptRemoved++
      }
      stored.delete(digest)
      continue
    }
    log.warn({ digest, expected: size, actual: actual ?? null, dryRun }, actual === undefined ? 'indexed blob has no file; dropping its row' : 'indexed blob has the wrong size; removing it')
    if (!dryRun) await parts.removeBlob(digest)
    stored.delete(digest)
    report.rowsDropped++
  }

  // 2b. Manifests whose bytes no longer match their digest.
  if (options.verify === true) {
    for (const digest of parts.manifests()) {
      const content = parts.manifest(digest)
      if (content === undefined) continue
      if (matchesDigest(content, digest)) continue
      log.error({ digest, dryRun }, 'cached manifest does not match its digest; removing it')
      if (!dryRun) parts.removeManifest(digest)
      report.corruptRemoved++
    }
  }

  // A remote store may be shared with other nodes: what it holds without a row here is theirs
  // (or found on demand, before going upstream), never re-hashed nor removed by this node.
  if (store.kind === 'remote') return report

  // 3. Stored files without a row: kept only if their bytes match their name.
  for (const [digest, size] of stored) {
    if (options.signal?.aborted === true) return report
    if (parts.row(digest) !== undefined) continue // committed by a download since the listing
    const matches = await parts.matches(digest, size)
    if (matches === undefined) {
      // Gone since the listing (evicted), or unreadable now: nothing to decide on.
      const now = await stat(digest)
      if (now instanceof Error) unreadable({ digest }, now)
      continue
    }
    if (matches) {
      log.info({ digest, bytes: size, dryRun }, 'indexing blob file that had no row')
      if (!dryRun) parts.indexStored(digest, size)
      report.filesIndexed++
    } else {
      log.warn({ digest, dryRun }, 'removing blob file that does not match its name')
      if (!dryRun) await parts.removeBlob(digest)
      report.filesRemoved++
    }
  }
  for (const key of strays) {
    log.warn({ file: key, dryRun }, 'removing stored file that is not named after a digest')
    if (!dryRun) await store.removeObject(key)
    report.filesRemoved++
  }
  return report
}
