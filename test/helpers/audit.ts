// Checks a data directory the hard way: every indexed blob's file exists and
// hashes to its digest, and every blob file has a row.

import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { CacheIndex } from '../../lib/db/cache-index.js'

export interface Audit { rows: number, files: number, problems: string[] }

export function auditStorage (storage: string): Audit {
  const index = new CacheIndex({ path: join(storage, 'index.db') })
  const problems: string[] = []
  try {
    const rows = index.allBlobs()
    const indexed = new Set(rows.map(r => r.digest))
    for (const { digest, size } of rows) {
      const hex = digest.slice('sha256:'.length)
      let bytes: Buffer
      try {
        bytes = readFileSync(join(storage, 'blobs', 'sha256', hex.slice(0, 2), hex))
      } catch {
        problems.push(`row without file: ${digest}`)
        continue
      }
      if (bytes.length !== size) problems.push(`size mismatch: ${digest}`)
      if (createHash('sha256').update(bytes).digest('hex') !== hex) problems.push(`content mismatch: ${digest}`)
    }
    let files = 0
    const root = join(storage, 'blobs', 'sha256')
    for (const prefix of safeReaddir(root)) {
      for (const name of safeReaddir(join(root, prefix))) {
        files++
        if (!indexed.has(`sha256:${name}`)) problems.push(`file without row: ${name}`)
      }
    }
    return { rows: rows.length, files, problems }
  } finally {
    index.close()
  }
}

function safeReaddir (path: string): string[] {
  try {
    return readdirSync(path)
  } catch {
    return []
  }
}
