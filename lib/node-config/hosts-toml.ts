// containerd's certs.d/<registry>/hosts.toml, edited as text so that what
// was there stays as it was, byte for byte: the mirror's [host."<url>"] table
// goes in between two marker comments, before the file's first table (so
// containerd tries the mirror first and every other host after it, in its
// order), and taking it out removes exactly those lines. smol-toml checks the
// file before and after: a file that is not TOML, has an unexpected shape, or
// would read differently apart from the mirror's entry is refused, never
// rewritten. Only the edit is computed here; reading and writing are the
// caller's (hosts-files.ts).

import { parse, stringify, type TomlTable } from 'smol-toml'

export interface MirrorEntry {
  /** The registry host, the directory's name: docker.io. */
  readonly registry: string
  /** The mirror's base URL, the host table's key: http://10.0.0.5:30500. */
  readonly mirror: string
  /** dial_timeout as Go reads it ("1s", "500ms"), or undefined to write none. */
  readonly dialTimeout: string | undefined
}

export type HostsEdit =
  /** The file already says what it should. */
  | { readonly kind: 'unchanged' }
  | { readonly kind: 'write', readonly text: string }
  /** Only what this tool wrote is left: the file goes, and its directory when this tool made that too. */
  | { readonly kind: 'delete', readonly removeDirectory: boolean }
  /** Left untouched; the reason says why, for the log and the status file. */
  | { readonly kind: 'refused', readonly reason: string }

const BEGIN = '# >>> registry-mirror node-config'
const END = '# <<< registry-mirror node-config'
const CREATED_FILE = '# registry-mirror node-config created this file, and deletes it again once only these lines are left.'
const CREATED_WITH_DIRECTORY = '# registry-mirror node-config created this file and its directory, and deletes both again once only these lines are left.'

/** Where a registry's requests go when no mirror answers; containerd's own default for each name. */
export function upstreamServer (registry: string): string {
  return registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`
}

/** The marked lines this tool puts in a hosts.toml for the mirror. */
export function mirrorBlock (entry: MirrorEntry): string {
  const table: TomlTable = { capabilities: ['pull', 'resolve'] }
  if (entry.dialTimeout !== undefined) table.dial_timeout = entry.dialTimeout
  const body = stringify({ host: { [entry.mirror]: table } }).trimEnd()
  return `${BEGIN}: ${entry.mirror} (taken out again while it does not answer)\n${body}\n${END}\n`
}

/** What a file this tool creates holds besides the mirror's block. */
function createdPrelude (registry: string, withDirectory: boolean): string {
  return `${withDirectory ? CREATED_WITH_DIRECTORY : CREATED_FILE}\n${stringify({ server: upstreamServer(registry) }).trimEnd()}\n\n`
}

/**
 * The edit that puts the mirror first in a registry's hosts.toml: `original` is the file's
 * text, or undefined when there is none (then `createsDirectory` says whether the
 * registry's directory is being made for it).
 */
export function addMirror (original: string | undefined, entry: MirrorEntry, createsDirectory: boolean): Exclude<HostsEdit, { kind: 'delete' }> {
  const block = mirrorBlock(entry)
  if (original === undefined) return { kind: 'write', text: createdPrelude(entry.registry, createsDirectory) + block }
  const read = readHostsFile(original)
  if ('reason' in read) return { kind: 'refused', reason: read.reason }
  const { base, baseTable } = read
  const hosts = hostTable(baseTable)
  if (hosts !== undefined && Object.hasOwn(hosts, entry.mirror)) {
    return { kind: 'refused', reason: `it has a [host."${entry.mirror}"] table of its own (not between this tool's markers): left as it is, and this tool cannot take it out when the mirror stops answering` }
  }
  const lines = base.split('\n')
  const at = insertionLine(lines)
  let text: string
  if (at === undefined) {
    text = base === '' || base.endsWith('\n') ? base + block : `${base}\n${block}`
  } else {
    text = [...lines.slice(0, at), ...block.split('\n').slice(0, -1), ...lines.slice(at)].join('\n')
  }
  const check = readsAsBasePlusMirror(text, baseTable, entry.mirror)
  if (check !== undefined) return { kind: 'refused', reason: check }
  return text === original ? { kind: 'unchanged' } : { kind: 'write', text }
}

/** The edit that takes this tool's entries out of a registry's hosts.toml and leaves the rest as it was. */
export function removeMirror (original: string, registry: string): HostsEdit {
  const read = readHostsFile(original)
  if ('reason' in read) return { kind: 'refused', reason: read.reason }
  if (read.blocks === 0) return { kind: 'unchanged' }
  if (read.base === createdPrelude(registry, false)) return { kind: 'delete', removeDirectory: false }
  if (read.base === createdPrelude(registry, true)) return { kind: 'delete', removeDirectory: true }
  return { kind: 'write', text: read.base }
}

interface ReadFile {
  /** The text without this tool's blocks. */
  readonly base: string
  readonly baseTable: TomlTable
  /** How many of this tool's blocks the text held. */
  readonly blocks: number
}

