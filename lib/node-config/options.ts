// What `registry-mirror node-config` is told to do, checked once and frozen:
// every bad value is named in the error, with the form it should take, so a
// DaemonSet that is misconfigured says so in its first log line.

import { isAbsolute } from 'node:path'
import { parseDuration } from '../config/units.js'
import { UsageError } from '../errors.js'

export interface NodeConfigOptions {
  /** The mirror's base URL as containerd's nodes reach it, without a trailing slash: http://10.0.0.5:30500. */
  readonly mirror: string
  /** Registry hosts to send through the mirror, in the order given: docker.io, ghcr.io, localhost:5001. */
  readonly registries: readonly string[]
  /** containerd's certs.d (its CRI config_path); undefined when containerd is not to be configured. */
  readonly certsDir: string | undefined
  /** containers-registries.conf.d for CRI-O and podman; undefined when CRI-O is not to be configured. */
  readonly crioDir: string | undefined
  /** containerd's config.toml, read to tell whether its CRI plugin reads certsDir. */
  readonly containerdConfig: string
  /** The containerd binary asked for its version. */
  readonly containerdBinary: string
  /** A version given by hand (2.1.4), which beats every detection. */
  readonly containerdVersion: string | undefined
  readonly intervalMs: number
  readonly probeTimeoutMs: number
  /** dial_timeout for the mirror's entry where containerd reads it; 0 writes none. */
  readonly dialTimeoutMs: number
  readonly once: boolean
  readonly statusFile: string
}

/** The options as parseArgs hands them over: strings and booleans, each possibly absent. */
export interface NodeConfigArgs {
  readonly mirror?: string
  readonly registries?: string
  readonly 'certs-dir'?: string
  readonly 'crio-dir'?: string
  readonly 'containerd-config'?: string
  readonly 'containerd-bin'?: string
  readonly 'containerd-version'?: string
  readonly interval?: string
  readonly 'probe-timeout'?: string
  readonly 'dial-timeout'?: string
  readonly once?: boolean
  readonly 'status-file'?: string
}

export const DEFAULTS = Object.freeze({
  certsDir: '/etc/containerd/certs.d',
  containerdConfig: '/etc/containerd/config.toml',
  containerdBinary: 'containerd',
  interval: '10s',
  probeTimeout: '2s',
  dialTimeout: '1s',
  statusFile: '/run/registry-mirror/node-config.json'
})

