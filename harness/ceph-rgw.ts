// A real S3 server for the tests: Ceph's RADOS Gateway (radosgw) on a
// throw-away single-node cluster (one mon, one memstore osd) on 127.0.0.1,
// started by harness/s3.sh in a temp dir of its own. Loopback and tests only:
// the daemons talk to each other without authentication, and the objects live
// in the osd's memory (keep them to a few MiB).
//
// Several clusters can run at once (their own dirs and ports). The gateway
// alone can be stopped and started again on the same port while the mon and
// the osd keep the data: "the object store went away mid-run".
//
// The Ceph daemons daemonize (each in its own session), so they are not in a
// process group of process.ts's: they are killed through their pid files, in
// close() and, when the test process dies first, on its way out.

import { readFile } from 'node:fs/promises'
import { existsSync, readdirSync, readFileSync, realpathSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CreateBucketCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3'
import { request } from 'undici'
import { run, tailOf } from './process.js'
import { freePort } from './ports.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { waitFor } from './wait.js'

export interface CephRgwOptions {
  /** Names the temp dir, e.g. "blobs". */
  readonly label?: string
}

/** One request radosgw served, from its "beast:" log line. */
export interface GatewayRequest {
  readonly method: string
  /** Without the query string: `/bucket/key` (path-style). */
  readonly path: string
  /** Path and query, as sent. */
  readonly uri: string
  readonly status: number
  /** Body bytes as radosgw counts them: sent, plus an upload's data received. */
  readonly bytes: number
  /** The S3 user (uid) the request was signed as, `anonymous`, or `-` when its signature was refused. */
  readonly user: string
  readonly userAgent: string
}

export interface CephDaemon {
  /** mon.a, osd.0, client.rgw.s3 */
  readonly name: string
  readonly pid: number
  readonly rssBytes: number
}

const script = findScript()
const rgwName = 'client.rgw.s3'
const flushMarker = 'rgw-e2e-flush'
const probeMarker = 's3.sh-probe'

function findScript (): string {
  // harness/ceph-rgw.ts runs from harness/ (tap) or from dist/harness/ (bench): s3.sh is in the source tree.
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const candidate = join(dir, 'harness', 's3.sh')
    if (existsSync(candidate)) return candidate
    const parent = dirname(dir)
    if (parent === dir) throw new Error('no harness/s3.sh above ' + fileURLToPath(import.meta.url))
    dir = parent
  }
}

// Cluster dirs whose daemons may be running. When the test process exits
// without close() (a test that threw before its teardown was set, a crash, or
// a tap timeout's SIGALRM, which process.ts turns into an exit), every process
// started with their ceph.conf is killed on the way out.
const liveDirs = new Set<string>()

function confOf (dir: string): string | undefined {
  try {
    return join(realpathSync(dir), 'ceph.conf') // as s3.sh names it (readlink -f)
  } catch {
    return undefined
  }
}

function startedWith (pid: number, conf: string): boolean {
  try {
    const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
    return args[args.indexOf('-c') + 1] === conf
  } catch {
    return false
  }
}

function daemonPids (dir: string): Map<string, number> {
  const pids = new Map<string, number>()
  let files: string[] = []
  try {
    files = readdirSync(join(dir, 'run')).filter(file => file.endsWith('.pid'))
  } catch {}
  const conf = confOf(dir)
  if (conf === undefined) return pids
  for (const file of files) {
    try {
      const pid = Number(readFileSync(join(dir, 'run', file), 'utf8').trim())
      // A pid file a killed daemon left behind may name a pid reused since: it must be a daemon of this conf.
      if (Number.isInteger(pid) && pid > 0 && isAlive(pid) && startedWith(pid, conf)) pids.set(file.slice(0, -'.pid'.length), pid)
    } catch {}
  }
  return pids
}

/**
 * Every live process started with the cluster's ceph.conf, pid file or not (a
 * daemon killed on its way up, a radosgw-admin that hangs): a search of /proc.
 */
function processesOf (dir: string): number[] {
  const conf = confOf(dir)
  if (conf === undefined) return []
  let entries: string[] = []
  try {
    entries = readdirSync('/proc').filter(entry => /^\d+$/.test(entry))
  } catch {}
  return entries.map(Number).filter(pid => pid !== process.pid && startedWith(pid, conf) && isAlive(pid))
}

