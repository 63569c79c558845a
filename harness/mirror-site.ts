// A registry-mirror installation as an operator has one: a config file and a
// data directory, on which the CLI's commands run (`warm`, `export`,
// `import`, `stats`) and which `serve` serves. The air-gap test has two: a
// connected one and an offline one whose upstreams do not exist.

import { access, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Mirror, UpstreamEntry } from './mirror-api.js'
import { MirrorProcess, startMirrorDaemon } from './mirror-process.js'
import { run, tailOf, type CommandResult, type Daemon } from './process.js'
import { makeTempDir, removeTempDir } from './temp.js'

export interface MirrorSiteOptions {
  /** Names the temp dir: "connected", "airgapped". */
  readonly label: string
  readonly upstreams: readonly UpstreamEntry[]
  /** `offline: true` in the config. */
  readonly offline?: boolean
}

export class MirrorSite implements Mirror {
  readonly dir: string
  readonly registries: readonly string[]
  #daemon: Daemon | undefined
  #url = ''

  private constructor (dir: string, registries: readonly string[]) {
    this.dir = dir
    this.registries = registries
  }

  static async create (options: MirrorSiteOptions): Promise<MirrorSite> {
    try {
      await access(MirrorProcess.entryPoint)
    } catch {
      throw new Error(`${MirrorProcess.entryPoint} does not exist: build the mirror first (npm run build)`)
    }
    const site = new MirrorSite(await makeTempDir(`site-${options.label}`), options.upstreams.map(u => u.name))
    await mkdir(site.dataDir)
    const lines = ['listen: 127.0.0.1:0', 'storage:', `  path: ${site.dataDir}`, 'upstreams:']
    for (const upstream of options.upstreams) {
      lines.push(`  ${upstream.name}:`, `    url: ${upstream.url}`, '    timeouts: { connect: 2s, headers: 10s, body: 30s }')
      if (upstream.default === true) lines.push('    default: true')
    }
    if (options.offline === true) lines.push('offline: true')
    await writeFile(site.configPath, lines.join('\n') + '\n')
    return site
  }

  get configPath (): string { return join(this.dir, 'mirror.config.yml') }
  get dataDir (): string { return join(this.dir, 'data') }
  get logPath (): string { return join(this.dir, 'mirror.log') }
  get stderrPath (): string { return join(this.dir, 'mirror.stderr.log') }
  get url (): string { return this.#url }
  get host (): string { return this.#url.replace(/^http:\/\//, '') }

  locationFor (registry: string): string {
    return `${this.host}/${registry}`
  }

  /** `registry-mirror COMMAND ... --config FILE`; rejects with its output when it exits non-zero. */
  async cli (args: readonly string[], timeoutMs = 600_000): Promise<CommandResult> {
    return await run(process.execPath, [MirrorProcess.entryPoint, ...args, '--config', this.configPath], { cwd: this.dir, timeoutMs })
  }

  /** Like cli(), but a non-zero exit is an answer, not an error. */
  async cliStatus (args: readonly string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
    try {
      const r = await this.cli(args)
      return { code: 0, ...r }
    } catch (err) {
      if (typeof err === 'object' && err !== null && 'code' in err && 'stdout' in err && 'stderr' in err) {
        const e = err as { code: number | null, stdout: string, stderr: string }
        return { code: e.code, stdout: e.stdout, stderr: e.stderr }
      }
      throw err
    }
  }

  /** Starts `serve`; ready once it logs "listening". */
  async serve (): Promise<void> {
    const { daemon, url } = await startMirrorDaemon({
      name: `registry-mirror ${this.dir}`,
      entry: MirrorProcess.entryPoint,
      configPath: this.configPath,
      cwd: this.dir,
      logPath: this.logPath,
      stderrPath: this.stderrPath,
      timeoutMs: 30_000,
      tail: () => this.tail()
    })
    this.#daemon = daemon
    this.#url = url
  }

  async close (): Promise<void> {
    await this.#daemon?.stop()
    await removeTempDir(this.dir)
  }

  tail (lines = 60): string {
    return [
      `--- ${this.dir} stdout: ${this.logPath}\n${tailOf(this.logPath, lines)}`,
      `--- ${this.dir} stderr: ${this.stderrPath}\n${tailOf(this.stderrPath, lines)}`
    ].join('\n')
  }
}
