// A fleet of registry-mirror nodes behind a consistent-hash balancer (issue
// 17): N mirror child processes, each with its own data dir and the same
// upstreams, believing the balancer's X-Forwarded-For (limits.trustedProxies
// 127.0.0.1/32), and nginx or HAProxy in front of them running the config the
// project ships, deploy/nginx/registry-mirror.conf or
// deploy/haproxy/registry-mirror.cfg. The shipped file is read as it is and
// only its example server lines, its listen (bind) line and its log path are
// replaced, so a test of the fleet is a test of that file; a file whose shape
// changed so that these lines cannot be found fails loudly rather than being
// half used.
//
// With s3, every node has storage.s3 on one bucket (the credentials in its
// environment, as the SDK's default chain reads them) and still its own
// storage.path for the index and staging: the fleet of issue 17 sharing an
// S3-compatible store.
//
// Nodes can be killed (SIGKILL, left in the balancer's list, as a crashed
// host would be) and added (the config rewritten and reloaded: SIGHUP to
// nginx's master, SIGUSR2 to HAProxy's). Each node's request log lines (the
// mirror's "request" lines: method, path, client, status, cache) say which
// node served what.

import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { Daemon, run } from './process.js'
import { MirrorProcess, repoRoot, type MirrorS3 } from './mirror-process.js'
import type { UpstreamEntry } from './mirror-api.js'
import { freePort } from './ports.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { waitFor, WaitAborted } from './wait.js'

export type BalancerKind = 'nginx' | 'haproxy'

/** The shipped balancer configs, relative to the repository root. */
export const shippedConfigs: Readonly<Record<BalancerKind, string>> = {
  nginx: 'deploy/nginx/registry-mirror.conf',
  haproxy: 'deploy/haproxy/registry-mirror.cfg'
}

/** One "request" line of a node's log. */
export interface NodeRequest {
  /** node1, node2, ... */
  readonly node: string
  readonly method: string
  /** With the query string, as the mirror logs it. */
  readonly path: string
  /** Who the mirror took the client to be. */
  readonly client: string
  readonly status: number
  readonly cache: string | undefined
}

const FLUSH = 'e2e-flush-'

