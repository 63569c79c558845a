// A private dockerd (own data-root, exec-root, pidfile, socket, and its own
// containerd) configured like a user's machine with `registry-mirrors`, and
// the docker CLI as its client. vfs storage and no networking: it only has to
// pull, which needs neither overlayfs nor iptables. A build asks for overlay2
// where the kernel mounts it: vfs copies the whole root filesystem at every
// step of a Dockerfile.

import { mkdir, writeFile, access, rm, rmdir } from 'node:fs/promises'
import { existsSync, rmSync, rmdirSync } from 'node:fs'
import { join } from 'node:path'
import { Daemon, run, type CommandResult, type CommandOptions } from './process.js'
import { Containerd } from './containerd.js'
import { makeTempDir, removeTempDir } from './temp.js'
import { digestsFor, parseRepoDigests } from './references.js'
import { waitFor, WaitAborted } from './wait.js'

/** Where dockerd looks for the CA (and client certificate) of a registry or mirror: <dir>/<host:port>/. */
export const dockerCertsDir = '/etc/docker/certs.d'

// A fixed path outside every temp dir: what the tests wrote there is removed
// on the way out too, when no teardown ran.
const certsWritten = new Set<string>()
let madeCertsDir = false
process.on('exit', () => {
  for (const dir of certsWritten) rmSync(dir, { recursive: true, force: true })
  try {
    if (madeCertsDir) rmdirSync(dockerCertsDir) // only if empty
  } catch {}
})

/**
 * Writes /etc/docker/certs.d/<host>/ca.crt (and client.cert, client.key),
 * replacing what the tests wrote there before. dockerd reads it at each pull.
 */
export async function writeDockerCerts (host: string, files: { ca: Buffer, client?: { cert: Buffer, key: Buffer } }): Promise<void> {
  const dir = join(dockerCertsDir, host)
  certsWritten.add(dir)
  if (!existsSync(dockerCertsDir)) madeCertsDir = true
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'ca.crt'), files.ca)
  if (files.client !== undefined) {
    await writeFile(join(dir, 'client.cert'), files.client.cert)
    await writeFile(join(dir, 'client.key'), files.client.key, { mode: 0o600 })
  }
}

/** Removes /etc/docker/certs.d/<host>, and certs.d itself if the tests made it and it is empty. */
export async function removeDockerCerts (host: string): Promise<void> {
  const dir = join(dockerCertsDir, host)
  await rm(dir, { recursive: true, force: true })
  certsWritten.delete(dir)
  if (madeCertsDir && certsWritten.size === 0) {
    await rmdir(dockerCertsDir).catch(() => {}) // something else went in: leave it
    madeCertsDir = false
  }
}

export interface DockerdOptions {
  /** registry-mirrors: http://127.0.0.1:PORT, or https://HOST:PORT with certs.d (writeDockerCerts); used for docker.io images only. */
  readonly mirrors?: readonly string[]
  /** host:port pairs dockerd may talk plain HTTP to. */
  readonly insecureRegistries?: readonly string[]
  /** vfs (the default) works everywhere; overlay2 needs overlayfs (see overlayWorks). */
  readonly storageDriver?: 'vfs' | 'overlay2'
}

