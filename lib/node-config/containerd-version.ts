// Which containerd the node runs, because what it reads differs: dial_timeout
// in hosts.toml from 2.0.7 and 2.1.0, CRI pulls through the transfer service
// from 2.1.0, a default config_path from 2.2.0. Asked, best first: the version
// given by hand, `containerd --version`, the Kubernetes node's
// containerRuntimeVersion, and last the config file's own version (3 means
// 2.x, nothing finer).

import { execFile } from 'node:child_process'

export interface ContainerdVersion {
  /** As it was found: "2.1.4", "1.6.20~ds1", "2.x (config version 3)". */
  readonly text: string
  readonly major: number
  /** Undefined when only the major version is known (from the config file). */
  readonly minor: number | undefined
  readonly patch: number | undefined
  readonly source: 'given' | 'binary' | 'kubernetes' | 'config'
}

/** The first x.y.z in the text, as a version from `source`; undefined when there is none. */
export function parseContainerdVersion (text: string, source: ContainerdVersion['source']): ContainerdVersion | undefined {
  const match = /(\d+)\.(\d+)\.(\d+)/.exec(text)
  if (match === null) return undefined
  const [whole = '', major = '', minor = '', patch = ''] = match
  // Keep a distribution's suffix (1.6.20~ds1, 1.7.23-k3s2) in the text, for people to read.
  const suffix = /^[^\s]*/.exec(text.slice(match.index + whole.length))?.[0] ?? ''
  return { text: whole + suffix, major: Number(major), minor: Number(minor), patch: Number(patch), source }
}

/**
 * `<binary> --version`, which prints "containerd <module> <version> <revision>"; undefined
 * when the binary is not there (a pod without the host's binaries) or says nothing usable.
 */
export async function askContainerdBinary (binary: string, timeoutMs = 5000): Promise<ContainerdVersion | undefined> {
  const stdout = await new Promise<string | undefined>(resolve => {
    execFile(binary, ['--version'], { timeout: timeoutMs, maxBuffer: 64 * 1024 }, (err, out) => {
      resolve(err === null ? out : undefined)
    })
  })
  if (stdout === undefined) return undefined
  // The module path (github.com/containerd/containerd/v2) comes before the version; skip it.
  const fields = stdout.trim().split(/\s+/)
  return parseContainerdVersion(fields.slice(2).join(' '), 'binary')
}

/** containerd's version from the Kubernetes node's containerRuntimeVersion ("containerd://2.1.4"). */
export function fromRuntimeVersion (runtime: string): ContainerdVersion | undefined {
  if (!runtime.startsWith('containerd://')) return undefined
  return parseContainerdVersion(runtime.slice('containerd://'.length), 'kubernetes')
}

/** What the config file's version says of containerd: 3 is read by 2.x only. */
export function fromConfigVersion (configVersion: number | undefined): ContainerdVersion | undefined {
  if (configVersion !== 3) return undefined
  return { text: '2.x (config version 3)', major: 2, minor: undefined, patch: undefined, source: 'config' }
}

/** -1, 0 or 1 as the version is older than, the same as, or newer than major.minor.patch; undefined when it cannot tell. */
function compare (v: ContainerdVersion, major: number, minor: number, patch: number): number | undefined {
  if (v.major !== major) return v.major < major ? -1 : 1
  if (v.minor === undefined) return undefined
  if (v.minor !== minor) return v.minor < minor ? -1 : 1
  if (v.patch === undefined) return undefined
  return v.patch === patch ? 0 : v.patch < patch ? -1 : 1
}

export function atLeast (v: ContainerdVersion | undefined, major: number, minor: number, patch = 0): boolean | undefined {
  if (v === undefined) return undefined
  const c = compare(v, major, minor, patch)
  return c === undefined ? undefined : c >= 0
}

/**
 * Whether hosts.toml's dial_timeout is read: added in 2.1.0 (containerd#11106) and
 * backported to 2.0.7 (containerd#12136); 1.x never reads it. False when not known.
 */
export function readsDialTimeout (v: ContainerdVersion | undefined): boolean {
  if (v === undefined) return false
  if (v.major !== 2) return v.major > 2
  if (atLeast(v, 2, 1) === true) return true
  return v.minor === 0 && atLeast(v, 2, 0, 7) === true
}
