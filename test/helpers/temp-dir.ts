// A fresh directory under the OS temp dir, removed with everything in it when the test ends.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Teardown } from './mirror.js'

export async function tempDir (t: Teardown, label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `${label}-`))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}