// A registry host as containerd names its certs.d directories: a DNS name or IPv4 address, an optional port.
const REGISTRY_HOST = /^(?=.{1,253}(?::\d+)?$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*(?::(\d{1,5}))?$/
const VERSION = /^v?\d+\.\d+\.\d+$/

/**
 * Checks every option (the environment's MIRROR_URL and MIRROR_REGISTRIES stand in for
 * --mirror and --registries, as a DaemonSet sets them) and returns them frozen, or throws
 * one UsageError listing every problem.
 */
export function nodeConfigOptions (args: NodeConfigArgs, env: NodeJS.ProcessEnv = {}): NodeConfigOptions {
  const problems: string[] = []
  const mirror = mirrorUrl(args.mirror ?? env.MIRROR_URL, problems)
  const registries = registryList(args.registries ?? env.MIRROR_REGISTRIES, problems)
  const certsDir = absolutePath('--certs-dir', args['certs-dir'] ?? DEFAULTS.certsDir, true, problems)
  const crioDir = args['crio-dir'] === undefined ? undefined : absolutePath('--crio-dir', args['crio-dir'], false, problems)
  if (certsDir === undefined && crioDir === undefined && args['certs-dir'] === 'none') {
    problems.push('--certs-dir none without --crio-dir leaves nothing to configure')
  }
  const containerdConfig = absolutePath('--containerd-config', args['containerd-config'] ?? DEFAULTS.containerdConfig, false, problems) ?? ''
  const statusFile = absolutePath('--status-file', args['status-file'] ?? DEFAULTS.statusFile, false, problems) ?? ''
  const containerdBinary = args['containerd-bin'] ?? DEFAULTS.containerdBinary
  if (containerdBinary === '') problems.push('--containerd-bin: expected a program name or path, got ""')
  const containerdVersion = args['containerd-version']
  if (containerdVersion !== undefined && !VERSION.test(containerdVersion)) {
    problems.push(`--containerd-version: expected a version like 2.1.4, got ${JSON.stringify(containerdVersion)}`)
  }
  const intervalMs = duration('--interval', args.interval ?? DEFAULTS.interval, problems)
  const probeTimeoutMs = duration('--probe-timeout', args['probe-timeout'] ?? DEFAULTS.probeTimeout, problems)
  const dialTimeoutMs = duration('--dial-timeout', args['dial-timeout'] ?? DEFAULTS.dialTimeout, problems, true)
  if (intervalMs !== undefined && intervalMs < 1000) problems.push(`--interval: at least 1s, got ${JSON.stringify(args.interval)}`)
  if (probeTimeoutMs !== undefined && intervalMs !== undefined && intervalMs >= 1000 && probeTimeoutMs >= intervalMs) {
    problems.push(`--probe-timeout: must be shorter than --interval (${args.interval ?? DEFAULTS.interval}), got ${JSON.stringify(args['probe-timeout'])}`)
  }
  if (problems.length > 0 || mirror === undefined || registries === undefined || intervalMs === undefined || probeTimeoutMs === undefined || dialTimeoutMs === undefined) {
    throw new UsageError(`node-config: ${problems.join('; ')}`)
  }
  return Object.freeze({
    mirror,
    registries: Object.freeze(registries),
    certsDir,
    crioDir,
    containerdConfig,
    containerdBinary,
    containerdVersion: containerdVersion?.replace(/^v/, ''),
    intervalMs,
    probeTimeoutMs,
    dialTimeoutMs,
    once: args.once === true,
    statusFile
  })
}

function mirrorUrl (text: string | undefined, problems: string[]): string | undefined {
  const expected = 'expected the mirror\'s base URL as the node reaches it, like http://10.0.0.5:30500'
  if (text === undefined || text === '') {
    problems.push(`--mirror (or MIRROR_URL) is required: ${expected}`)
    return undefined
  }
  let url: URL
  try {
    url = new URL(text)
  } catch {
    problems.push(`--mirror: ${expected}, got ${JSON.stringify(text)}`)
    return undefined
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.pathname !== '/' || url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
    problems.push(`--mirror: ${expected} (http or https, no path, query or credentials), got ${JSON.stringify(text)}`)
    return undefined
  }
  return `${url.protocol}//${url.host}`
}

function registryList (text: string | undefined, problems: string[]): string[] | undefined {
  if (text === undefined || text.trim() === '') {
    problems.push('--registries (or MIRROR_REGISTRIES) is required: a comma-separated list like docker.io,ghcr.io,quay.io')
    return undefined
  }
  const names: string[] = []
  let bad = false
  for (const part of text.split(',')) {
    const name = part.trim()
    const port = REGISTRY_HOST.exec(name)?.[1]
    if (port === undefined ? !REGISTRY_HOST.test(name) : Number(port) < 1 || Number(port) > 65535) {
      problems.push(`--registries: ${JSON.stringify(name)} is not a registry host (lowercase name, optional :port, no scheme or path, e.g. docker.io or localhost:5001)`)
      bad = true
    } else if (!names.includes(name)) {
      names.push(name)
    }
  }
  return bad ? undefined : names
}

function absolutePath (flag: string, text: string, noneAllowed: boolean, problems: string[]): string | undefined {
  if (noneAllowed && text === 'none') return undefined
  if (text === '' || !isAbsolute(text)) {
    problems.push(`${flag}: expected an absolute path${noneAllowed ? ' (or none)' : ''}, got ${JSON.stringify(text)}`)
    return undefined
  }
  return text.length > 1 ? text.replace(/\/+$/, '') : text
}

function duration (flag: string, text: string, problems: string[], zeroAllowed = false): number | undefined {
  let ms: number
  try {
    ms = parseDuration(text)
  } catch (err) {
    problems.push(`${flag}: ${err instanceof Error ? err.message : String(err)}`)
    return undefined
  }
  if (ms === 0 && !zeroAllowed) {
    problems.push(`${flag}: must be longer than 0, got ${JSON.stringify(text)}`)
    return undefined
  }
  return ms
}
