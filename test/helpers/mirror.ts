// Starts a real mirror on 127.0.0.1:0 with storage in a temp dir, for tests.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import type { MirrorConfig, UpstreamConfig } from '../../lib/config/types.js'
import { createLogger } from '../../lib/log.js'
import { createMirror, type Mirror, type MirrorOptions } from '../../lib/server.js'

export interface TestMirrorOptions {
  /** registry host -> upstream URL; the first is the default unless `defaultUpstream` says otherwise */
  readonly upstreams: Record<string, string | Partial<UpstreamConfig> & { url: string }>
  readonly defaultUpstream?: string | null
  readonly tagTtl?: number
  readonly storage?: string
  readonly hooks?: MirrorOptions
  readonly metrics?: Partial<MirrorConfig['metrics']>
  /** Eviction bounds; unbounded when not given. */
  readonly eviction?: Partial<Omit<MirrorConfig['storage'], 'path'>>
}

export interface TestMirror extends Mirror {
  readonly storage: string
  /** Every log line written, parsed. */
  readonly logs: Array<Record<string, unknown>>
  /** Raw log text, for redaction checks. */
  readonly logText: () => string
}

export interface Teardown { teardown: (fn: () => unknown) => void }

export async function startMirror (t: Teardown, options: TestMirrorOptions): Promise<TestMirror> {
  const storage = options.storage ?? await mkdtemp(join(tmpdir(), 'mirror-test-'))
  const entries = Object.entries(options.upstreams)
  const defaultName = options.defaultUpstream === null ? undefined : (options.defaultUpstream ?? entries[0]?.[0])
  const upstreams = new Map<string, UpstreamConfig>()
  for (const [name, u] of entries) {
    const spec = typeof u === 'string' ? { url: u } : u
    upstreams.set(name, {
      name,
      default: name === defaultName,
      connectTimeout: 2_000,
      headersTimeout: 5_000,
      bodyTimeout: 5_000,
      ...spec
    })
  }
  const config: MirrorConfig = {
    listen: { host: '127.0.0.1', port: 0 },
    storage: {
      path: storage,
      maxSize: undefined,
      maxAge: undefined,
      highWatermark: 0.9,
      lowWatermark: 0.8,
      evictionInterval: 3_600_000,
      ...options.eviction
    },
    upstreams,
    cache: { tagTtl: options.tagTtl ?? 300_000, hotEntries: 1000 },
    log: { level: 'debug' },
    metrics: { enabled: true, listen: undefined, token: undefined, ...options.metrics }
  }
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
  t.teardown(async () => {
    await mirror.close()
    if (options.storage === undefined) await rm(storage, { recursive: true, force: true })
  })
  return Object.assign(mirror, { storage, logs, logText: () => text })
}

/** Reads a whole response body, or the error that cut it. */
export async function readBody (res: Response): Promise<{ bytes: Buffer } | { error: Error }> {
  try {
    return { bytes: Buffer.from(await res.arrayBuffer()) }
  } catch (err) {
    return { error: err instanceof Error ? err : new Error(String(err)) }
  }
}
