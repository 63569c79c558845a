// Makes the index and the disk agree, at every start and on `registry-mirror
// gc`: temp files of interrupted downloads go; rows whose file is gone are
// dropped (that blob becomes a miss); files without a row are re-hashed and
// indexed when they match their name, removed when they don't.

import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import type { CacheIndex } from '../db/cache-index.js'
import { errnoCode } from '../errors.js'
import { DIGEST_ALGORITHMS } from '../reference.js'
import type { BlobStore } from '../store/blob-store.js'

export interface ConsistencyReport {
  tempFilesRemoved: number
  rowsDropped: number
  filesIndexed: number
  filesRemoved: number
  blobsChecked: number
}

export interface ConsistencyOptions {
  readonly index: CacheIndex
  readonly store: BlobStore
  readonly log: Logger
  readonly dryRun?: boolean
  /**
   * Temp files younger than this are left alone: a running mirror may be
   * writing them. 0 at start-up, when nothing else can be.
   */
  readonly tempMinAgeMs?: number
  readonly now?: () => number
}

export async function checkConsistency (options: ConsistencyOptions): Promise<ConsistencyReport> {
  const { index, store, log } = options
  const dryRun = options.dryRun === true
  const now = options.now ?? Date.now
  const report: ConsistencyReport = { tempFilesRemoved: 0, rowsDropped: 0, filesIndexed: 0, filesRemoved: 0, blobsChecked: 0 }

  // 1. Temp files of interrupted downloads.
  for (const name of await listDir(store.tmpDir)) {
    const path = join(store.tmpDir, name)
    const info = await stat(path).catch(() => undefined)
    if (info === undefined) continue
    if (now() - info.mtimeMs < (options.tempMinAgeMs ?? 0)) continue
    log.info({ file: name, bytes: info.size, dryRun }, 'removing temp file of an interrupted download')
    if (!dryRun) await rm(path, { recursive: true, force: true })
    report.tempFilesRemoved++
  }

  // 2. Rows whose file is gone or has the wrong size.
  const indexed = new Map<string, number>()
  for (const { digest, size } of index.allBlobs()) {
    report.blobsChecked++
    const actual = await store.size(digest).catch(() => undefined)
    if (actual === size) {
      indexed.set(digest, size)
      continue
    }
    log.warn({ digest, expected: size, actual: actual ?? null, dryRun }, actual === undefined ? 'indexed blob has no file; dropping its row' : 'indexed blob has the wrong size; removing it')
    if (!dryRun) {
      index.deleteBlob(digest)
      if (actual !== undefined) await store.delete(digest)
    }
    report.rowsDropped++
  }

  // 3. Files without a row: keep them only if their bytes match their name.
  const blobsDir = join(store.root, 'blobs')
  for (const algorithm of await listDir(blobsDir)) {
    const length = DIGEST_ALGORITHMS.get(algorithm)
    for (const prefix of await listDir(join(blobsDir, algorithm))) {
      for (const name of await listDir(join(blobsDir, algorithm, prefix))) {
        const path = join(blobsDir, algorithm, prefix, name)
        const digest = `${algorithm}:${name}`
        if (indexed.has(digest)) continue
        const wellNamed = length !== undefined && name.length === length && /^[a-f0-9]+$/.test(name) && name.startsWith(prefix) && prefix.length === 2
        const info = await stat(path).catch(() => undefined)
        if (info === undefined || !info.isFile()) continue
        let matches = false
        if (wellNamed) {
          const hash = createHash(algorithm)
          await pipeline(createReadStream(path), hash)
          matches = hash.digest('hex') === name
        }
        if (matches) {
          log.info({ digest, bytes: info.size, dryRun }, 'indexing blob file that had no row')
          if (!dryRun && index.getBlob(digest) === undefined) index.putBlobRow(digest, info.size)
          report.filesIndexed++
        } else {
          log.warn({ file: path, dryRun }, 'removing blob file that does not match its name')
          if (!dryRun) await rm(path, { force: true })
          report.filesRemoved++
        }
      }
    }
  }
  return report
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
