// Starts a real mirror on 127.0.0.1:0 with storage in a temp dir, for tests.
// Its config is written as mirror.config.yml and read by the real loader.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import type { MirrorConfig, UpstreamConfig } from '../../lib/config/types.js'
import { CacheIndex } from '../../lib/db/cache-index.js'
import { createLogger } from '../../lib/log.js'
import { createMirror, type Mirror, type MirrorOptions } from '../../lib/server.js'
import { listenAddress, loadYamlConfig, ms, type YamlAccess, type YamlAuth, type YamlConfig, type YamlS3, type YamlUpstream } from './config.js'

export interface TestMirrorOptions {
  /** registry host -> upstream URL; the first is the default unless `defaultUpstream` says otherwise */
  readonly upstreams: Record<string, string | Partial<UpstreamConfig> & { url: string, clientCredentials?: 'mirror' | 'passthrough', clientAccessTtl?: number, clientLoginPrefix?: string, clientLoginRate?: number, clientLoginConcurrency?: number }>
  readonly defaultUpstream?: string | null
  readonly tagTtl?: number
  readonly storage?: string
  readonly hooks?: MirrorOptions
  /** The background scrub: bytes per second and ms between passes (off in tests unless asked). */
  readonly scrub?: { readonly rate: number | string, readonly interval: number }
  /** What clients may hold (milliseconds for the timeouts). */
  readonly limits?: {
    readonly headersTimeout?: number
    readonly idleTimeout?: number
    readonly maxConnections?: number
    readonly maxConnectionsPerClient?: number
    readonly maxRequestsPerClient?: number
    readonly maxQueuedPerClient?: number
    readonly queueTimeout?: number
    readonly trustedProxies?: readonly string[]
  }
  readonly metrics?: Partial<MirrorConfig['metrics']>
  /** The auth and access sections as written in the file. */
  readonly auth?: YamlAuth
  readonly access?: YamlAccess
  /** PEM file paths; reloadInterval in milliseconds. */
  readonly tls?: { readonly cert: string, readonly key: string, readonly clientCA?: string, readonly reloadInterval?: number }
  /** host:port to listen on; 127.0.0.1:0 when not given. */
  readonly listen?: string
  /** The environment the config is read in (auth.tokenKeyEnv, passwordEnv); empty when not given. */
  readonly env?: NodeJS.ProcessEnv
  /** storage.s3: blobs in a bucket (credentials from the environment, as the SDK reads them). */
  readonly s3?: YamlS3
  /** Eviction bounds; unbounded when not given. */
  readonly eviction?: Partial<Omit<MirrorConfig['storage'], 'path'>>
}

export interface TestMirror extends Mirror {
  readonly storage: string
  /**
   * The data directory's index, opened beside the mirror's own connection (SQLite in WAL mode):
   * what tests assert on, or seed. The mirror's hot LRU does not see rows written here.
   */
  readonly index: CacheIndex
  /** Every log line written, parsed. */
  readonly logs: Array<Record<string, unknown>>
  /** Raw log text, for redaction checks. */
  readonly logText: () => string
}

export interface Teardown { teardown: (fn: () => unknown) => void }

export async function startMirror (t: Teardown, options: TestMirrorOptions): Promise<TestMirror> {
  const storage = options.storage ?? await mkdtemp(join(tmpdir(), 'mirror-test-'))
  const config = await loadYamlConfig(testMirrorYaml(storage, options), { env: options.env })
  const logs: Array<Record<string, unknown>> = []
  let text = ''
  const sink = new Writable({
    write (chunk: Buffer, _enc, cb) {
      const s = chunk.toString()
      text += s
      for (const line of s.split('\n')) {
        if (line.trim() !== '') logs.push(JSON.parse(line) as Record<string, unknown>)
      }
      cb()
    }
  })
  const log = createLogger('debug', sink)
  const mirror = await createMirror(config, log, options.hooks)
  const index = new CacheIndex({ path: join(storage, 'index.db') })
  t.teardown(async () => {
    index.close()
    await mirror.close()
    if (options.storage === undefined) await rm(storage, { recursive: true, force: true })
  })
  return Object.assign(mirror, { storage, index, logs, logText: () => text })
}

