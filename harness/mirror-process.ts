// registry-mirror as a child process, started the way users start it:
// `node dist/bin/registry-mirror.js serve --config FILE`. It is ready once it
// logs a pino line with "msg":"listening" and the "url" it listens on.

import { writeFile, mkdir, access } from 'node:fs/promises'
import { existsSync, createWriteStream } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Daemon, tailOf } from './process.js'
import { makeTempDir, removeTempDir } from './temp.js'
import type { Mirror, UpstreamEntry } from './mirror-api.js'

/** The checkout this harness runs from: the directory of package.json (dist/ is inside it). */
export function repoRoot (): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('no package.json above ' + fileURLToPath(import.meta.url))
    dir = parent
  }
  return dir
}

/** Calls onLine for every complete line going through, passing the bytes on unchanged. */
class LineWatcher extends Transform {
  #partial = ''
  readonly #onLine: (line: string) => void

  constructor (onLine: (line: string) => void) {
    super()
    this.#onLine = onLine
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const lines = (this.#partial + chunk.toString('utf8')).split('\n')
    this.#partial = lines.pop() ?? ''
    for (const line of lines) this.#onLine(line)
    callback(null, chunk)
  }

  override _flush (callback: TransformCallback): void {
    if (this.#partial !== '') this.#onLine(this.#partial)
    callback()
  }
}

/** The config's tls: section: PEM file paths (the mirror then serves HTTPS only). */
export interface MirrorTls {
  readonly cert: string
  readonly key: string
  /** Require client certificates signed by this CA. */
  readonly clientCA?: string
}

/** The config's auth: section: clients log in with users from an htpasswd file (bcrypt). */
export interface MirrorAuth {
  readonly htpasswd: string
  /** Failed logins per client address per failureWindow before it gets 429 (the mirror's default: 10). */
  readonly maxFailures?: number
}

/** One of access.rules: the first whose repository pattern and user match decides. */
export interface MirrorAccessRule {
  /** Upstream-first patterns: docker.io/library/*, ghcr.io/org/** */
  readonly repositories: readonly string[]
  /** htpasswd names, "anonymous", or "*" for any user who logged in. */
  readonly users: readonly string[]
  readonly pull: boolean
}

/** The config's access: section. */
export interface MirrorAccess {
  readonly rules: readonly MirrorAccessRule[]
  readonly default?: 'deny' | 'pull'
}

/**
 * The config's storage.s3 section: blobs, manifests and repository links in a
 * bucket (storage.path keeps the index and staging). The credentials are not
 * written to the config, which has no key for them: they go into the mirror's
 * environment, where the AWS SDK's default chain reads them.
 */
export interface MirrorS3 {
  readonly endpoint: string
  readonly bucket: string
  readonly region?: string
  readonly prefix?: string
  readonly forcePathStyle?: boolean
  /** Cached blob GETs answered with a 307 to a presigned URL of the store. */
  readonly redirect?: boolean
  /** storage.s3.timeout, e.g. "3s". */
  readonly timeout?: string
  readonly credentials: { readonly accessKeyId: string, readonly secretAccessKey: string }
}

export interface MirrorProcessOptions {
  readonly upstreams: readonly UpstreamEntry[]
  readonly tagTtl?: string
  readonly tls?: MirrorTls
  /** Client authentication; metrics are then turned off (on the main listener they would need a token) unless metricsToken is given. */
  readonly auth?: MirrorAuth
  /** metrics.token: /metrics and the status page then need `Authorization: Bearer <token>` (a browser signs in with it). */
  readonly metricsToken?: string
  readonly access?: MirrorAccess
  /** The address to listen on (default 127.0.0.1); the port is the system's choice. */
  readonly address?: string
  /** limits.trustedProxies: the balancers (CIDR) whose X-Forwarded-For the mirror believes. */
  readonly trustedProxies?: readonly string[]
  readonly s3?: MirrorS3
  /** More environment variables for the node (MALLOC_MMAP_THRESHOLD_, as `npm start` sets it). */
  readonly env?: Readonly<Record<string, string>>
  /** Another build's bin/registry-mirror.js (default: this checkout's dist/). */
  readonly entryPoint?: string
  readonly startTimeoutMs?: number
}

/** `node dist/bin/registry-mirror.js serve --config FILE`, ready once it logs "listening". */
export class MirrorProcess implements Mirror {
  readonly dir: string
  readonly registries: readonly string[]
  #daemon: Daemon | undefined
  #url = ''

  private constructor (dir: string, registries: readonly string[]) {
    this.dir = dir
    this.registries = registries
  }

  static get entryPoint (): string {
    return join(repoRoot(), 'dist', 'bin', 'registry-mirror.js')
  }

  static async start (options: MirrorProcessOptions): Promise<MirrorProcess> {
    const entry = options.entryPoint ?? MirrorProcess.entryPoint
    try {
      await access(entry)
    } catch {
      throw new Error(`${entry} does not exist: build the mirror first (npm run build)`)
    }
    const mirror = new MirrorProcess(await makeTempDir('mirror'), options.upstreams.map(upstream => upstream.name))
    try {
      await mirror.#start(entry, options)
    } catch (err) {
      await mirror.close()
      throw err
    }
    return mirror
  }

  get url (): string { return this.#url }
  /** 127.0.0.1:PORT, whether the url is http:// or https:// */
  get host (): string { return this.#url.replace(/^https?:\/\//, '') }
  get configPath (): string { return join(this.dir, 'mirror.config.yml') }
  get logPath (): string { return join(this.dir, 'mirror.log') }
  get stderrPath (): string { return join(this.dir, 'mirror.stderr.log') }
  get files (): { data: string, logs: string[] } { return { data: join(this.dir, 'data'), logs: [this.logPath, this.stderrPath] } }

  locationFor (registry: string): string {
    return `${this.host}/${registry}`
  }

  async #start (entry: string, options: MirrorProcessOptions): Promise<void> {
    await mkdir(join(this.dir, 'data'))
    const lines = [`listen: ${options.address ?? '127.0.0.1'}:0`, 'storage:', `  path: ${join(this.dir, 'data')}`]
    const s3 = options.s3
    if (s3 !== undefined) {
      lines.push('  s3:', `    endpoint: ${s3.endpoint}`, `    bucket: ${s3.bucket}`)
      if (s3.region !== undefined) lines.push(`    region: ${s3.region}`)
      if (s3.prefix !== undefined) lines.push(`    prefix: ${JSON.stringify(s3.prefix)}`)
      if (s3.forcePathStyle !== undefined) lines.push(`    forcePathStyle: ${String(s3.forcePathStyle)}`)
      if (s3.redirect !== undefined) lines.push(`    redirect: ${String(s3.redirect)}`)
      if (s3.timeout !== undefined) lines.push(`    timeout: ${s3.timeout}`)
    }
    lines.push('upstreams:')
    for (const upstream of options.upstreams) {
      lines.push(`  ${upstream.name}:`, `    url: ${upstream.url}`)
      if (upstream.default === true) lines.push('    default: true')
    }
    lines.push('cache:', `  tagTtl: ${options.tagTtl ?? '5m'}`)
    if (options.trustedProxies !== undefined) lines.push('limits:', `  trustedProxies: ${JSON.stringify(options.trustedProxies)}`)
    if (options.tls !== undefined) {
      lines.push('tls:', `  cert: ${options.tls.cert}`, `  key: ${options.tls.key}`)
      if (options.tls.clientCA !== undefined) lines.push(`  clientCA: ${options.tls.clientCA}`)
    }
    // JSON is YAML: patterns such as docker.io/library/* need quoting there anyway.
    if (options.auth !== undefined) {
      lines.push('auth:', `  htpasswd: ${JSON.stringify(options.auth.htpasswd)}`)
      if (options.auth.maxFailures !== undefined) lines.push(`  maxFailures: ${options.auth.maxFailures}`)
      if (options.metricsToken === undefined) lines.push('metrics:', '  enabled: false')
    }
    if (options.metricsToken !== undefined) lines.push('metrics:', `  token: ${JSON.stringify(options.metricsToken)}`)
    if (options.access !== undefined) {
      lines.push('access:', '  rules:')
      for (const rule of options.access.rules) lines.push(`    - ${JSON.stringify(rule)}`)
      if (options.access.default !== undefined) lines.push(`  default: ${options.access.default}`)
    }
    await writeFile(this.configPath, lines.join('\n') + '\n')

    // The SDK's default chain reads the keys from the environment; nothing else of the caller's AWS setup counts.
    const env = s3 === undefined
      ? options.env === undefined ? undefined : { ...process.env, ...options.env }
      : { ...withoutAws(process.env), ...options.env, AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey }
    const { daemon, url } = await startMirrorDaemon({
      name: 'registry-mirror',
      entry,
      env,
      configPath: this.configPath,
      cwd: this.dir,
      logPath: this.logPath,
      stderrPath: this.stderrPath,
      timeoutMs: options.startTimeoutMs ?? 30_000,
      tail: () => this.tail()
    })
    this.#daemon = daemon
    this.#url = url
  }

  get running (): boolean { return this.#daemon?.running === true }
  /** The node process's pid (its VmRSS, say); undefined before it started. */
  get pid (): number | undefined { return this.#daemon?.child.pid }

  /** SIGKILL, as a crash or a pulled plug would stop it: no draining. Its dir and logs stay until close(). */
  async kill (): Promise<void> {
    await this.#daemon?.kill()
  }

  async close (): Promise<void> {
    await this.#daemon?.stop()
    await removeTempDir(this.dir)
  }

  tail (lines = 60): string {
    return [
      `--- mirror stdout: ${this.logPath}\n${tailOf(this.logPath, lines)}`,
      `--- mirror stderr: ${this.stderrPath}\n${tailOf(this.stderrPath, lines)}`
    ].join('\n')
  }
}

/** The "listening" line's url field, from a pino JSON line. */
export function listeningUrl (line: string): string | undefined {
  if (!line.startsWith('{')) return undefined
  let parsed: unknown
  try {
    parsed = JSON.parse(line)
  } catch {
    return undefined
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined
  const record = parsed as Record<string, unknown>
  return record.msg === 'listening' && typeof record.url === 'string' ? record.url.replace(/\/$/, '') : undefined
}

/** The environment less every AWS_* variable: the credentials, profile and region the caller's shell may set. */
function withoutAws (env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([key]) => !key.startsWith('AWS_')))
}

export interface MirrorDaemonOptions {
  /** Names the daemon in messages. */
  readonly name: string
  /** bin/registry-mirror.js of the build to run. */
  readonly entry: string
  readonly configPath: string
  readonly cwd: string
  /** Its environment (default: this process's). */
  readonly env?: NodeJS.ProcessEnv | undefined
  /** Where its stdout is copied, line by line as it is watched. */
  readonly logPath: string
  readonly stderrPath: string
  readonly timeoutMs: number
  /** Shown when it does not start: its logs, say. */
  readonly tail: () => string
}

/**
 * `node ENTRY serve --config FILE`, ready once it logs "listening": resolves with the
 * daemon and the URL it logged. A mirror that exits or stays silent is stopped and rejected.
 */
export async function startMirrorDaemon (options: MirrorDaemonOptions): Promise<{ daemon: Daemon, url: string }> {
  const daemon = new Daemon(options.name, process.execPath, [options.entry, 'serve', '--config', options.configPath], {
    cwd: options.cwd,
    env: options.env,
    logPath: options.logPath,
    stderrPath: options.stderrPath,
    pipeStdout: true
  })
  const stdout = daemon.child.stdout
  try {
    if (stdout === null) throw new Error('no stdout pipe to the mirror')
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the mirror did not log "listening" within ${options.timeoutMs} ms\n${options.tail()}`)), options.timeoutMs)
      const watcher = new LineWatcher(line => {
        const url = listeningUrl(line)
        if (url === undefined) return
        clearTimeout(timer)
        resolve(url)
      })
      pipeline(stdout, watcher, createWriteStream(options.logPath)).catch(() => {})
      void daemon.exited.then(code => {
        clearTimeout(timer)
        reject(new Error(`the mirror exited with ${String(code)} before listening\n${options.tail()}`))
      })
    })
    return { daemon, url }
  } catch (err) {
    await daemon.stop()
    throw err
  }
}