/** Whether this kernel mounts overlayfs here (it may not inside a container): tried on a scratch dir. */
export async function overlayWorks (): Promise<boolean> {
  const dir = await makeTempDir('overlay-probe')
  try {
    for (const sub of ['lower', 'upper', 'work', 'merged']) await mkdir(join(dir, sub))
    const merged = join(dir, 'merged')
    await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${join(dir, 'lower')},upperdir=${join(dir, 'upper')},workdir=${join(dir, 'work')}`, merged], { timeoutMs: 10_000 })
    await run('umount', [merged], { timeoutMs: 10_000 })
    return true
  } catch {
    return false // not permitted, or no overlay module: vfs it is
  } finally {
    await removeTempDir(dir)
  }
}

export class Dockerd {
  readonly dir: string
  readonly containerd: Containerd
  #daemon: Daemon | undefined

  private constructor (dir: string, containerd: Containerd) {
    this.dir = dir
    this.containerd = containerd
  }

  static async start (options: DockerdOptions = {}): Promise<Dockerd> {
    const dir = await makeTempDir('dockerd')
    let containerd: Containerd
    try {
      containerd = await Containerd.start()
    } catch (err) {
      await removeTempDir(dir)
      throw err
    }
    const dockerd = new Dockerd(dir, containerd)
    try {
      await dockerd.#start(options)
    } catch (err) {
      await dockerd.close()
      throw err
    }
    return dockerd
  }

  get socket (): string { return join(this.dir, 'docker.sock') }
  /** The docker CLI's config dir (DOCKER_CONFIG, as `docker --config DIR`): config.json keeps the logins. */
  get cliConfigDir (): string { return join(this.dir, 'cli') }

  async #start (options: DockerdOptions): Promise<void> {
    await mkdir(join(this.dir, 'cli'))
    const config = join(this.dir, 'daemon.json')
    await writeFile(config, JSON.stringify({
      'registry-mirrors': options.mirrors ?? [],
      'insecure-registries': options.insecureRegistries ?? [],
      'storage-driver': options.storageDriver ?? 'vfs',
      iptables: false,
      ip6tables: false,
      'ip-forward': false,
      'ip-masq': false,
      bridge: 'none',
      'userland-proxy': false,
      'data-root': join(this.dir, 'root'),
      'exec-root': join(this.dir, 'exec'),
      pidfile: join(this.dir, 'docker.pid'),
      hosts: [`unix://${this.socket}`],
      containerd: this.containerd.socket,
      'containerd-namespace': 'e2e-moby',
      'containerd-plugins-namespace': 'e2e-moby-plugins',
      'log-level': 'info',
      features: { buildkit: false }
    }, null, 2))
    const daemon = new Daemon('dockerd', 'dockerd', ['--config-file', config], { logPath: join(this.dir, 'dockerd.log') })
    this.#daemon = daemon
    await waitFor('dockerd to answer on its socket', async () => {
      if (!daemon.running) throw new WaitAborted('dockerd exited')
      await access(this.socket)
      await this.docker(['version'], 10_000)
      return true
    }, { timeoutMs: 60_000, intervalMs: 250, describe: () => daemon.tail() })
  }

  async close (): Promise<void> {
    await this.#daemon?.stop(20_000)
    await this.containerd.close()
    await removeTempDir(this.dir)
  }

  tail (): string {
    return this.#daemon?.tail() ?? '(never started)'
  }

  async docker (args: readonly string[], timeoutMs = 600_000, options: Pick<CommandOptions, 'input' | 'secrets'> = {}): Promise<CommandResult> {
    return await run('docker', ['--host', `unix://${this.socket}`, ...args], {
      env: { ...process.env, DOCKER_CONFIG: this.cliConfigDir },
      timeoutMs,
      ...options
    })
  }

  /**
   * `docker login HOST:PORT -u USER --password-stdin`: dockerd checks the password
   * against the registry's /v2/ (with certs.d for TLS), and the CLI keeps it in
   * its config dir for pulls of HOST:PORT/... references.
   */
  async login (host: string, user: string, password: string): Promise<CommandResult> {
    return await this.docker(['login', host, '--username', user, '--password-stdin'], 60_000, { input: password, secrets: [password] })
  }

  async logout (host: string): Promise<void> {
    await this.docker(['logout', host], 60_000)
  }

  /** docker pull; the error carries dockerd's log, which says why a mirror was skipped. */
  async pull (reference: string): Promise<void> {
    try {
      await this.docker(['pull', '--quiet', reference])
    } catch (err) {
      if (err instanceof Error) err.message += '\n' + this.tail()
      throw err
    }
  }

  async remove (reference: string): Promise<void> {
    await this.docker(['image', 'rm', reference])
  }

  /**
   * The manifest digests recorded for what was pulled as reference (RepoDigests
   * of its repository).
   */
  async digestsOf (reference: string): Promise<string[]> {
    const { stdout } = await this.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', reference])
    return digestsFor(parseRepoDigests(stdout), reference)
  }

  /** Removes every image (all their tags and digests) and their layers. */
  async removeAll (): Promise<void> {
    const ids = [...new Set(await this.imageIds())]
    if (ids.length > 0) await this.docker(['image', 'rm', '--force', ...ids])
    const left = await this.imageIds()
    if (left.length > 0) throw new Error(`dockerd kept images after removing them all: ${left.join(' ')}`)
  }

  async imageIds (): Promise<string[]> {
    const { stdout } = await this.docker(['image', 'ls', '--all', '--quiet', '--no-trunc'])
    return stdout.split('\n').filter(line => line !== '')
  }
}