function requestLine (node: string, line: string): NodeRequest | undefined {
  if (!line.startsWith('{')) return undefined
  let parsed: unknown
  try {
    parsed = JSON.parse(line)
  } catch {
    return undefined
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined
  const r = parsed as Record<string, unknown>
  if (r.msg !== 'request' || typeof r.method !== 'string' || typeof r.path !== 'string' || typeof r.status !== 'number') return undefined
  return {
    node,
    method: r.method,
    path: r.path,
    client: typeof r.client === 'string' ? r.client : '',
    status: r.status,
    cache: typeof r.cache === 'string' ? r.cache : undefined
  }
}

export class FleetNode {
  readonly name: string
  readonly mirror: MirrorProcess
  #flushes = 0

  constructor (name: string, mirror: MirrorProcess) {
    this.name = name
    this.mirror = mirror
  }

  /** 127.0.0.1:PORT, as the balancer lists it. */
  get host (): string { return this.mirror.host }
  get url (): string { return this.mirror.url }
  get running (): boolean { return this.mirror.running }
  /** Its storage.path: index.db and staging (tmp/), and blobs/ when it has no bucket. */
  get dataDir (): string { return this.mirror.files.data }

  /**
   * The digests of the blob rows in the node's index, read from index.db
   * beside the running node (SQLite in WAL mode lets a reader in). With
   * storage.s3, a row is written only once the bucket has the blob.
   */
  indexedBlobs (): string[] {
    const db = new Database(join(this.dataDir, 'index.db'), { readonly: true, fileMustExist: true })
    try {
      return db.prepare('SELECT digest FROM blobs ORDER BY digest').pluck().all().filter((d): d is string => typeof d === 'string')
    } finally {
      db.close()
    }
  }

  /** As a crash would stop it; the balancer still lists it. */
  async kill (): Promise<void> {
    await this.mirror.kill()
  }

  /**
   * Every request the node logged, oldest first, its own flush probes left out.
   * A line is written once its response closes, so a running node is first
   * asked for a marker (directly, not through the balancer) and its log
   * awaited: every response closed before the marker is logged before it.
   */
  async requests (): Promise<NodeRequest[]> {
    if (this.running) {
      const marker = `${FLUSH}${++this.#flushes}`
      const response = await fetch(`${this.url}/v2/?n=${marker}`)
      await response.arrayBuffer()
      await waitFor(`${this.name}'s request log`, async () => (await readFile(this.mirror.logPath, 'utf8')).includes(marker), { timeoutMs: 5000, intervalMs: 20 })
    }
    const text = await readFile(this.mirror.logPath, 'utf8').catch(() => '')
    return text.split('\n')
      .map(line => requestLine(this.name, line))
      .filter((r): r is NodeRequest => r !== undefined && !r.path.includes(FLUSH))
  }
}

export interface FleetOptions {
  readonly balancer: BalancerKind
  /** Mirror nodes to start with. */
  readonly nodes: number
  readonly upstreams: readonly UpstreamEntry[]
  /** The mirrors' cache.tagTtl (default 5m: a tag is not asked upstream again during a test). */
  readonly tagTtl?: string
  /** storage.s3 of every node: the bucket the fleet shares, and the credentials put in each node's environment. */
  readonly s3?: MirrorS3
  /** More environment variables for every node. */
  readonly env?: Readonly<Record<string, string>>
  /** Another build's bin/registry-mirror.js for every node (default: this checkout's dist/). */
  readonly entryPoint?: string
}

/** Positions in each node's request log, for Fleet.requestsSince(). */
export type FleetMark = ReadonlyMap<string, number>

export class Fleet {
  readonly balancer: Balancer
  readonly #nodes: FleetNode[]
  readonly #options: FleetOptions

  private constructor (balancer: Balancer, nodes: FleetNode[], options: FleetOptions) {
    this.balancer = balancer
    this.#nodes = nodes
    this.#options = options
  }

  static async start (options: FleetOptions): Promise<Fleet> {
    const nodes: FleetNode[] = []
    try {
      const started = await Promise.allSettled(Array.from({ length: options.nodes }, async (_, i) => new FleetNode(`node${i + 1}`, await startNode(options))))
      for (const result of started) if (result.status === 'fulfilled') nodes.push(result.value)
      const failed = started.find((result): result is PromiseRejectedResult => result.status === 'rejected')
      if (failed !== undefined) throw failed.reason
      const balancer = await startBalancer(options.balancer, nodes.map(node => node.host))
      return new Fleet(balancer, nodes, options)
    } catch (err) {
      await Promise.all(nodes.map(async node => await node.mirror.close()))
      throw err
    }
  }

  /** http://127.0.0.1:PORT of the balancer: where clients go. */
  get url (): string { return this.balancer.url }
  /** 127.0.0.1:PORT of the balancer. */
  get host (): string { return `127.0.0.1:${this.balancer.port}` }
  get nodes (): readonly FleetNode[] { return this.#nodes }

  node (name: string): FleetNode {
    const found = this.#nodes.find(node => node.name === name)
    if (found === undefined) throw new Error(`no node ${name} in the fleet (${this.#nodes.map(node => node.name).join(', ')})`)
    return found
  }

  /** Starts one more mirror (with the fleet's options, or these in their place) and lists it in the balancer's config, reloaded. */
  async addNode (overrides: Pick<FleetOptions, 's3'> = {}): Promise<FleetNode> {
    const node = new FleetNode(`node${this.#nodes.length + 1}`, await startNode({ ...this.#options, ...overrides }))
    this.#nodes.push(node)
    await this.balancer.setNodes(this.#nodes.map(n => n.host))
    return node
  }

  async mark (): Promise<FleetMark> {
    const marks = new Map<string, number>()
    for (const node of this.#nodes) marks.set(node.name, (await node.requests()).length)
    return marks
  }

  /** Every node's request lines since the marks (all of a node added since), node by node. */
  async requestsSince (marks: FleetMark = new Map()): Promise<NodeRequest[]> {
    const seen: NodeRequest[] = []
    for (const node of this.#nodes) seen.push(...(await node.requests()).slice(marks.get(node.name) ?? 0))
    return seen
  }

  async close (): Promise<void> {
    await this.balancer.close()
    await Promise.all(this.#nodes.map(async node => await node.mirror.close()))
  }

  /** The balancer's config and logs and every node's, for a failure message. */
  diagnostics (): string {
    return [this.balancer.tail(), ...this.#nodes.map(node => `=== ${node.name} (${node.host}, ${node.running ? 'running' : 'killed'})\n${node.mirror.tail(30)}`)].join('\n')
  }
}

async function startNode (options: FleetOptions): Promise<MirrorProcess> {
  // The balancer connects from 127.0.0.1; its X-Forwarded-For names the client.
  return await MirrorProcess.start({ upstreams: options.upstreams, tagTtl: options.tagTtl ?? '5m', trustedProxies: ['127.0.0.1/32'], s3: options.s3, env: options.env, entryPoint: options.entryPoint })
}

/**
 * The shipped balancer config in front of any servers (host:port) that speak
 * the registry API: a fleet's nodes, or the reference registry's proxies the
 * bench compares them with.
 */
export async function startBalancer (kind: BalancerKind, hosts: readonly string[]): Promise<Balancer> {
  return kind === 'nginx' ? await NginxBalancer.start(hosts) : await HaproxyBalancer.start(hosts)
}

/** The balancer in front of the fleet. */
export interface Balancer {
  readonly kind: BalancerKind
  readonly port: number
  readonly url: string
  /** The shipped config as this balancer runs it. */
  readonly configPath: string
  /** Lists exactly these nodes (host:port) and reloads; resolves once the old worker processes are gone. */
  setNodes: (hosts: readonly string[]) => Promise<void>
  tail: () => string
  close: () => Promise<void>
}

function shippedConfig (kind: BalancerKind): string {
  return readFileSync(join(repoRoot(), shippedConfigs[kind]), 'utf8')
}

class ShapeError extends Error {
  constructor (kind: BalancerKind, what: string) {
    super(`${shippedConfigs[kind]}: ${what}; harness/fleet.ts replaces it to run the file in a test, so keep that line's shape or change the harness with it`)
    this.name = 'ShapeError'
  }
}

/**
 * The shipped nginx config with the test's nodes in place of the example
 * server lines (their parameters kept), the test's listen address in place of
 * the listen line, and the access log in the test's dir.
 */
export function renderNginxConfig (shipped: string, options: { readonly nodes: readonly string[], readonly listen: string, readonly accessLog: string }): string {
  const lines = shipped.split('\n')
  const serverLine = /^(\s*)server\s+10\.0\.0\.\d+:5000((?:\s+[^;\s]+)*)\s*;\s*$/
  const servers = lines.flatMap((line, i) => serverLine.test(line) ? [i] : [])
  const first = servers[0]
  if (first === undefined) throw new ShapeError('nginx', 'no example server line (server 10.0.0.N:5000 ...;) in the upstream block')
  if (servers.some((index, k) => index !== first + k)) throw new ShapeError('nginx', 'the example server lines are not one run of lines')
  const [, indent = '', parameters = ''] = serverLine.exec(lines[first] ?? '') ?? []
  const listens = lines.flatMap((line, i) => /^\s*listen\s+[^;]+;\s*$/.test(line) ? [i] : [])
  if (listens.length !== 1) throw new ShapeError('nginx', `${listens.length} listen lines where the harness expects one (the TLS one commented out)`)
  const logs = lines.flatMap((line, i) => /^\s*access_log\s+\S+\s+registry_mirror\s*;\s*$/.test(line) ? [i] : [])
  if (logs.length !== 1) throw new ShapeError('nginx', `${logs.length} "access_log PATH registry_mirror;" lines where the harness expects one`)
  const out: string[] = []
  for (const [i, line] of lines.entries()) {
    if (i === first) {
      for (const node of options.nodes) out.push(`${indent}server ${node}${parameters};`)
    } else if (servers.includes(i)) {
      continue
    } else if (listens.includes(i)) {
      out.push(line.replace(/listen\s+[^;]+;/, `listen ${options.listen};`))
    } else if (logs.includes(i)) {
      out.push(line.replace(/access_log\s+\S+/, `access_log ${options.accessLog}`))
    } else {
      out.push(line)
    }
  }
  return out.join('\n')
}

/** The shipped HAProxy config with the test's nodes (node1.., ids 1..) and bind address. */
export function renderHaproxyConfig (shipped: string, options: { readonly nodes: readonly string[], readonly bind: string }): string {
  const lines = shipped.split('\n')
  const serverLine = /^(\s*)server\s+\S+\s+10\.0\.0\.\d+:5000\s+id\s+\d+(.*)$/
  const servers = lines.flatMap((line, i) => serverLine.test(line) ? [i] : [])
  const first = servers[0]
  if (first === undefined) throw new ShapeError('haproxy', 'no example server line (server NAME 10.0.0.N:5000 id N ...) in the backend')
  if (servers.some((index, k) => index !== first + k)) throw new ShapeError('haproxy', 'the example server lines are not one run of lines')
  const [, indent = '', rest = ''] = serverLine.exec(lines[first] ?? '') ?? []
  const binds = lines.flatMap((line, i) => /^\s*bind\s+\S+\s*$/.test(line) ? [i] : [])
  if (binds.length !== 1) throw new ShapeError('haproxy', `${binds.length} plain bind lines where the harness expects one (the TLS one commented out)`)
  const out: string[] = []
  for (const [i, line] of lines.entries()) {
    if (i === first) {
      for (const [k, node] of options.nodes.entries()) out.push(`${indent}server node${k + 1} ${node} id ${k + 1}${rest}`)
    } else if (servers.includes(i)) {
      continue
    } else if (binds.includes(i)) {
      out.push(line.replace(/bind\s+\S+/, `bind ${options.bind}`))
    } else {
      out.push(line)
    }
  }
  return out.join('\n')
}

/** The pids of a process's children (its worker processes, for nginx's and HAProxy's masters). */
function childrenOf (pid: number | undefined): number[] {
  if (pid === undefined) return []
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(s => s !== '').map(Number)
  } catch {
    return []
  }
}

/** Starts a balancer on a free port, again on another if that one was taken meanwhile. */
async function onFreePort<T> (start: (port: number) => Promise<T>, portTaken: () => Promise<boolean>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start(await freePort())
    } catch (err) {
      if (attempt === 3 || !await portTaken()) throw err
    }
  }
}

abstract class ProcessBalancer implements Balancer {
  abstract readonly kind: BalancerKind
  readonly dir: string
  readonly port: number
  protected daemon: Daemon | undefined
  #nodes: readonly string[]

  constructor (dir: string, port: number, nodes: readonly string[]) {
    this.dir = dir
    this.port = port
    this.#nodes = nodes
  }

  get url (): string { return `http://127.0.0.1:${this.port}` }
  abstract get configPath (): string
  /** Writes every config file for these nodes. */
  protected abstract write (nodes: readonly string[]): Promise<void>
  /** Checks the written config without touching the running balancer. */
  protected abstract check (): Promise<void>
  protected abstract spawn (): Daemon
  protected abstract readonly reloadSignal: NodeJS.Signals

  protected async launch (): Promise<void> {
    await this.write(this.#nodes)
    await this.check()
    const daemon = this.spawn()
    this.daemon = daemon
    // Up once a node answers through it: /v2/ is 200 from a mirror without auth.
    await waitFor(`${this.kind} to answer on ${this.url}`, async () => {
      if (!daemon.running) throw new WaitAborted(`${this.kind} exited`)
      const response = await fetch(`${this.url}/v2/`)
      await response.arrayBuffer()
      return response.status === 200
    }, { timeoutMs: 15_000, describe: () => this.tail() })
  }

  async setNodes (hosts: readonly string[]): Promise<void> {
    const daemon = this.daemon
    if (daemon === undefined || !daemon.running) throw new Error(`${this.kind} is not running`)
    await this.write(hosts)
    await this.check()
    const before = childrenOf(daemon.child.pid)
    daemon.signal(this.reloadSignal)
    // Reloaded once new workers run and the old ones, with the old list, are gone.
    await waitFor(`${this.kind} to reload with ${hosts.length} nodes`, () => {
      if (!daemon.running) throw new WaitAborted(`${this.kind} exited`)
      const now = childrenOf(daemon.child.pid)
      return now.length > 0 && now.every(pid => !before.includes(pid))
    }, { timeoutMs: 15_000, intervalMs: 50, describe: () => this.tail() })
    this.#nodes = hosts
  }

  tail (): string {
    let config = ''
    try {
      config = readFileSync(this.configPath, 'utf8')
    } catch {}
    return `=== ${this.kind} at ${this.url}, nodes ${this.#nodes.join(' ')}\n--- ${this.configPath}\n${config}\n${this.daemon?.tail() ?? '(not started)'}`
  }

  async close (): Promise<void> {
    await this.daemon?.stop()
    await removeTempDir(this.dir)
  }
}

/** nginx with deploy/nginx/registry-mirror.conf included in an http block of the harness's own. */
class NginxBalancer extends ProcessBalancer {
  readonly kind = 'nginx'
  protected readonly reloadSignal = 'SIGHUP'

  static async start (nodes: readonly string[]): Promise<NginxBalancer> {
    const dir = await makeTempDir('nginx-fleet')
    let last: NginxBalancer | undefined
    try {
      return await onFreePort(async port => {
        await last?.daemon?.stop()
        const balancer = new NginxBalancer(dir, port, nodes)
        last = balancer
        await writeFile(balancer.errorLogPath, '')
        await balancer.launch()
        return balancer
      }, async () => /Address already in use/i.test(await readFile(join(dir, 'error.log'), 'utf8').catch(() => '')))
    } catch (err) {
      await last?.daemon?.stop()
      await removeTempDir(dir)
      throw err
    }
  }

  get configPath (): string { return join(this.dir, 'registry-mirror.conf') }
  get mainConfigPath (): string { return join(this.dir, 'nginx.conf') }
  get errorLogPath (): string { return join(this.dir, 'error.log') }
  get accessLogPath (): string { return join(this.dir, 'access.log') }

  protected async write (nodes: readonly string[]): Promise<void> {
    const dir = this.dir
    for (const sub of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) await mkdir(join(dir, sub), { recursive: true })
    await writeFile(this.configPath, renderNginxConfig(shippedConfig('nginx'), { nodes, listen: `127.0.0.1:${this.port}`, accessLog: this.accessLogPath }))
    // Two workers, as a real nginx has several: the upstream zone makes them agree on which node is down.
    await writeFile(this.mainConfigPath, `# Written by harness/fleet.ts for one test run.
worker_processes 2;
pid ${dir}/nginx.pid;
error_log ${this.errorLogPath} info;
events { worker_connections 2048; }
http {
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  include ${this.configPath};
}
`)
  }

  protected async check (): Promise<void> {
    await run('nginx', ['-t', '-q', ...this.#args()], { timeoutMs: 15_000 })
  }

  #args (): string[] {
    // -e: the error log from the first line on (before the config is read, nginx would write to the packaged path).
    return ['-p', this.dir, '-c', this.mainConfigPath, '-e', this.errorLogPath]
  }

  protected spawn (): Daemon {
    return new Daemon('nginx', 'nginx', [...this.#args(), '-g', 'daemon off;'], { logPath: join(this.dir, 'stdout.log'), stderrPath: this.errorLogPath })
  }

  override tail (): string {
    let access = ''
    try {
      access = readFileSync(this.accessLogPath, 'utf8').split('\n').slice(-30).join('\n')
    } catch {}
    return `${super.tail()}\n--- ${this.accessLogPath}\n${access}`
  }
}

/** HAProxy in master-worker mode with a global section of the harness's own, then deploy/haproxy/registry-mirror.cfg. */
class HaproxyBalancer extends ProcessBalancer {
  readonly kind = 'haproxy'
  protected readonly reloadSignal = 'SIGUSR2'

  static async start (nodes: readonly string[]): Promise<HaproxyBalancer> {
    const dir = await makeTempDir('haproxy-fleet')
    let last: HaproxyBalancer | undefined
    try {
      return await onFreePort(async port => {
        await last?.daemon?.stop()
        const balancer = new HaproxyBalancer(dir, port, nodes)
        last = balancer
        await writeFile(balancer.logPath, '')
        await balancer.launch()
        return balancer
      }, async () => /Address already in use|cannot bind socket/i.test(await readFile(join(dir, 'haproxy.log'), 'utf8').catch(() => '')))
    } catch (err) {
      await last?.daemon?.stop()
      await removeTempDir(dir)
      throw err
    }
  }

  get configPath (): string { return join(this.dir, 'registry-mirror.cfg') }
  get globalConfigPath (): string { return join(this.dir, 'global.cfg') }
  get logPath (): string { return join(this.dir, 'haproxy.log') }

  protected async write (nodes: readonly string[]): Promise<void> {
    await writeFile(this.configPath, renderHaproxyConfig(shippedConfig('haproxy'), { nodes, bind: `127.0.0.1:${this.port}` }))
    // What Debian's /etc/haproxy/haproxy.cfg would give: a global section (here logging to stdout, with no chroot or user).
    await writeFile(this.globalConfigPath, `# Written by harness/fleet.ts for one test run.
global
    log stdout format raw local0 info
    pidfile ${join(this.dir, 'haproxy.pid')}
`)
  }

  #args (): string[] {
    return ['-f', this.globalConfigPath, '-f', this.configPath]
  }

  protected async check (): Promise<void> {
    await run('haproxy', ['-c', '-q', ...this.#args()], { timeoutMs: 15_000 })
  }

  protected spawn (): Daemon {
    // -W: master-worker, which reloads on SIGUSR2; -db: in the foreground, in our process group.
    return new Daemon('haproxy', 'haproxy', ['-W', '-db', ...this.#args()], { logPath: this.logPath })
  }
}