/** The options as mirror.config.yml: short timeouts, debug logs, eviction unbounded and hourly unless asked. */
function testMirrorYaml (storage: string, options: TestMirrorOptions): YamlConfig {
  const entries = Object.entries(options.upstreams)
  const defaultName = options.defaultUpstream === null ? undefined : (options.defaultUpstream ?? entries[0]?.[0])
  const upstreams: Record<string, YamlUpstream> = {}
  for (const [name, u] of entries) {
    const spec = typeof u === 'string' ? { url: u } : u
    upstreams[name] = {
      url: spec.url,
      // An explicit true (or false for all, when there is to be none) beats the loader's docker.io / only-one rules.
      default: spec.default ?? (defaultName === undefined ? false : name === defaultName ? true : undefined),
      username: spec.username,
      password: spec.password,
      authHosts: spec.authHosts,
      maxConcurrentDownloads: spec.maxConcurrentDownloads,
      clientCredentials: 'clientCredentials' in spec ? spec.clientCredentials : undefined,
      clientAccessTtl: 'clientAccessTtl' in spec && spec.clientAccessTtl !== undefined ? ms(spec.clientAccessTtl) : undefined,
      clientLoginPrefix: 'clientLoginPrefix' in spec ? spec.clientLoginPrefix : undefined,
      clientLoginRate: 'clientLoginRate' in spec ? spec.clientLoginRate : undefined,
      clientLoginConcurrency: 'clientLoginConcurrency' in spec ? spec.clientLoginConcurrency : undefined,
      timeouts: {
        connect: ms(spec.connectTimeout ?? 2_000),
        headers: ms(spec.headersTimeout ?? 5_000),
        body: ms(spec.bodyTimeout ?? 5_000)
      }
    }
  }
  const eviction = options.eviction ?? {}
  const metrics = options.metrics ?? {}
  return {
    listen: options.listen ?? '127.0.0.1:0',
    storage: {
      path: storage,
      maxSize: eviction.maxSize,
      maxAge: eviction.maxAge === undefined ? undefined : ms(eviction.maxAge),
      highWatermark: eviction.highWatermark ?? 0.9,
      lowWatermark: eviction.lowWatermark ?? 0.8,
      evictionInterval: ms(eviction.evictionInterval ?? 3_600_000),
      scrubRate: options.scrub?.rate,
      scrubInterval: options.scrub === undefined ? undefined : ms(options.scrub.interval),
      s3: options.s3
    },
    upstreams,
    cache: { tagTtl: ms(options.tagTtl ?? 300_000), hotEntries: 1000 },
    log: { level: 'debug' },
    limits: options.limits === undefined
      ? undefined
      : {
          headersTimeout: options.limits.headersTimeout === undefined ? undefined : ms(options.limits.headersTimeout),
          idleTimeout: options.limits.idleTimeout === undefined ? undefined : ms(options.limits.idleTimeout),
          maxConnections: options.limits.maxConnections,
          maxConnectionsPerClient: options.limits.maxConnectionsPerClient,
          maxRequestsPerClient: options.limits.maxRequestsPerClient,
          maxQueuedPerClient: options.limits.maxQueuedPerClient,
          queueTimeout: options.limits.queueTimeout === undefined ? undefined : ms(options.limits.queueTimeout),
          trustedProxies: options.limits.trustedProxies
        },
    auth: options.auth,
    access: options.access,
    tls: options.tls === undefined ? undefined : { ...options.tls, reloadInterval: options.tls.reloadInterval === undefined ? undefined : ms(options.tls.reloadInterval) },
    metrics: {
      enabled: metrics.enabled ?? true,
      listen: metrics.listen === undefined ? undefined : listenAddress(metrics.listen),
      token: metrics.token
    }
  }
}

/** Reads a whole response body, or the error that cut it. */
export async function readBody (res: Response): Promise<{ bytes: Buffer } | { error: Error }> {
  try {
    return { bytes: Buffer.from(await res.arrayBuffer()) }
  } catch (err) {
    return { error: err instanceof Error ? err : new Error(String(err)) }
  }
}
