// Files the tests search: every file under a directory (the data directory a
// test greps for secrets, say).

import { readdir } from 'node:fs/promises'
import { join } from 'node:path'

/** Every regular file under dir, recursively. */
export async function filesUnder (dir: string): Promise<string[]> {
  const found: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) found.push(...await filesUnder(path))
    else if (entry.isFile()) found.push(path)
  }
  return found
}
