// Whether the kubelet's pulls (containerd's CRI plugin) really read the
// hosts.toml files this tool writes, and what to set when they cannot. Written
// hosts.toml files prove nothing by themselves: containerd reads them only
// from its CRI config_path, and from 2.1 on the transfer service, which
// pulls for CRI by default, takes config_path as one directory, so a list
// (the default from 2.2, "/etc/containerd/certs.d:/etc/docker/certs.d", and
// EKS's setting) makes it read none of them (containerd#12415, spegel#1272).

import { normalize } from 'node:path'
import type { ContainerdConfig } from './containerd-config.js'
import { atLeast, type ContainerdVersion } from './containerd-version.js'

export type Through = 'yes' | 'no' | 'unknown'

export interface ContainerdVerdict {
  readonly throughMirror: Through
  /** How CRI pulls: by itself (reads every directory of config_path) or through the transfer service. */
  readonly pullMode: 'local' | 'transfer' | 'unknown'
  /** The config_path containerd uses, its default filled in when known. */
  readonly configPath: string | undefined
  readonly reason: string
  /** What to set (then restart containerd) so that it does. */
  readonly fix: readonly string[]
}

const DEFAULT_LIST = '/etc/containerd/certs.d:/etc/docker/certs.d'

export function containerdVerdict (version: ContainerdVersion | undefined, config: ContainerdConfig, certsDir: string): ContainerdVerdict {
  const v3 = config.version === 3 || (config.version === undefined && version !== undefined && version.major >= 2)
  const registryTable = config.version === 1 ? '[plugins.cri.registry]' : v3 ? `[plugins."io.containerd.cri.v1.images".registry]` : '[plugins."io.containerd.grpc.v1.cri".registry]'
  const setPath = `${registryTable} config_path = "${certsDir}" in ${config.path}, then restart containerd`
  const setLocal = `[plugins."io.containerd.cri.v1.images"] use_local_image_pull = true in ${config.path}, then restart containerd`
  if (config.problem !== undefined) {
    return { throughMirror: 'unknown', pullMode: 'unknown', configPath: undefined, reason: config.problem, fix: [setPath] }
  }
  // From 2.2.0 an unset config_path means the list (unless legacy mirrors are set); before, nothing.
  const defaulted = atLeast(version, 2, 2)
  const written = config.configPath !== undefined && config.configPath !== '' ? config.configPath : undefined
  const configPath = written ?? (config.legacyMirrors || defaulted !== true ? undefined : DEFAULT_LIST)
  if (configPath === undefined) {
    const unsure = written === undefined && defaulted === undefined && !config.legacyMirrors
    return {
      throughMirror: unsure ? 'unknown' : 'no',
      pullMode: 'unknown',
      configPath,
      reason: `${config.found ? config.path : `no ${config.path}, so`} containerd's CRI plugin has no registry config_path${unsure ? ' unless this containerd is 2.2 or newer (its version is not known)' : ''}: it reads no hosts.toml`,
      fix: [setPath]
    }
  }
  const dirs = configPath.split(':').filter(dir => dir !== '').map(dir => normalize(dir))
  if (!dirs.includes(normalize(certsDir))) {
    return { throughMirror: 'no', pullMode: 'unknown', configPath, reason: `containerd's CRI config_path is "${configPath}", which does not name ${certsDir}`, fix: [setPath] }
  }
  const transferPossible = atLeast(version, 2, 1)
  const pullMode: ContainerdVerdict['pullMode'] =
    transferPossible === false || config.useLocalImagePull === true || config.localPullSettings.length > 0
      ? 'local'
      : transferPossible === true ? 'transfer' : 'unknown'
  const why = pullMode === 'local' && transferPossible !== false
    ? config.useLocalImagePull === true ? ' (use_local_image_pull = true)' : ` (${config.localPullSettings[0] ?? ''} makes containerd 2.1+ pull without the transfer service)`
    : ''
  if (dirs.length === 1 || pullMode === 'local') {
    const named = `containerd ${version?.text ?? '(version unknown)'} reads ${certsDir} (config_path "${configPath}")`
    return { throughMirror: 'yes', pullMode, configPath, reason: `${named}${pullMode === 'transfer' ? ', through the transfer service' : pullMode === 'local' ? `, pulling by itself${why}` : ''}`, fix: [] }
  }
  const list = `config_path "${configPath}" is a list, which containerd's transfer service (CRI's way to pull from 2.1 on) does not read as one: it reads no hosts.toml`
  const fix = [setLocal, `or ${registryTable} config_path = "${certsDir}" alone`]
  if (pullMode === 'transfer') return { throughMirror: 'no', pullMode, configPath, reason: `containerd ${version?.text ?? '2.1+'} pulls through the transfer service and ${list}`, fix }
  return { throughMirror: 'unknown', pullMode, configPath, reason: `containerd's version is not known: if it is 2.1 or newer, ${list}`, fix: fix.map(f => `if containerd is 2.1 or newer: ${f}`) }
}
