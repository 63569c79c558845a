// TLS for the listeners: the certificate (its chain after it), the key and
// the optional client CA, read from PEM files at start and read again when
// they change, so that a renewal (cert-manager swapping a Secret's files,
// an ACME client rewriting them) is taken without a restart: new connections
// get the new certificate, the ones open keep theirs until they close.
//
// Files are checked every reloadInterval by stat (file-signature.ts). A renewal can be seen half written (the certificate
// replaced, the key not yet): a set that does not load is logged and the old
// one kept, and it is tried again at the next change.

import { X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createSecureContext, type SecureContextOptions } from 'node:tls'
import type { Logger } from 'pino'
import type { TlsConfig } from '../config/types.js'
import { ConfigError, errnoCode } from '../errors.js'
import { FileWatch } from '../file-signature.js'

/** What a listener is given, and given again on a renewal (tls.Server setSecureContext). */
export interface SecureOptions extends SecureContextOptions {
  readonly cert: Buffer
  readonly key: Buffer
  readonly ca?: Buffer | undefined
}

/** Something serving TLS: tls.Server and https.Server are. */
export interface SecureServer {
  setSecureContext: (options: SecureContextOptions) => void
}

type Key = 'cert' | 'key' | 'clientCA'

class TlsFileError extends Error {
  readonly key: Key
  constructor (key: Key, message: string) {
    super(message)
    this.key = key
  }
}

/** Reads the files and checks they make a working context; throws a TlsFileError naming the key at fault. */
async function readSet (config: TlsConfig): Promise<SecureOptions> {
  const read = async (key: Key, path: string): Promise<Buffer> => {
    try {
      return await readFile(path)
    } catch (err) {
      throw new TlsFileError(key, `cannot read ${path}: ${errnoCode(err) ?? String(err)}`)
    }
  }
  const cert = await read('cert', config.cert)
  const key = await read('key', config.key)
  const ca = config.clientCA === undefined ? undefined : await read('clientCA', config.clientCA)
  certificate('cert', config.cert, cert)
  if (ca !== undefined) certificate('clientCA', config.clientCA ?? '', ca)
  try {
    createSecureContext({ cert, key, ca })
  } catch (err) {
    throw new TlsFileError('key', `${config.key} does not go with ${config.cert}: ${(err as Error).message}`)
  }
  return { cert, key, ca }
}

function certificate (key: Key, path: string, pem: Buffer): X509Certificate {
  try {
    return new X509Certificate(pem)
  } catch (err) {
    throw new TlsFileError(key, `${path} holds no PEM certificate (${(err as Error).message})`)
  }
}

function paths (config: TlsConfig): string[] {
  return [config.cert, config.key, config.clientCA].filter((p): p is string => p !== undefined)
}

function describeCert (cert: Buffer): { subject: string, validTo: string, fingerprint: string } {
  const x = new X509Certificate(cert)
  return { subject: x.subject.replace(/\n/g, ', '), validTo: x.validTo, fingerprint: x.fingerprint256 }
}

export class TlsFiles {
  readonly #config: TlsConfig
  readonly #log: Logger
  readonly #servers: SecureServer[] = []
  #options: SecureOptions
  #watch: FileWatch | undefined

  private constructor (config: TlsConfig, log: Logger, options: SecureOptions) {
    this.#config = config
    this.#log = log
    this.#options = options
  }

  /** Reads the files; a problem is a ConfigError naming the key (`tls.key: ... does not go with ...`). */
  static async load (config: TlsConfig, log: Logger, source?: string): Promise<TlsFiles> {
    let files: TlsFiles | undefined
    const watch = await FileWatch.of(paths(config), async () => { if (files !== undefined) await files.#reload() })
    let options
    try {
      options = await readSet(config)
    } catch (err) {
      if (err instanceof TlsFileError) throw new ConfigError(source ?? 'config', [`tls.${err.key}: ${err.message}`])
      throw err
    }
    files = new TlsFiles(config, log, options)
    files.#watch = watch
    files.#warnIfNotValid()
    return files
  }

  /** The current set, for a listener being created. */
  get options (): SecureOptions { return this.#options }

  /** Whether clients must present a certificate. */
  get clientCertificates (): boolean { return this.#config.clientCA !== undefined }

  /** Gives `server` every renewal from now on, and starts checking the files. */
  serve (server: SecureServer): void {
    this.#servers.push(server)
    this.#watch?.start(this.#config.reloadInterval)
  }

  /** Looks for a change now (the timer calls it); resolves once a change found is applied or refused. */
  async check (): Promise<void> {
    await this.#watch?.check()
  }

  async #reload (): Promise<void> {
    let options
    try {
      options = await readSet(this.#config)
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err)
      const key = err instanceof TlsFileError ? `tls.${err.key}` : 'tls'
      this.#log.warn({ key, err: message }, 'TLS files changed but do not load; keeping the certificate in use (tried again at the next change)')
      return
    }
    for (const server of this.#servers) server.setSecureContext(options)
    this.#options = options
    this.#log.info(describeCert(options.cert), 'TLS certificate reloaded')
    this.#warnIfNotValid()
  }

  #warnIfNotValid (): void {
    const x = new X509Certificate(this.#options.cert)
    const now = Date.now()
    if (Date.parse(x.validTo) < now) this.#log.warn({ validTo: x.validTo, subject: x.subject }, 'the TLS certificate has expired: clients will refuse it')
    else if (Date.parse(x.validFrom) > now) this.#log.warn({ validFrom: x.validFrom, subject: x.subject }, 'the TLS certificate is not valid yet: clients will refuse it')
  }

  stop (): void {
    this.#watch?.stop()
  }
}