/** The file parsed and checked, with this tool's blocks taken out; or why it is left alone. */
function readHostsFile (text: string): ReadFile | { readonly reason: string } {
  let table: TomlTable
  try {
    table = parse(text)
  } catch (err) {
    return { reason: `not valid TOML (${firstLine(err)}): left untouched` }
  }
  const shape = shapeProblem(table)
  if (shape !== undefined) return { reason: `${shape}: left untouched` }
  const lines = text.split('\n')
  const kept: string[] = []
  const blockHosts: string[] = []
  let blocks = 0
  let inside: string[] | undefined
  for (const line of lines) {
    const bare = line.trimEnd()
    if (bare.startsWith(BEGIN)) {
      if (inside !== undefined) return { reason: 'a registry-mirror node-config marker opens inside another: left untouched' }
      inside = []
    } else if (bare === END) {
      if (inside === undefined) return { reason: 'a registry-mirror node-config end marker without its beginning: left untouched' }
      const hosts = hostTable(safeParse(inside.join('\n')) ?? {})
      if (hosts === undefined || Object.keys(hosts).length !== 1) return { reason: 'the lines between the registry-mirror node-config markers were changed by hand: left untouched' }
      blockHosts.push(...Object.keys(hosts))
      blocks++
      inside = undefined
    } else if (inside !== undefined) {
      inside.push(line)
    } else {
      kept.push(line)
    }
  }
  if (inside !== undefined) return { reason: 'a registry-mirror node-config marker without its end: left untouched' }
  const base = kept.join('\n')
  const baseTable = safeParse(base)
  if (baseTable === undefined || canonical(withoutHosts(table, blockHosts)) !== canonical(baseTable)) {
    return { reason: 'taking out the registry-mirror node-config lines would change the rest of the file: left untouched' }
  }
  return { base, baseTable, blocks }
}

/** What containerd could not read as a hosts file, said in a few words; undefined when it is fine. */
function shapeProblem (table: TomlTable): string | undefined {
  if (table.server !== undefined && typeof table.server !== 'string') return 'its server is not a string'
  const hosts = table.host
  if (hosts === undefined) return undefined
  if (!isTable(hosts)) return 'its host is not a table of [host."<url>"] tables'
  for (const [name, value] of Object.entries(hosts)) {
    if (!isTable(value)) return `its host."${name}" is not a table`
  }
  return undefined
}

function isTable (value: unknown): value is TomlTable {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

function hostTable (table: TomlTable): TomlTable | undefined {
  return isTable(table.host) ? table.host : undefined
}

function safeParse (text: string): TomlTable | undefined {
  try {
    return parse(text)
  } catch {
    return undefined
  }
}

/**
 * The line to put the block before: the file's first table header, or the comment lines
 * right above it (they belong to it); undefined when the file has no table (append).
 */
function insertionLine (lines: readonly string[]): number | undefined {
  const header = lines.findIndex(line => /^\s*\[/.test(line))
  if (header < 0) return undefined
  let at = header
  while (at > 0 && /^\s*#/.test(lines[at - 1] ?? '')) at--
  return at
}

/** Undefined when `text` reads as `base` plus the mirror's host, first of the hosts; else what is wrong. */
function readsAsBasePlusMirror (text: string, base: TomlTable, mirror: string): string | undefined {
  const table = safeParse(text)
  if (table === undefined) return 'adding the mirror\'s entry would not leave valid TOML (a table header inside a multi-line string?): left untouched'
  const first = Object.keys(hostTable(table) ?? {})[0]
  if (first !== mirror) return `the mirror's entry would not come first among its hosts (${first ?? 'none'} would): left untouched`
  if (canonical(withoutHosts(table, [mirror])) !== canonical(base)) return 'adding the mirror\'s entry would change how the rest of the file reads: left untouched'
  return undefined
}

/** The table without these host entries (and without its host table once that is empty). */
function withoutHosts (table: TomlTable, names: readonly string[]): TomlTable {
  const hosts = hostTable(table)
  if (hosts === undefined || names.length === 0) return table
  const kept = Object.fromEntries(Object.entries(hosts).filter(([name]) => !names.includes(name)))
  const copy: TomlTable = { ...table, host: kept }
  if (Object.keys(kept).length === 0) delete copy.host
  return copy
}

/**
 * One string per meaning: keys sorted, except the host entries, whose order is the order
 * containerd tries them in. An empty host table counts as none.
 */
function canonical (table: TomlTable): string {
  const hosts = hostTable(table)
  const { host: _host, ...rest } = table
  return JSON.stringify([sorted(rest), hosts === undefined ? [] : Object.entries(hosts).map(([name, value]) => [name, sorted(value)])])
}

function sorted (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sorted)
  if (isTable(value)) return Object.fromEntries(Object.keys(value).sort().map(key => [key, sorted(value[key])]))
  return value
}

function firstLine (err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? ''
}
