// What containerd's config.toml (and the files it imports) says about image
// pulls: the CRI plugin's registry config_path, and for 2.1 and later whether
// the CRI plugin pulls itself or through the transfer service. Read, never
// written: changing it needs a containerd restart, which is the operator's.
//
// The tables differ by config version: version 2 keeps the image settings
// under plugins."io.containerd.grpc.v1.cri" (snapshot settings under its
// "containerd" table), version 3 under plugins."io.containerd.cri.v1.images";
// containerd 2.x moves version 2's into the latter when it loads the file, so
// both are looked at, as it does.

import { readdir, readFile } from 'node:fs/promises'
import { dirname, isAbsolute, join, basename } from 'node:path'
import { parse, type TomlTable } from 'smol-toml'
import { errnoCode } from '../errors.js'

export interface ContainerdConfig {
  readonly path: string
  readonly found: boolean
  /** Why it could not be read (not TOML, unreadable), when it could not. */
  readonly problem: string | undefined
  /** The file's `version` (1 when it has none). */
  readonly version: number | undefined
  /** The CRI registry config_path as written; undefined when not set. */
  readonly configPath: string | undefined
  /** use_local_image_pull as written; undefined when not set. */
  readonly useLocalImagePull: boolean | undefined
  /** Settings with which containerd 2.1+ pulls by itself whatever use_local_image_pull says. */
  readonly localPullSettings: readonly string[]
  /** Legacy registry.mirrors are set: containerd then leaves config_path at its empty default. */
  readonly legacyMirrors: boolean
  /** The imported files read with it. */
  readonly imports: readonly string[]
}

const CRI_V2 = 'io.containerd.grpc.v1.cri'
const IMAGES_V3 = 'io.containerd.cri.v1.images'

export async function readContainerdConfig (path: string): Promise<ContainerdConfig> {
  const none = { version: undefined, configPath: undefined, useLocalImagePull: undefined, localPullSettings: [], legacyMirrors: false, imports: [] }
  let main: TomlTable
  try {
    main = parse(await readFile(path, 'utf8'))
  } catch (err) {
    const code = errnoCode(err)
    if (code === 'ENOENT') return { path, found: false, problem: undefined, ...none }
    return { path, found: code === undefined, problem: code === undefined ? `${path} is not valid TOML: ${firstLine(err)}` : `${path} cannot be read: ${code}`, ...none }
  }
  const imports: string[] = []
  let merged = main
  for (const pattern of stringList(main.imports)) {
    for (const file of await expandImport(isAbsolute(pattern) ? pattern : join(dirname(path), pattern))) {
      try {
        merged = mergeTables(merged, parse(await readFile(file, 'utf8')))
        imports.push(file)
      } catch (err) {
        return { path, found: true, problem: `${file} (imported by ${path}) cannot be read as TOML: ${firstLine(err)}`, ...none, imports }
      }
    }
  }
  return { path, found: true, problem: undefined, ...imageSettings(merged), imports }
}

function imageSettings (config: TomlTable): Pick<ContainerdConfig, 'version' | 'configPath' | 'useLocalImagePull' | 'localPullSettings' | 'legacyMirrors'> {
  const version = typeof config.version === 'number' ? config.version : 1
  const plugins = table(config.plugins)
  // Version 1 (containerd 1.x only) names plugins without their type: plugins.cri.
  const cri = table(plugins[version === 1 ? 'cri' : CRI_V2])
  const images = table(plugins[IMAGES_V3])
  const criContainerd = table(cri.containerd)
  // containerd 2.x copies version 2's registry table over the images plugin's, so it wins there.
  const registry = version === 3 ? table(images.registry) : { ...table(images.registry), ...table(cri.registry) }
  const configPath = typeof registry.config_path === 'string' ? registry.config_path : undefined
  const setting = (key: string, from: 'cri' | 'criContainerd'): unknown => {
    if (version === 3) return images[key]
    const old = from === 'cri' ? cri[key] : criContainerd[key]
    return old !== undefined ? old : images[key]
  }
  const nonEmpty = (value: unknown): boolean => Object.keys(table(value)).length > 0
  const localPullSettings: string[] = []
  // The settings containerd 2.1's CheckLocalImagePullConfigs falls back to local pulls for.
  if (setting('disable_snapshot_annotations', 'criContainerd') === false) localPullSettings.push('disable_snapshot_annotations = false')
  if (setting('discard_unpacked_layers', 'criContainerd') === true) localPullSettings.push('discard_unpacked_layers = true')
  for (const key of ['mirrors', 'configs', 'auths']) if (nonEmpty(registry[key])) localPullSettings.push(`registry.${key}`)
  const downloads = setting('max_concurrent_downloads', 'cri')
  if (typeof downloads === 'number' && downloads !== 3) localPullSettings.push(`max_concurrent_downloads = ${downloads}`)
  if (setting('image_pull_with_sync_fs', 'cri') === true) localPullSettings.push('image_pull_with_sync_fs = true')
  const local = images.use_local_image_pull
  return {
    version,
    configPath,
    useLocalImagePull: typeof local === 'boolean' ? local : undefined,
    localPullSettings,
    legacyMirrors: nonEmpty(registry.mirrors)
  }
}

/** An import as containerd globs it: a plain path, or a pattern in its last part (conf.d/*.toml). */
async function expandImport (pattern: string): Promise<string[]> {
  const name = basename(pattern)
  if (!/[*?[]/.test(name)) return [pattern]
  const escaped = name.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]')
  const matcher = new RegExp(`^${escaped}$`)
  try {
    return (await readdir(dirname(pattern))).filter(entry => matcher.test(entry)).sort().map(entry => join(dirname(pattern), entry))
  } catch {
    return []
  }
}

/** Later files win key by key, tables merged all the way down, as containerd merges its imports. */
function mergeTables (base: TomlTable, over: TomlTable): TomlTable {
  const out: TomlTable = { ...base }
  for (const [key, value] of Object.entries(over)) {
    const old = out[key]
    out[key] = isTable(old) && isTable(value) ? mergeTables(old, value) : value
  }
  return out
}

function isTable (value: unknown): value is TomlTable {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date)
}

function table (value: unknown): TomlTable {
  return isTable(value) ? value : {}
}

function stringList (value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : []
}

function firstLine (err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? ''
}
