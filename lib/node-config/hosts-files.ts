// The hosts.toml files of a certs.d directory, one per registry, read and
// replaced atomically with the edits of hosts-toml.ts. Each registry's file is
// its own outcome: one that cannot be written or is refused leaves the
// others configured. The certs.d directory itself must exist (this tool
// makes registries' directories in it, never the root, whose absence means a
// wrong mount or path).

import { mkdir, readFile, rmdir, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoCode, NodeConfigError } from '../errors.js'
import { writeFileAtomic } from './atomic-file.js'
import { addMirror, removeMirror, type HostsEdit, type MirrorEntry } from './hosts-toml.js'

export interface HostsFileState {
  readonly registry: string
  readonly file: string
  /**
   * configured: the mirror's entry is in it; removed: this run took it out; absent: there
   * is none of this tool's; refused: left untouched (see detail); error: it could not be read or written.
   */
  readonly state: 'configured' | 'removed' | 'absent' | 'refused' | 'error'
  /** What changed or went wrong, in words. */
  readonly detail: string
}

/** Throws a NodeConfigError unless `dir` is a directory this process can see. */
export async function requireDirectory (dir: string, what: string): Promise<void> {
  let isDirectory: boolean
  try {
    isDirectory = (await stat(dir)).isDirectory()
  } catch (err) {
    const code = errnoCode(err)
    if (code === 'ENOENT') throw new NodeConfigError(`${what} ${dir} does not exist: create it, or mount the host's directory at that path`)
    if (code === 'ENOTDIR') throw new NodeConfigError(`${what} ${dir} cannot exist: a part of its path is a file, not a directory`)
    throw new NodeConfigError(`${what} ${dir} cannot be read: ${code ?? String(err)}`)
  }
  if (!isDirectory) throw new NodeConfigError(`${what} ${dir} is not a directory`)
}

/** Puts the mirror first in each registry's hosts.toml. */
export async function addToHostsFiles (certsDir: string, entries: readonly MirrorEntry[]): Promise<HostsFileState[]> {
  await requireDirectory(certsDir, 'the certs directory')
  const states: HostsFileState[] = []
  for (const entry of entries) {
    const dir = join(certsDir, entry.registry)
    const file = join(dir, 'hosts.toml')
    states.push(await guarded(entry.registry, file, async () => {
      // The directory first: a configurator racing this one that makes both in between is then seen as their maker.
      const dirExists = await exists(dir)
      const existing = await readIfThere(file)
      const edit = addMirror(existing?.text, entry, !dirExists)
      if (edit.kind === 'write') {
        if (!dirExists) await mkdir(dir).catch(ignore('EEXIST'))
        await writeFileAtomic(file, edit.text, existing?.mode)
        return { state: 'configured', detail: existing === undefined ? 'created with the mirror first' : 'the mirror put first, the rest kept' }
      }
      if (edit.kind === 'unchanged') return { state: 'configured', detail: 'the mirror is first already' }
      return outcome(edit)
    }))
  }
  return states
}

/** Takes this tool's entries out of each registry's hosts.toml; a file (and directory) it created goes with them. */
export async function removeFromHostsFiles (certsDir: string, registries: readonly string[]): Promise<HostsFileState[]> {
  await requireDirectory(certsDir, 'the certs directory')
  const states: HostsFileState[] = []
  for (const registry of registries) {
    const dir = join(certsDir, registry)
    const file = join(dir, 'hosts.toml')
    states.push(await guarded(registry, file, async () => {
      const existing = await readIfThere(file)
      if (existing === undefined) return { state: 'absent', detail: 'no hosts.toml' }
      const edit = removeMirror(existing.text, registry)
      if (edit.kind === 'write') {
        await writeFileAtomic(file, edit.text, existing.mode)
        return { state: 'removed', detail: 'the mirror taken out, the rest as it was' }
      }
      if (edit.kind === 'delete') {
        await unlink(file).catch(ignore('ENOENT'))
        // Only when empty: a certificate someone put there since keeps the directory.
        if (edit.removeDirectory) await rmdir(dir).catch(ignore('ENOENT', 'ENOTEMPTY', 'EEXIST'))
        return { state: 'removed', detail: edit.removeDirectory ? 'the file and directory this tool created deleted' : 'the file this tool created deleted' }
      }
      if (edit.kind === 'unchanged') return { state: 'absent', detail: 'no entry of this tool' }
      return outcome(edit)
    }))
  }
  return states
}

function outcome (edit: Extract<HostsEdit, { kind: 'refused' }>): Omit<HostsFileState, 'registry' | 'file'> {
  return { state: 'refused', detail: edit.reason }
}

async function guarded (registry: string, file: string, work: () => Promise<Omit<HostsFileState, 'registry' | 'file'>>): Promise<HostsFileState> {
  try {
    return { registry, file, ...await work() }
  } catch (err) {
    const code = errnoCode(err)
    const because = code === 'EROFS' ? 'a read-only filesystem' : code === 'EACCES' || code === 'EPERM' ? 'no permission' : code === 'ENOTDIR' || code === 'EEXIST' ? 'a file stands where its directory should be' : code ?? (err instanceof Error ? err.message : String(err))
    return { registry, file, state: 'error', detail: `cannot be written: ${because}${code !== undefined && !because.startsWith(code) ? ` (${code})` : ''}` }
  }
}

async function readIfThere (file: string): Promise<{ text: string, mode: number } | undefined> {
  try {
    const [text, info] = await Promise.all([readFile(file, 'utf8'), stat(file)])
    return { text, mode: info.mode & 0o7777 }
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw err
  }
}

async function exists (path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false
    throw err
  }
}

function ignore (...codes: string[]): (err: unknown) => void {
  return err => {
    if (!codes.includes(errnoCode(err) ?? '')) throw err
  }
}
