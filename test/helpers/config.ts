// Mirror configs for tests, written as the YAML file users write and read
// back through the real loader, so a test can only run a mirror with settings
// mirror.config.yml can express (and the loader's defaults and checks apply).

import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { loadConfig, type ConfigOverrides } from '../../lib/config/load.js'
import type { MirrorConfig } from '../../lib/config/types.js'

/** storage.s3 as written in the file. */
export interface YamlS3 {
  readonly endpoint?: string
  readonly bucket?: string
  readonly region?: string
  readonly prefix?: string
  readonly forcePathStyle?: boolean
  readonly redirect?: boolean
  readonly publicEndpoint?: string
  readonly timeout?: string
  readonly localCache?: string | number
}

/** The keys of mirror.config.yml (see lib/config/load.ts), as they are written in the file. */
export interface YamlConfig {
  readonly listen?: string
  readonly storage?: {
    readonly path?: string
    /** A size: bytes as a number, or "100KiB". */
    readonly maxSize?: number | string
    /** A duration: "2d", "300000ms". */
    readonly maxAge?: string
    readonly highWatermark?: number | string
    readonly lowWatermark?: number | string
    readonly evictionInterval?: string
    readonly scrubRate?: number | string
    readonly scrubInterval?: string
    readonly s3?: YamlS3
  }
  readonly upstreams: Readonly<Record<string, YamlUpstream>>
  readonly cache?: { readonly tagTtl?: string, readonly hotEntries?: number }
  readonly log?: { readonly level?: MirrorConfig['log']['level'] }
  readonly metrics?: { readonly enabled?: boolean, readonly listen?: string, readonly token?: string, readonly tokenEnv?: string }
  readonly offline?: boolean
  readonly tls?: { readonly cert?: string, readonly key?: string, readonly clientCA?: string, readonly reloadInterval?: string }
  readonly auth?: YamlAuth
  readonly access?: YamlAccess
  readonly limits?: {
    readonly headersTimeout?: string
    readonly idleTimeout?: string
    readonly maxConnections?: number
    readonly maxConnectionsPerClient?: number
    readonly maxRequestsPerClient?: number
    readonly maxQueuedPerClient?: number
    readonly queueTimeout?: string
    readonly trustedProxies?: readonly string[]
  }
}

export interface YamlAuth {
  readonly htpasswd?: string
  readonly realm?: string
  readonly remember?: string
  readonly tokenTtl?: string
  readonly tokenKeyEnv?: string
  readonly reloadInterval?: string
  readonly anonymousNetworks?: readonly string[]
  readonly maxFailures?: number
  readonly failureWindow?: string
}

export interface YamlAccess {
  readonly default?: 'deny' | 'pull'
  readonly rules?: ReadonlyArray<{ readonly repositories: readonly string[], readonly users: readonly string[], readonly pull: boolean }>
}

export interface YamlUpstream {
  readonly url: string
  readonly default?: boolean
  readonly username?: string
  readonly password?: string
  readonly passwordEnv?: string
  readonly authHosts?: readonly string[]
  readonly maxConcurrentDownloads?: number
  readonly clientCredentials?: 'mirror' | 'passthrough'
  readonly clientAccessTtl?: string
  readonly clientLoginPrefix?: string
  readonly clientLoginRate?: number
  readonly clientLoginConcurrency?: number
  readonly timeouts?: { readonly connect?: string, readonly headers?: string, readonly body?: string }
}

/** Milliseconds as a duration the loader reads back to the same number. */
export function ms (value: number): string {
  return `${value}ms`
}

/** `{ host, port }` as the "host:port" the loader parses. */
export function listenAddress (address: { readonly host: string, readonly port: number }): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`
}

/** Writes `config` as YAML to `dir/name`; returns the file's path. */
export async function writeYamlConfig (dir: string, config: YamlConfig, name = 'mirror.config.yml'): Promise<string> {
  const file = join(dir, name)
  await writeFile(file, stringify(config))
  return file
}

/**
 * The MirrorConfig `loadConfig` makes of `config` written as a file (in a temp
 * dir removed again once it is read). The environment is empty unless given,
 * so MIRROR_* variables of whoever runs the tests cannot change it.
 */
export async function loadYamlConfig (
  config: YamlConfig,
  options: { readonly env?: NodeJS.ProcessEnv, readonly overrides?: ConfigOverrides } = {}
): Promise<MirrorConfig> {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-config-'))
  try {
    const file = await writeYamlConfig(dir, config)
    return await loadConfig({ file, env: options.env ?? {}, overrides: options.overrides })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
