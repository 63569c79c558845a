// The mirror's version, from its package.json: found by walking up from this
// file, which sits two levels below it in the source tree and three in dist/.

import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

let version: string | undefined

export function mirrorVersion (): string {
  if (version !== undefined) return version
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 4; i++) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown, version?: unknown }
      if (pkg.name === 'registry-mirror' && typeof pkg.version === 'string') return (version = pkg.version)
    } catch {}
    dir = dirname(dir)
  }
  return (version = 'unknown')
}
