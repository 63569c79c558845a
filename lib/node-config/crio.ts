// CRI-O's (and podman's, buildah's) registries.conf.d drop-in: one file of
// this tool's own, 50-registry-mirror.conf, with a [[registry]] per registry
// whose [[registry.mirror]] is the mirror with the registry as a path prefix
// (host:port/docker.io), as the mirror routes it. Written while the mirror
// answers, deleted while it does not. A file of that name without this
// tool's first line is someone else's and is left alone.
//
// CRI-O reads it on a reload (SIGHUP: systemctl reload crio) or by itself
// with automatically_reload_registries = true; this tool sends no signals.

import { readFile, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { stringify } from 'smol-toml'
import { errnoCode } from '../errors.js'
import { writeFileAtomic } from './atomic-file.js'
import { requireDirectory } from './hosts-files.js'

export const DROP_IN = '50-registry-mirror.conf'
const MARK = '# Written by registry-mirror node-config'

export interface CrioState {
  readonly file: string
  /** written: in place now; removed: this run deleted it; absent: none of this tool's; refused, error: see detail. */
  readonly state: 'written' | 'removed' | 'absent' | 'refused' | 'error'
  readonly detail: string
}

/** The drop-in's text for this mirror and these registries. */
export function dropInText (mirror: string, registries: readonly string[]): string {
  const url = new URL(mirror)
  const insecure = url.protocol === 'http:'
  const registry = registries.map(name => ({
    prefix: name,
    location: name,
    mirror: [insecure ? { location: `${url.host}/${name}`, insecure: true } : { location: `${url.host}/${name}` }]
  }))
  return [
    `${MARK}: pulls of these registries try the mirror at ${mirror} first.`,
    '# It deletes this file again while the mirror does not answer. CRI-O reads it after a reload',
    '# (systemctl reload crio, which sends SIGHUP) or by itself with automatically_reload_registries = true;',
    '# podman, buildah and skopeo read it at their next command.',
    '',
    stringify({ registry }).trimEnd(),
    ''
  ].join('\n')
}

export async function writeDropIn (dir: string, mirror: string, registries: readonly string[]): Promise<CrioState> {
  const file = join(dir, DROP_IN)
  return await guarded(file, async () => {
    await requireDirectory(dir, 'the registries.conf.d directory')
    const text = dropInText(mirror, registries)
    const existing = await readIfThere(file)
    if (existing !== undefined && !existing.startsWith(MARK)) return { state: 'refused', detail: `${file} was not written by this tool: left as it is` }
    if (existing === text) return { state: 'written', detail: 'in place already' }
    await writeFileAtomic(file, text)
    return { state: 'written', detail: existing === undefined ? 'written; CRI-O reads it after a reload' : 'rewritten; CRI-O reads it after a reload' }
  })
}

export async function removeDropIn (dir: string): Promise<CrioState> {
  const file = join(dir, DROP_IN)
  return await guarded(file, async () => {
    await requireDirectory(dir, 'the registries.conf.d directory')
    const existing = await readIfThere(file)
    if (existing === undefined) return { state: 'absent', detail: 'no drop-in' }
    if (!existing.startsWith(MARK)) return { state: 'refused', detail: `${file} was not written by this tool: left as it is` }
    await unlink(file).catch((err: unknown) => {
      if (errnoCode(err) !== 'ENOENT') throw err
    })
    return { state: 'removed', detail: 'deleted; CRI-O forgets the mirror after a reload' }
  })
}

async function guarded (file: string, work: () => Promise<Omit<CrioState, 'file'>>): Promise<CrioState> {
  try {
    return { file, ...await work() }
  } catch (err) {
    return { file, state: 'error', detail: err instanceof Error ? err.message : String(err) }
  }
}

async function readIfThere (file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw err
  }
}
