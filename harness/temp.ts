// Temporary directories for daemons and images. Paths stay short because
// unix socket paths (containerd, dockerd) are limited to 107 bytes.

import { mkdtemp, rm, readFile } from 'node:fs/promises'
import { readFileSync, rmSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from './process.js'

const keep = (): boolean => process.env.E2E_KEEP === '1'

// Dirs no teardown removed (the process is exiting on a signal or a crash)
// go on the way out, after process.ts has killed the daemons using them.
const liveDirs = new Set<string>()
process.on('exit', () => {
  if (keep()) return
  let info = ''
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {}
  for (const dir of liveDirs) {
    for (const point of mountPointsUnder(info, dir)) spawnSync('umount', ['-l', point])
    try {
      rmSync(dir, { recursive: true, force: true })
    } catch {}
  }
})

export async function makeTempDir (label: string): Promise<string> {
  const dir = await mkdtemp(join(process.env.E2E_TMPDIR ?? tmpdir(), `rm-e2e-${label}-`))
  liveDirs.add(dir)
  return dir
}

/** Mount points at or below dir, deepest first, from /proc/self/mountinfo text. */
function mountPointsUnder (mountinfo: string, dir: string): string[] {
  return mountinfo.split('\n')
    .map(line => line.split(' ')[4])
    .filter((point): point is string => point !== undefined)
    .map(point => point.replace(/\\040/g, ' '))
    .filter(point => point === dir || point.startsWith(dir + '/'))
    .sort((a, b) => b.length - a.length)
}

/**
 * Removes a directory a daemon used, unmounting anything it left mounted
 * inside first (dockerd bind-mounts its data-root onto itself). E2E_KEEP=1
 * keeps it for a post-mortem.
 */
export async function removeTempDir (dir: string): Promise<void> {
  if (keep()) {
    console.error(`# E2E_KEEP=1: kept ${dir}`)
    return
  }
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
  for (const point of mountPointsUnder(mountinfo, dir)) {
    await run('umount', ['-l', point]).catch(() => {})
  }
  await rm(dir, { recursive: true, force: true, maxRetries: 3 })
  liveDirs.delete(dir)
}
