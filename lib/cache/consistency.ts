// Makes the index and the blob store agree, whenever a data directory is
// opened and on `registry-mirror gc`: temp files of interrupted downloads go;
// rows whose file is gone (or has the wrong size) are dropped, so that blob
// becomes a miss; stored files without a row are re-hashed and indexed when
// they match their name, removed when they don't.

import { createHash } from 'node:crypto'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import { parseDigest } from '../oci/reference.js'
import type { LocalCache } from './local-cache.js'

export interface ConsistencyReport {
  tempFilesRemoved: number
  rowsDropped: number
  filesIndexed: number
  filesRemoved: number
  blobsChecked: number
  /** With verify: cached blobs and manifests whose bytes no longer match their digest (removed). */
  corruptRemoved: number
}

export interface ConsistencyOptions {
  readonly cache: LocalCache
  readonly log: Logger
  readonly dryRun?: boolean
  /** Re-hash every cached blob and manifest too, removing those that do not match (gc --verify). */
  readonly verify?: boolean
  /**
   * Temp files younger than this are left alone: a running mirror may be
   * writing them. 0 for `serve`, which owns the data directory.
   */
  readonly tempMinAgeMs?: number
  readonly now?: () => number
}

export function repairs (report: ConsistencyReport): number {
  return report.tempFilesRemoved + report.rowsDropped + report.filesIndexed + report.filesRemoved + report.corruptRemoved
}

export async function checkConsistency (options: ConsistencyOptions): Promise<ConsistencyReport> {
  const { cache, log } = options
  const { store, index } = cache
  const dryRun = options.dryRun === true
  const now = options.now ?? Date.now
  const report: ConsistencyReport = { tempFilesRemoved: 0, rowsDropped: 0, filesIndexed: 0, filesRemoved: 0, blobsChecked: 0, corruptRemoved: 0 }

  // 1. Temp files of interrupted downloads.
  for await (const temp of store.listTemp()) {
    if (now() - temp.modifiedAt < (options.tempMinAgeMs ?? 0)) continue
    log.info({ file: temp.key, bytes: temp.size, dryRun }, 'removing temp file of an interrupted download')
    if (!dryRun) await store.discard(temp.key)
    report.tempFilesRemoved++
  }

  // 2. Rows whose file is gone or has the wrong size.
  const indexed = new Set<string>()
  for (const { digest, size } of index.allBlobs()) {
    report.blobsChecked++
    const actual = await store.stat(digest).catch(() => undefined)
    if (actual === size && options.verify === true && !await matches(cache, digest, size)) {
      log.error({ digest, size, dryRun }, 'cached blob does not match its digest (bit rot?); removing it')
      if (!dryRun) await cache.removeBlob(digest)
      report.corruptRemoved++
      continue
    }
    if (actual === size) {
      indexed.add(digest)
      continue
    }
    log.warn({ digest, expected: size, actual: actual ?? null, dryRun }, actual === undefined ? 'indexed blob has no file; dropping its row' : 'indexed blob has the wrong size; removing it')
    if (!dryRun) await cache.removeBlob(digest)
    report.rowsDropped++
  }

  // 2b. Manifests whose bytes no longer match their digest.
  if (options.verify === true) {
    for (const digest of index.manifestDigests()) {
      const content = index.getManifest(digest)?.content
      if (content === undefined) continue
      const { algorithm } = parseDigest(digest)
      if (`${algorithm}:${createHash(algorithm).update(content).digest('hex')}` === digest) continue
      log.error({ digest, dryRun }, 'cached manifest does not match its digest; removing it')
      if (!dryRun) cache.removeManifest(digest)
      report.corruptRemoved++
    }
  }

  // 3. Stored files without a row: kept only if their bytes match their name.
  for await (const file of store.list()) {
    if (file.digest !== undefined && indexed.has(file.digest)) continue
    if (file.digest !== undefined && await matches(cache, file.digest, file.size)) {
      log.info({ digest: file.digest, bytes: file.size, dryRun }, 'indexing blob file that had no row')
      if (!dryRun) cache.indexStoredBlob(file.digest, file.size)
      report.filesIndexed++
    } else {
      log.warn({ file: file.key, dryRun }, 'removing blob file that does not match its name')
      if (!dryRun) await store.removeEntry(file.key)
      report.filesRemoved++
    }
  }
  return report
}

async function matches (cache: LocalCache, digest: string, size: number): Promise<boolean> {
  const hash = createHash(parseDigest(digest).algorithm)
  if (size > 0) {
    const body = await cache.store.openRead(digest, { start: 0, end: size - 1 })
    if (body === undefined) return false
    await pipeline(body, hash)
  }
  return `${parseDigest(digest).algorithm}:${hash.digest('hex')}` === digest
}
