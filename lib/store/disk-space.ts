// Free space on the volume that holds the cache.

import { statfs } from 'node:fs/promises'

/** Bytes available to this (unprivileged) process on the filesystem of `path`. */
export async function freeBytes (path: string): Promise<number> {
  const s = await statfs(path)
  return s.bavail * s.bsize
}
