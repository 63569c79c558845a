// A private containerd (own root, state and sockets) and `ctr` as a client:
// `ctr images pull --hosts-dir` reads certs.d/<registry>/hosts.toml, which is
// how containerd is pointed at a mirror.

import { mkdir, writeFile, access } from 'node:fs/promises'
import { join } from 'node:path'
import { Daemon, run, type CommandResult } from './process.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { waitFor, WaitAborted } from './wait.js'

export interface HostsEntry {
  /** The registry clients name, e.g. docker.io; the directory under certs.d. */
  readonly registry: string
  /** Where to send its requests instead, e.g. http://127.0.0.1:5000. */
  readonly host: string
  /** The registry itself, tried after the mirror (default: the real one). */
  readonly server?: string
  /** A CA certificate (PEM path) to verify an https:// host with, instead of the system's. */
  readonly ca?: string
  /** A client certificate and its key (PEM paths), for a host that requires one. */
  readonly client?: readonly [cert: string, key: string]
}

export interface PulledImage {
  readonly name: string
  /** The digest the image's tag resolved to (the index, for multi-platform images). */
  readonly digest: string
  readonly mediaType: string
}

const namespace = 'e2e'

/** Where containerd goes when the mirror fails: nowhere reachable from here. */
function upstreamServer (registry: string): string {
  return registry === 'docker.io' ? 'https://registry-1.docker.io' : `https://${registry}`
}

export class Containerd {
  readonly dir: string
  #daemon: Daemon | undefined

  private constructor (dir: string) {
    this.dir = dir
  }

  static async start (): Promise<Containerd> {
    const containerd = new Containerd(await makeTempDir('containerd'))
    try {
      await containerd.#start()
    } catch (err) {
      await containerd.close()
      throw err
    }
    return containerd
  }

  get socket (): string { return join(this.dir, 'containerd.sock') }
  get hostsDir (): string { return join(this.dir, 'certs.d') }

  async #start (): Promise<void> {
    const config = join(this.dir, 'config.toml')
    await writeFile(config, [
      'version = 2',
      `root = "${join(this.dir, 'root')}"`,
      `state = "${join(this.dir, 'state')}"`,
      // Nothing here runs containers: without CRI (and /opt) it starts in a blink.
      'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]',
      '[grpc]',
      `  address = "${this.socket}"`,
      '[ttrpc]',
      `  address = "${this.socket}.ttrpc"`,
      '[debug]',
      '  level = "info"',
      ''
    ].join('\n'))
    const daemon = new Daemon('containerd', 'containerd', ['--config', config], { logPath: join(this.dir, 'containerd.log') })
    this.#daemon = daemon
    await waitFor('containerd to answer on its socket', async () => {
      if (!daemon.running) throw new WaitAborted('containerd exited')
      await access(this.socket)
      await this.ctr(['version'], 5000)
      return true
    }, { timeoutMs: 30_000, describe: () => daemon.tail() })
  }

  async close (): Promise<void> {
    await this.#daemon?.stop()
    await removeTempDir(this.dir)
  }

  tail (): string {
    return this.#daemon?.tail() ?? '(never started)'
  }

  async ctr (args: readonly string[], timeoutMs = 600_000, secrets: readonly string[] = []): Promise<CommandResult> {
    return await run('ctr', ['--address', this.socket, '--namespace', namespace, ...args], { timeoutMs, secrets })
  }

  /**
   * Writes certs.d/<registry>/hosts.toml sending pulls and tag resolution to
   * host (replacing what was there), with its ca and client certificate if given.
   */
  async addHost (entry: HostsEntry): Promise<void> {
    const dir = join(this.hostsDir, entry.registry)
    await mkdir(dir, { recursive: true })
    const lines = [
      `server = "${entry.server ?? upstreamServer(entry.registry)}"`,
      '',
      `[host."${entry.host}"]`,
      '  capabilities = ["pull", "resolve"]'
    ]
    if (entry.ca !== undefined) lines.push(`  ca = ${JSON.stringify(entry.ca)}`)
    if (entry.client !== undefined) lines.push(`  client = [[${entry.client.map(path => JSON.stringify(path)).join(', ')}]]`)
    await writeFile(join(dir, 'hosts.toml'), [...lines, ''].join('\n'))
  }

  /**
   * Pulls (and unpacks, which checks every layer against the config's
   * diff_ids) a fully qualified reference: docker.io/library/x:tag.
   */
  async pull (reference: string, options: { user?: { readonly name: string, readonly password: string } } = {}): Promise<PulledImage> {
    // --user USER:PASSWORD: ctr offers it to every host in hosts.toml that challenges it.
    const user = options.user === undefined ? [] : ['--user', `${options.user.name}:${options.user.password}`]
    await this.ctr(['images', 'pull', '--hosts-dir', this.hostsDir, '--snapshotter', 'native', ...user, reference], 600_000,
      options.user === undefined ? [] : [options.user.password])
    return await this.image(reference)
  }

  async image (reference: string): Promise<PulledImage> {
    const { stdout } = await this.ctr(['images', 'ls', `name==${reference}`])
    // REF TYPE DIGEST SIZE PLATFORMS LABELS
    const row = stdout.split('\n').slice(1).map(line => line.split(/\s+/)).find(cols => cols[0] === reference)
    if (row === undefined || row[2] === undefined || row[1] === undefined) throw new Error(`containerd has no image ${reference}:\n${stdout}`)
    return { name: reference, mediaType: row[1], digest: row[2] }
  }

  /** Removes the image and, synchronously, every blob and snapshot only it used. */
  async remove (reference: string): Promise<void> {
    await this.ctr(['images', 'rm', '--sync', reference])
  }

  async imageNames (): Promise<string[]> {
    const { stdout } = await this.ctr(['images', 'ls', '--quiet'])
    return stdout.split('\n').filter(line => line !== '')
  }

  /** Removes every image, then checks that the content store is really empty. */
  async removeAll (): Promise<void> {
    const names = await this.imageNames()
    if (names.length > 0) await this.ctr(['images', 'rm', '--sync', ...names])
    const left = await this.contentDigests()
    if (left.length > 0) throw new Error(`containerd kept ${left.length} blobs after removing every image: ${left.join(' ')}`)
  }

  /** Digests in the content store. */
  async contentDigests (): Promise<string[]> {
    const { stdout } = await this.ctr(['content', 'ls', '--quiet'])
    return stdout.split('\n').filter(line => line.startsWith('sha256:'))
  }
}
