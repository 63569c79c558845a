// A private CA and the certificates it signs, made with openssl (Debian's
// package) the way the README tells a site to make them for a test: a CA,
// a server certificate for 127.0.0.1 / localhost, and client certificates.

import { execFile } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

async function openssl (args: readonly string[], cwd: string): Promise<void> {
  try {
    await run('openssl', args, { cwd })
  } catch (err) {
    const e = err as { stderr?: string, message: string }
    throw new Error(`openssl ${args.join(' ')}: ${e.stderr ?? e.message}`)
  }
}

export interface Pem {
  readonly certPath: string
  readonly keyPath: string
  readonly cert: Buffer
  readonly key: Buffer
}

export interface CertificateAuthority extends Pem {
  /** A certificate for a server at these names (IPs and DNS names), signed by this CA. */
  issueServer: (name: string, hosts?: readonly string[]) => Promise<Pem>
  /** A client certificate (for mutual TLS) with this common name. */
  issueClient: (name: string) => Promise<Pem>
}

async function pemAt (dir: string, name: string): Promise<Pem> {
  const certPath = join(dir, `${name}.crt`)
  const keyPath = join(dir, `${name}.key`)
  return { certPath, keyPath, cert: await readFile(certPath), key: await readFile(keyPath) }
}

/** A new CA in dir (files <name>.crt and <name>.key), valid for a day. */
export async function makeCA (dir: string, name = 'ca'): Promise<CertificateAuthority> {
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', `/CN=registry-mirror test ${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir)
  const ca = await pemAt(dir, name)
  let serial = 0
  const issue = async (leaf: string, subject: string, extensions: string): Promise<Pem> => {
    serial++
    await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', subject,
      '-keyout', `${leaf}.key`, '-out', `${leaf}.csr`], dir)
    await writeFile(join(dir, `${leaf}.ext`), extensions)
    await openssl(['x509', '-req', '-in', `${leaf}.csr`, '-CA', `${name}.crt`, '-CAkey', `${name}.key`, '-set_serial', String(Date.now() * 100 + serial),
      '-days', '1', '-extfile', `${leaf}.ext`, '-out', `${leaf}.crt`], dir)
    return await pemAt(dir, leaf)
  }
  return {
    ...ca,
    issueServer: async (leaf, hosts = ['127.0.0.1', 'localhost']) => {
      const san = hosts.map(h => /^[\d.]+$|:/.test(h) ? `IP:${h}` : `DNS:${h}`).join(',')
      return await issue(leaf, `/CN=${hosts[0] ?? leaf}`, `subjectAltName=${san}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n`)
    },
    issueClient: async (leaf) => await issue(leaf, `/CN=${leaf}`, 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n')
  }
}
