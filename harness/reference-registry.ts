// distribution's reference registry (Debian's docker-registry, 2.8) on
// 127.0.0.1: a hosted upstream the tests push images to and count requests
// on, or, with proxyRemoteUrl, a pull-through cache to compare against.

import { writeFile, readFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon } from './process.js'
import { freePort } from './ports.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { waitFor, WaitAborted } from './wait.js'
import { parseAccessLog, isBlobGet, isManifestRequest, type RegistryRequest } from './access-log.js'

export interface ReferenceRegistryOptions {
  /** Names the temp dir and log messages, e.g. "docker.io". */
  readonly label: string
  /** Run as a pull-through cache of this registry instead of a hosted one. */
  readonly proxyRemoteUrl?: string
  /** Token authentication (harness/token-server.ts): every request needs a token from this realm. */
  readonly tokenAuth?: { readonly realm: string, readonly service: string, readonly issuer: string, readonly rootCertBundle: string }
  /** Everything in an S3-compatible bucket (distribution's s3 driver) instead of a directory. */
  readonly s3?: ReferenceS3
}

/**
 * distribution 2.8's storage.s3 (driver s3-aws) on a store that is not AWS:
 * regionendpoint makes it address the bucket path-style, secure: false speaks
 * HTTP to it. With redirect, blob GETs are answered with a redirect to a
 * presigned URL (storage.redirect.disable: false); without, the registry
 * streams them itself.
 */
export interface ReferenceS3 {
  readonly endpoint: string
  readonly bucket: string
  readonly region: string
  readonly accessKeyId: string
  readonly secretAccessKey: string
  /** Keys under this folder of the bucket, e.g. /reference. */
  readonly rootDirectory?: string
  readonly redirect: boolean
}

const flushMarker = 'e2e-flush'

export class ReferenceRegistry {
  readonly label: string
  readonly dir: string
  readonly port: number
  #daemon: Daemon | undefined
  #flushes = 0
  readonly #env: NodeJS.ProcessEnv | undefined

  private constructor (label: string, dir: string, port: number, env: NodeJS.ProcessEnv | undefined) {
    this.label = label
    this.dir = dir
    this.port = port
    this.#env = env
  }

