// The servers the benchmark starts besides the reference registries of the
// e2e harness: registry-mirror itself, and nginx serving a file with sendfile
// (the machine's ceiling for warm blobs). registry-mirror's stdout goes
// straight to a file rather than through this process, so the bench, which
// shares two cores with the servers, never handles their log lines.

import { readFile, readdir, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon } from '../harness/process.js'
import { listeningUrl, MirrorProcess } from '../harness/mirror-process.js'
import { freePort } from '../harness/ports.js'
import { waitFor, WaitAborted } from '../harness/wait.js'

export interface RegistryMirrorOptions {
  /** An empty directory of its own: config, logs, data. */
  readonly dir: string
  /** The default upstream (named docker.io, so requests naming no registry go there). */
  readonly upstreamUrl: string
  readonly tagTtl: string
  /** Runs node with --cpu-prof, writing the profile here on exit. */
  readonly cpuProfDir?: string | undefined
  /** Another build's bin/registry-mirror.js (a patched copy, to try a fix); default: this repository's dist/. */
  readonly entryPoint?: string | undefined
  /** Lines under `storage:` beyond its path (a bucket, say), each indented two spaces. */
  readonly storageYaml?: readonly string[] | undefined
  /** Environment variables beyond the bench's own (a bucket's credentials). */
  readonly env?: Readonly<Record<string, string>> | undefined
}

/** `node dist/bin/registry-mirror.js serve --config FILE`, ready once it logs "listening". */
export class RegistryMirrorServer {
  readonly dir: string
  readonly #daemon: Daemon
  #url = ''

  private constructor (dir: string, daemon: Daemon) {
    this.dir = dir
    this.#daemon = daemon
  }

  /** Writes `dir`/mirror.config.yml (start does it too), for commands run on the data directory. */
  static async writeConfig (options: Omit<RegistryMirrorOptions, 'cpuProfDir' | 'entryPoint' | 'env'>): Promise<string> {
    const { dir } = options
    await mkdir(join(dir, 'data'), { recursive: true })
    const configPath = join(dir, 'mirror.config.yml')
    await writeFile(configPath, [
      'listen: 127.0.0.1:0',
      'storage:',
      `  path: ${join(dir, 'data')}`,
      ...(options.storageYaml ?? []).map(line => `  ${line}`),
      'upstreams:',
      '  docker.io:',
      `    url: ${options.upstreamUrl}`,
      '    default: true',
      'cache:',
      `  tagTtl: ${options.tagTtl}`,
      'log:',
      '  level: info',
      // Every bench connection comes from 127.0.0.1: the per-client caps (128 requests, 256
      // connections) would turn the 200-connection and 1,000-reader workloads into 429s and
      // refused connections.
      'limits:',
      '  maxRequestsPerClient: 4096',
      '  maxConnectionsPerClient: 4096',
      ''
    ].join('\n'))
    return configPath
  }

  static async start (options: RegistryMirrorOptions): Promise<RegistryMirrorServer> {
    const { dir } = options
    const configPath = await RegistryMirrorServer.writeConfig(options)
    const env = { ...process.env, ...options.env }
    // The file says everything; overrides from the caller's shell would change what is measured.
    for (const key of ['MIRROR_LISTEN', 'MIRROR_STORAGE_PATH', 'MIRROR_LOG_LEVEL']) delete env[key]
    // As `npm start` and the image run it (README, Memory).
    env.MALLOC_MMAP_THRESHOLD_ = '131072'
    const profile = options.cpuProfDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', options.cpuProfDir]
    const daemon = new Daemon('registry-mirror', process.execPath, [...profile, options.entryPoint ?? MirrorProcess.entryPoint, 'serve', '--config', configPath], {
      cwd: dir,
      env,
      logPath: join(dir, 'mirror.log'),
      stderrPath: join(dir, 'mirror.stderr.log')
    })
    const server = new RegistryMirrorServer(dir, daemon)
    try {
      await waitFor('registry-mirror to log "listening"', async () => {
        if (!daemon.running) throw new WaitAborted('registry-mirror exited')
        const url = (await readFile(daemon.logPath, 'utf8').catch(() => '')).split('\n').map(listeningUrl).find(u => u !== undefined)
        if (url === undefined) return false
        server.#url = url
        return true
      }, { timeoutMs: 30_000, intervalMs: 50, describe: () => daemon.tail() })
    } catch (err) {
      await daemon.stop()
      throw err
    }
    return server
  }

