// skopeo as an uploader (OCI layout -> upstream registry) and as a client of
// the mirror. Plain HTTP (or TLS unverified) unless a pull names a cert dir,
// then HTTPS, verified; never a signature policy.

import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run, type CommandResult } from './process.js'
import { sha256 } from './digest.js'

export interface SourceTls {
  /**
   * Speak HTTPS to the source and verify it with the files in this directory:
   * ca.crt (the CA to trust), and client.cert with client.key for a registry
   * that asks for a client certificate. Without it: plain HTTP, or TLS unverified.
   */
  readonly certDir?: string
  /** `--src-creds USER:PASSWORD`; without it skopeo pulls anonymously (--src-no-creds). */
  readonly creds?: { readonly user: string, readonly password: string }
}

export class Skopeo {
  readonly #env: NodeJS.ProcessEnv

  /** tmpDir takes the big temporary files skopeo would put in /var/tmp. */
  constructor (tmpDir: string) {
    this.#env = { ...process.env, TMPDIR: tmpDir }
  }

  async run (args: readonly string[], timeoutMs = 300_000, secrets: readonly string[] = []): Promise<CommandResult> {
    return await run('skopeo', ['--insecure-policy', ...args], { env: this.#env, timeoutMs, secrets })
  }

  /** Pushes every image of an OCI layout; format v2s2 converts it to a Docker schema2 image. */
  async push (layoutDir: string, tag: string, destination: string, options: { format?: 'v2s2' | 'oci', creds?: { readonly user: string, readonly password: string } } = {}): Promise<void> {
    const format = options.format === undefined ? [] : ['--format', options.format]
    const creds = options.creds === undefined ? [] : ['--dest-creds', `${options.creds.user}:${options.creds.password}`]
    await this.run(['copy', '--all', ...format, ...creds, '--dest-tls-verify=false', `oci:${layoutDir}:${tag}`, `docker://${destination}`], 300_000, options.creds === undefined ? [] : [options.creds.password])
  }

  /** The manifest (or index) the reference resolves to, and its digest. */
  async inspectRaw (reference: string): Promise<{ digest: string, body: Buffer }> {
    const { stdout } = await this.run(['inspect', '--raw', '--tls-verify=false', `docker://${reference}`])
    // --raw prints the manifest bytes exactly; stdout decoding keeps them for JSON manifests.
    const body = Buffer.from(stdout, 'utf8')
    return { digest: sha256(body), body }
  }

  /**
   * Copies every platform into a dir: layout without conversion, so the
   * digest of dir/manifest.json is the digest the registry served.
   */
  async pullToDir (reference: string, dir: string, options: SourceTls = {}): Promise<{ digest: string }> {
    const tls = options.certDir === undefined ? ['--src-tls-verify=false'] : ['--src-cert-dir', options.certDir]
    const creds = options.creds === undefined ? ['--src-no-creds'] : ['--src-creds', `${options.creds.user}:${options.creds.password}`]
    await this.run(['copy', '--all', ...tls, ...creds, `docker://${reference}`, `dir:${dir}`], 300_000, options.creds === undefined ? [] : [options.creds.password])
    return { digest: sha256(await readFile(join(dir, 'manifest.json'))) }
  }
}
