// Free space on the volume that holds the cache.

import { statfs } from 'node:fs/promises'
import { errnoCode } from '../errors.js'

/** Bytes available to this (unprivileged) process on the filesystem of `path`. */
export async function freeBytes (path: string): Promise<number> {
  const s = await statfs(path)
  return s.bavail * s.bsize
}

export function isDiskFull (err: unknown): boolean {
  const code = errnoCode(err)
  return code === 'ENOSPC' || code === 'EDQUOT'
}