/** SIGKILL to every process of the cluster; waits (up to 2 s, synchronously: it runs in an exit listener) until they are gone. */
function killAll (dir: string): void {
  const pids = processesOf(dir)
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {}
  }
  const deadline = Date.now() + 2000
  const pause = new Int32Array(new SharedArrayBuffer(4))
  while (pids.some(isAlive) && Date.now() < deadline) Atomics.wait(pause, 0, 0, 20)
}

/** The process exists and is not a zombie (PID 1 may reap late, or never). */
function isAlive (pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

// Prepended: temp.ts's own exit listener removes the dirs, and the daemons
// write their logs there until they are gone.
process.prependListener('exit', () => {
  for (const dir of liveDirs) killAll(dir)
  liveDirs.clear()
})

export class CephRgw {
  readonly dir: string
  /** The gateway's port: S3 at http://127.0.0.1:port. */
  readonly port: number
  readonly monPort: number
  readonly accessKeyId: string
  readonly secretAccessKey: string
  /** Any region works with radosgw's SigV4; us-east-1 also makes the SDK send no LocationConstraint. */
  readonly region: string = 'us-east-1'
  readonly #clients = new Set<S3Client>()
  #admin: S3Client | undefined
  #flushes = 0
  #closed = false

  private constructor (dir: string, port: number, monPort: number, accessKeyId: string, secretAccessKey: string) {
    this.dir = dir
    this.port = port
    this.monPort = monPort
    this.accessKeyId = accessKeyId
    this.secretAccessKey = secretAccessKey
  }

  /** A fresh cluster; a few seconds. */
  static async start (options: CephRgwOptions = {}): Promise<CephRgw> {
    const dir = await makeTempDir(`ceph-rgw-${options.label ?? 's3'}`)
    liveDirs.add(dir)
    // A port free a moment ago can be taken by the time a daemon binds it; s3.sh says so, and we try others.
    for (let attempt = 1; ; attempt++) {
      const port = await freePort()
      let monPort = await freePort()
      while (monPort === port) monPort = await freePort()
      try {
        const { stdout } = await run('bash', [script, 'start', dir, String(port), String(monPort)], { timeoutMs: 120_000 })
        const [accessKeyId = '', secretAccessKey = ''] = (stdout.split('\n')[0] ?? '').split(' ')
        if (!/^[A-Z0-9]{20}$/.test(accessKeyId) || !/^[0-9a-f]{40}$/.test(secretAccessKey)) throw new Error(`s3.sh printed no keys: ${stdout}`)
        return new CephRgw(dir, port, monPort, accessKeyId, secretAccessKey)
      } catch (err) {
        // s3.sh stops what it started when it fails, but not when run() killed it at its timeout.
        await run('bash', [script, 'stop', dir], { timeoutMs: 30_000 }).catch(() => {})
        killAll(dir)
        const portTaken = err instanceof Error && /port \d+ already in use/.test(err.message)
        if (!portTaken || attempt === 3) {
          const logs = describeLogs(dir)
          liveDirs.delete(dir)
          await removeTempDir(dir)
          if (err instanceof Error) err.message += '\n' + logs
          throw err
        }
      }
    }
  }

  get endpoint (): string { return `http://127.0.0.1:${this.port}` }
  get logPath (): string { return join(this.dir, 'log', `${rgwName}.log`) }
  get credentials (): { accessKeyId: string, secretAccessKey: string } {
    return { accessKeyId: this.accessKeyId, secretAccessKey: this.secretAccessKey }
  }

  /**
   * An S3 client (AWS SDK v3) set up as radosgw needs: path-style bucket
   * addressing (no wildcard DNS here), and checksums only where S3 requires
   * them (pacific rejects the SDK's default trailing checksums on streamed
   * uploads). The SDK's retries stay on; pass { maxAttempts: 1 } to see each
   * failure. close() destroys it.
   */
  client (overrides: S3ClientConfig = {}): S3Client {
    const client = new S3Client({
      endpoint: this.endpoint,
      region: this.region,
      credentials: this.credentials,
      forcePathStyle: true,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      ...overrides
    })
    this.#clients.add(client)
    return client
  }

  async createBucket (name: string): Promise<string> {
    this.#admin ??= this.client()
    await this.#admin.send(new CreateBucketCommand({ Bucket: name }))
    return name
  }

  /** The gateway process is running (it may be starting still). */
  get gatewayRunning (): boolean {
    return daemonPids(this.dir).has(rgwName)
  }

  /** Kills radosgw (SIGKILL, as a crash would); the mon and the osd keep the buckets and objects. */
  async stopGateway (): Promise<void> {
    await run('bash', [script, 'rgw-stop', this.dir], { timeoutMs: 30_000 })
  }

  /** Starts radosgw again, on the same port, with the same data and keys; returns once it answers. */
  async startGateway (): Promise<void> {
    try {
      await run('bash', [script, 'rgw-start', this.dir], { timeoutMs: 120_000 })
    } catch (err) {
      if (err instanceof Error) err.message += '\n' + this.tail()
      throw err
    }
  }

  /** The running daemons and their resident memory. */
  daemons (): CephDaemon[] {
    return [...daemonPids(this.dir)].map(([name, pid]) => ({ name, pid, rssBytes: rssOf(pid) }))
  }

  /**
   * Waits until every request answered so far is in the log: radosgw writes
   * its lines from a log thread, after the response.
   */
  async flushLog (): Promise<void> {
    if (!this.gatewayRunning) return
    const marker = `${flushMarker}=${++this.#flushes}`
    // A connection of its own (reset: Connection: close), never one a gateway killed since left in a pool.
    const response = await request(`${this.endpoint}/?${marker}`, { reset: true })
    await response.body.arrayBuffer()
    await waitFor('the radosgw log', async () => (await readFile(this.logPath, 'utf8')).includes(marker), { timeoutMs: 10_000, intervalMs: 20 })
  }

  /** Every request that reached the gateway, oldest first, across restarts (the harness's own probes left out). */
  async requests (): Promise<GatewayRequest[]> {
    await this.flushLog()
    const text = await readFile(this.logPath, 'utf8').catch(() => '')
    return parseBeastLog(text).filter(request => !request.uri.includes(flushMarker) && !request.uri.includes(probeMarker))
  }

  /** A position in the request log, for requestsSince(). */
  async mark (): Promise<number> {
    return (await this.requests()).length
  }

  async requestsSince (mark: number): Promise<GatewayRequest[]> {
    return (await this.requests()).slice(mark)
  }

  /** The last lines of the gateway's, the osd's and the mon's logs, for failure messages. */
  tail (lines = 30): string {
    return describeLogs(this.dir, lines)
  }

  /** Kills every daemon, destroys the clients made here, and removes the temp dir. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const client of this.#clients) client.destroy()
    this.#clients.clear()
    try {
      await run('bash', [script, 'stop', this.dir], { timeoutMs: 30_000 })
    } finally {
      // Whatever s3.sh did not find by its pid files.
      killAll(this.dir)
      liveDirs.delete(this.dir)
      await removeTempDir(this.dir)
    }
  }
}

function rssOf (pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match === null ? 0 : Number(match[1]) * 1024
  } catch {
    return 0
  }
}

function describeLogs (dir: string, lines = 30): string {
  return ['stderr.log', `${rgwName}.log`, 'osd.0.log', 'mon.a.log']
    .map(file => `--- ${join(dir, 'log', file)}\n${tailOf(join(dir, 'log', file), lines)}`)
    .join('\n')
}

// radosgw's beast frontend logs each request it served at debug_rgw 1 (the default):
//   ... 1 beast: 0x7f..: 127.0.0.1 - tester [03/Dec/2026:14:13:21.747 +0000] "GET /b/k HTTP/1.1" 206 20 - "aws-sdk-js/3..." bytes=0-19 latency=0.004s
// (user, request line, status, bytes, referer, user agent, range); the user is - when the signature was refused.
const beastLine = / beast: \S+ \S+ - (\S+) \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-) (?:"(?:[^"\\]|\\.)*"|-) (?:"((?:[^"\\]|\\.)*)"|-)/

export function parseBeastLog (text: string): GatewayRequest[] {
  const requests: GatewayRequest[] = []
  for (const line of text.split('\n')) {
    const match = beastLine.exec(line)
    if (match === null) continue
    const [, user = '', method = '', uri = '', status = '0', bytes = '-', userAgent = ''] = match
    const query = uri.indexOf('?')
    requests.push({
      method,
      uri,
      path: query === -1 ? uri : uri.slice(0, query),
      status: Number(status),
      bytes: bytes === '-' ? 0 : Number(bytes),
      user,
      userAgent
    })
  }
  return requests
}
