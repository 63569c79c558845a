// podman with private storage and configs: registries.conf maps a registry
// to a mirror location that carries a path prefix (127.0.0.1:PORT/ghcr.io),
// which is how podman and CRI-O users point at a multi-registry mirror.

import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run, type CommandResult, type CommandOptions } from './process.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { digestsFor, parseRepoDigests } from './references.js'

export interface PodmanMirror {
  /** The registry images are named by, e.g. ghcr.io. */
  readonly registry: string
  /** host:port[/path] podman should ask instead. */
  readonly location: string
  /** It serves HTTPS, verified (no `insecure = true`): give Podman.create a certDir. */
  readonly tls?: boolean
}

export interface PodmanOptions {
  /**
   * `podman pull --cert-dir DIR`: ca.crt (and client.cert, client.key) for
   * every registry and mirror it connects to.
   */
  readonly certDir?: string
  /**
   * HOME for podman: it reads registries.conf.d drop-ins from $HOME/.config/containers/registries.conf.d
   * after CONTAINERS_REGISTRIES_CONF (and /etc/containers/registries.conf.d), which is how a test
   * gives it a drop-in directory of its own (a node's /etc/containers/registries.conf.d).
   */
  readonly home?: string
}

export class Podman {
  readonly dir: string
  readonly #certDir: string | undefined
  readonly #home: string | undefined

  private constructor (dir: string, options: PodmanOptions) {
    this.dir = dir
    this.#certDir = options.certDir
    this.#home = options.home
  }

  static async create (mirrors: readonly PodmanMirror[], options: PodmanOptions = {}): Promise<Podman> {
    const podman = new Podman(await makeTempDir('podman'), options)
    try {
      await podman.#writeConfigs(mirrors)
    } catch (err) {
      await podman.close()
      throw err
    }
    return podman
  }

  async #writeConfigs (mirrors: readonly PodmanMirror[]): Promise<void> {
    await mkdir(join(this.dir, 'tmp'))
    const registries = ['unqualified-search-registries = ["docker.io"]', 'short-name-mode = "permissive"', '']
    for (const mirror of mirrors) {
      registries.push(
        '[[registry]]',
        `prefix = "${mirror.registry}"`,
        `location = "${mirror.registry}"`,
        '[[registry.mirror]]',
        `location = "${mirror.location}"`,
        ...mirror.tls === true ? [] : ['insecure = true'],
        ''
      )
    }
    await writeFile(join(this.dir, 'registries.conf'), registries.join('\n'))
    await writeFile(join(this.dir, 'storage.conf'), [
      '[storage]',
      'driver = "vfs"',
      `graphroot = "${join(this.dir, 'root')}"`,
      `runroot = "${join(this.dir, 'run')}"`,
      ''
    ].join('\n'))
    await writeFile(join(this.dir, 'containers.conf'), [
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "none"',
      `tmp_dir = "${join(this.dir, 'libpod-tmp')}"`,
      ''
    ].join('\n'))
    // Its own auth file (podman login writes it, pulls read it): none of the machine's logins count.
    await writeFile(this.authFile, JSON.stringify({ auths: {} }), { mode: 0o600 })
    await writeFile(join(this.dir, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }))
  }

  async close (): Promise<void> {
    await removeTempDir(this.dir)
  }

  /** Where `podman login` keeps credentials, and `podman pull` finds them (--authfile). */
  get authFile (): string { return join(this.dir, 'auth.json') }

  /** `podman login --authfile F [--cert-dir D] -u USER --password-stdin HOST:PORT`: checks the password at /v2/, then keeps it. */
  async login (host: string, user: string, password: string): Promise<CommandResult> {
    const certDir = this.#certDir === undefined ? [] : ['--cert-dir', this.#certDir]
    return await this.podman(['login', '--authfile', this.authFile, ...certDir, '--username', user, '--password-stdin', host], 60_000, { input: password, secrets: [password] })
  }

  async logout (host: string): Promise<void> {
    await this.podman(['logout', '--authfile', this.authFile, host], 60_000)
  }

  async podman (args: readonly string[], timeoutMs = 600_000, options: Pick<CommandOptions, 'input' | 'secrets'> = {}): Promise<CommandResult> {
    return await run('podman', [
      '--root', join(this.dir, 'root'),
      '--runroot', join(this.dir, 'run'),
      '--storage-driver', 'vfs',
      '--tmpdir', join(this.dir, 'libpod-tmp'),
      ...args
    ], {
      env: {
        ...process.env,
        CONTAINERS_REGISTRIES_CONF: join(this.dir, 'registries.conf'),
        CONTAINERS_STORAGE_CONF: join(this.dir, 'storage.conf'),
        CONTAINERS_CONF: join(this.dir, 'containers.conf'),
        TMPDIR: join(this.dir, 'tmp'),
        ...this.#home === undefined ? {} : { HOME: this.#home }
      },
      timeoutMs,
      ...options
    })
  }

  /** Pulls a fully qualified reference (ghcr.io/org/app:v1) for the machine's platform. */
  async pull (reference: string): Promise<void> {
    const certDir = this.#certDir === undefined ? [] : ['--cert-dir', this.#certDir]
    await this.podman(['pull', '--quiet', '--signature-policy', join(this.dir, 'policy.json'), '--authfile', this.authFile, ...certDir, reference])
  }

  async remove (reference: string): Promise<void> {
    await this.podman(['image', 'rm', reference])
  }

  /**
   * The manifest digests recorded for what was pulled as reference (RepoDigests
   * of its repository; podman records both an index and its platform manifest).
   */
  async digestsOf (reference: string): Promise<string[]> {
    const { stdout } = await this.podman(['image', 'inspect', '--format', '{{json .RepoDigests}}', reference])
    return digestsFor(parseRepoDigests(stdout), reference)
  }

  async removeAll (): Promise<void> {
    await this.podman(['image', 'rm', '--all', '--force'])
    const left = await this.imageIds()
    if (left.length > 0) throw new Error(`podman kept images after removing them all: ${left.join(' ')}`)
  }

  async imageIds (): Promise<string[]> {
    const { stdout } = await this.podman(['images', '--all', '--quiet', '--no-trunc'])
    return stdout.split('\n').filter(line => line !== '')
  }
}