  get url (): string { return this.#url }
  get host (): string { return this.#url.replace(/^http:\/\//, '') }
  get pid (): number { return pidOf(this.#daemon) }

  /** SIGTERM, so that the mirror closes cleanly (and --cpu-prof writes its profile). */
  async stop (): Promise<void> {
    await this.#daemon.stop(30_000)
  }

  tail (): string {
    return this.#daemon.tail()
  }
}

/** nginx serving one directory, sendfile on, no access log: what this machine can push to a client. */
export class NginxServer {
  readonly url: string
  readonly #daemon: Daemon

  private constructor (url: string, daemon: Daemon) {
    this.url = url
    this.#daemon = daemon
  }

  static async start (dir: string, root: string): Promise<NginxServer> {
    await mkdir(join(dir, 'tmp'), { recursive: true })
    const port = await freePort()
    const temp = join(dir, 'tmp')
    const conf = join(dir, 'nginx.conf')
    // As root, the workers would switch to nobody and could not read a file in a 0700 temp dir.
    const user = process.getuid?.() === 0 ? ['user root;'] : []
    await writeFile(conf, [
      ...user,
      'worker_processes auto;',
      'daemon off;',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'error.log')} warn;`,
      'events { worker_connections 1024; }',
      'http {',
      '  access_log off;',
      '  sendfile on;',
      '  tcp_nopush on;',
      '  keepalive_requests 100000;',
      ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(kind => `  ${kind}_temp_path ${temp};`),
      `  server { listen 127.0.0.1:${port}; root ${root}; }`,
      '}',
      ''
    ].join('\n'))
    const daemon = new Daemon('nginx', 'nginx', ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], { logPath: join(dir, 'nginx.log') })
    const url = `http://127.0.0.1:${port}`
    try {
      await waitFor(`nginx to answer on ${url}`, async () => {
        if (!daemon.running) throw new WaitAborted('nginx exited')
        const response = await fetch(`${url}/`)
        await response.arrayBuffer()
        return true
      }, { timeoutMs: 15_000, intervalMs: 50, describe: () => daemon.tail() })
    } catch (err) {
      await daemon.stop()
      throw err
    }
    return new NginxServer(url, daemon)
  }

  async stop (): Promise<void> {
    await this.#daemon.stop()
  }
}

/**
 * nginx as a caching proxy of the upstream, the way nginx-based registry caches mirror today
 * (docker-registry-proxy): blobs cached on disk under their digest, `proxy_cache_lock` so that
 * clients asking for a blob being fetched wait for it instead of fetching it again (for up to
 * 880 s, as docker-registry-proxy sets it), manifests and the rest passed through uncached.
 */
export class NginxCacheServer {
  readonly url: string
  readonly host: string
  readonly #daemon: Daemon

  private constructor (url: string, daemon: Daemon) {
    this.url = url
    this.host = url.replace(/^http:\/\//, '')
    this.#daemon = daemon
  }

  static async start (dir: string, upstreamUrl: string): Promise<NginxCacheServer> {
    await mkdir(join(dir, 'tmp'), { recursive: true })
    await mkdir(join(dir, 'cache'), { recursive: true })
    const port = await freePort()
    const temp = join(dir, 'tmp')
    const conf = join(dir, 'nginx.conf')
    const user = process.getuid?.() === 0 ? ['user root;'] : []
    await writeFile(conf, [
      ...user,
      'worker_processes auto;',
      'daemon off;',
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${join(dir, 'error.log')} warn;`,
      'events { worker_connections 1024; }',
      'http {',
      '  access_log off;',
      '  sendfile on;',
      '  tcp_nopush on;',
      '  keepalive_requests 100000;',
      ...['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map(kind => `  ${kind}_temp_path ${temp};`),
      `  proxy_cache_path ${join(dir, 'cache')} levels=1:2 keys_zone=blobs:10m inactive=60d max_size=32g use_temp_path=off;`,
      // Regexes with braces are quoted, or nginx reads the brace as a block.
      '  map $uri $blob_digest { "~/blobs/(?<digest>sha256:[a-f0-9]{64})$" $digest; default ""; }',
      '  proxy_http_version 1.1;',
      '  proxy_read_timeout 900;',
      '  server {',
      `    listen 127.0.0.1:${port};`,
      '    location ~ "^/v2/.+/blobs/sha256:[a-f0-9]{64}$" {',
      `      proxy_pass ${upstreamUrl};`,
      '      proxy_cache blobs;',
      '      proxy_cache_key $blob_digest;',
      '      proxy_cache_valid 200 60d;',
      '      proxy_cache_lock on;',
      '      proxy_cache_lock_timeout 880s;',
      '      proxy_cache_lock_age 880s;',
      '    }',
      `    location / { proxy_pass ${upstreamUrl}; }`,
      '  }',
      '}',
      ''
    ].join('\n'))
    const daemon = new Daemon('nginx proxy_cache', 'nginx', ['-p', dir, '-c', conf, '-e', join(dir, 'error.log')], { logPath: join(dir, 'nginx.log') })
    const url = `http://127.0.0.1:${port}`
    try {
      await waitFor(`nginx to answer on ${url}`, async () => {
        if (!daemon.running) throw new WaitAborted('nginx exited')
        const response = await fetch(`${url}/v2/`)
        await response.arrayBuffer()
        return true
      }, { timeoutMs: 15_000, intervalMs: 50, describe: () => daemon.tail() })
    } catch (err) {
      await daemon.stop()
      throw err
    }
    return new NginxCacheServer(url, daemon)
  }

  /** The master's pid: its workers are its children (peakRss counts the tree). */
  get pid (): number { return pidOf(this.#daemon) }

  async stop (): Promise<void> {
    await this.#daemon.stop()
  }
}

function pidOf (daemon: Daemon): number {
  const pid = daemon.child.pid
  if (pid === undefined) throw new Error(`${daemon.name} has no pid`)
  return pid
}

/** The pid of the process whose command line is exactly args (the harness keeps its daemons private). */
export async function findProcess (args: readonly string[]): Promise<number> {
  const wanted = args.join('\0')
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')
    if (cmdline.replace(/\0$/, '') === wanted) return Number(entry)
  }
  throw new Error(`no process runs ${args.join(' ')}`)
}