  static async start (options: ReferenceRegistryOptions): Promise<ReferenceRegistry> {
    const dir = await makeTempDir(`registry-${options.label}`)
    await mkdir(join(dir, 'data'))
    // A port free a moment ago can be taken by the time the registry binds it.
    for (let attempt = 1; ; attempt++) {
      // With s3, the keys are in the config; any AWS_* of the caller's shell would be read as well by the
      // AWS SDK for Go (AWS_CA_BUNDLE, say, makes the driver panic at start: "unable to load custom CA bundle").
      const env = options.s3 === undefined ? undefined : Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('AWS_')))
      const registry = new ReferenceRegistry(options.label, dir, await freePort(), env)
      await writeFile(registry.configPath, configYaml(dir, registry.port, options))
      try {
        await registry.start()
        return registry
      } catch (err) {
        await registry.stop()
        const portTaken = /address already in use/.test(await readFile(registry.logPath, 'utf8').catch(() => ''))
        if (!portTaken || attempt === 3) {
          await removeTempDir(dir)
          throw err
        }
        await writeFile(registry.logPath, '')
      }
    }
  }

  get host (): string { return `127.0.0.1:${this.port}` }
  get url (): string { return `http://${this.host}` }
  get configPath (): string { return join(this.dir, 'config.yml') }
  get accessLogPath (): string { return join(this.dir, 'access.log') }
  get logPath (): string { return join(this.dir, 'registry.log') }
  get running (): boolean { return this.#daemon?.running === true }

  /** Starts (again) on the same port and the same data. */
  async start (): Promise<void> {
    if (this.running) return
    const daemon = new Daemon(`docker-registry ${this.label}`, 'docker-registry', ['serve', this.configPath], {
      env: this.#env,
      logPath: this.accessLogPath,
      stderrPath: this.logPath
    })
    this.#daemon = daemon
    await waitFor(`the ${this.label} registry to answer on ${this.url}/v2/`, async () => {
      if (!daemon.running) throw new WaitAborted('docker-registry exited')
      const response = await fetch(`${this.url}/v2/?${flushMarker}=start`)
      await response.arrayBuffer()
      // With token authentication, /v2/ challenges: that answer says it is up just as well.
      return response.status === 200 || (response.status === 401 && response.headers.get('www-authenticate')?.startsWith('Bearer') === true)
    }, { timeoutMs: 15_000, describe: () => daemon.tail() })
  }

  async stop (): Promise<void> {
    await this.#daemon?.stop()
  }

  async close (): Promise<void> {
    await this.stop()
    await removeTempDir(this.dir)
  }

  /**
   * Waits until every request answered so far is in the access log: the log
   * line is written after the response, so a client can finish before it is.
   */
  async flushLog (): Promise<void> {
    if (!this.running) return
    const marker = `${flushMarker}=${++this.#flushes}`
    const response = await fetch(`${this.url}/v2/?${marker}`)
    await response.arrayBuffer()
    await waitFor(`the ${this.label} access log`, async () => (await readFile(this.accessLogPath, 'utf8')).includes(marker), { timeoutMs: 5000, intervalMs: 20 })
  }

  /** Every request that reached this registry, oldest first (the harness's own probes left out). */
  async requests (): Promise<RegistryRequest[]> {
    await this.flushLog()
    const text = await readFile(this.accessLogPath, 'utf8').catch(() => '')
    return parseAccessLog(text).filter(request => !request.uri.includes(flushMarker))
  }

  /** A position in the request log, for requestsSince(). */
  async mark (): Promise<number> {
    return (await this.requests()).length
  }

  async requestsSince (mark: number): Promise<RegistryRequest[]> {
    return (await this.requests()).slice(mark)
  }

  async blobGets (since = 0): Promise<RegistryRequest[]> {
    return (await this.requestsSince(since)).filter(isBlobGet)
  }

  async manifestRequests (since = 0): Promise<RegistryRequest[]> {
    return (await this.requestsSince(since)).filter(isManifestRequest)
  }

  tail (): string {
    return this.#daemon?.tail() ?? '(never started)'
  }
}

function configYaml (dir: string, port: number, options: ReferenceRegistryOptions): string {
  const { proxyRemoteUrl, tokenAuth, s3 } = options
  const storage = s3 === undefined
    ? ['  filesystem:', `    rootdirectory: ${join(dir, 'data')}`]
    : [
        '  s3:',
        `    accesskey: ${s3.accessKeyId}`,
        `    secretkey: ${s3.secretAccessKey}`,
        `    region: ${s3.region}`,
        `    regionendpoint: ${s3.endpoint}`,
        `    bucket: ${s3.bucket}`,
        `    secure: ${String(!s3.endpoint.startsWith('http://'))}`,
        '    v4auth: true',
        ...s3.rootDirectory === undefined ? [] : [`    rootdirectory: ${s3.rootDirectory}`],
        '  redirect:',
        `    disable: ${String(!s3.redirect)}`
      ]
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  formatter: json',
    '  accesslog:',
    '    disabled: false',
    'storage:',
    ...storage,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '  secret: e2e-not-a-secret'
  ]
  if (proxyRemoteUrl !== undefined) lines.push('proxy:', `  remoteurl: ${proxyRemoteUrl}`)
  if (tokenAuth !== undefined) {
    lines.push('auth:', '  token:', `    realm: ${tokenAuth.realm}`, `    service: ${tokenAuth.service}`, `    issuer: ${tokenAuth.issuer}`, `    rootcertbundle: ${tokenAuth.rootCertBundle}`)
  }
  return lines.join('\n') + '\n'
}
