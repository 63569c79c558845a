// A token server for distribution's reference registry run with token
// authentication (`auth.token` in its config), as Docker Hub's auth.docker.io
// or ghcr.io's token endpoint stand in front of theirs: users with a password
// and the repositories each may pull (or push), and what anonymous callers may
// pull. It answers GET /token?service=..&scope=repository:NAME:ACTIONS with an
// RS256 JWT granting the asked actions the user holds (none: an empty grant,
// which the registry then refuses with 401), or 401 for a wrong password. The
// signing key's self-signed certificate (made with openssl) is the registry's
// rootcertbundle, and travels in each token's x5c header. Every request is
// recorded: who asked, for which scopes, and the answer. Users and their
// rights can change while it runs (setUser), as an upstream revokes a right.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { createSign, randomUUID } from 'node:crypto'
import { join } from 'node:path'
import type { AddressInfo } from 'node:net'

const run = promisify(execFile)

export interface TokenUser {
  readonly password: string
  /** Other passwords the user logs in with, as a GitHub user's personal access tokens (one per machine, say). */
  readonly accessTokens?: readonly string[]
  /** Repository patterns (`org/*`, `org/**`, `public/app`) this user may pull. */
  readonly pull: readonly string[]
  readonly push?: readonly string[]
}

export interface TokenServerOptions {
  /** Where the signing key and certificate go. */
  readonly dir: string
  readonly users: Readonly<Record<string, TokenUser>>
  /** Repository patterns anyone may pull without a login. */
  readonly anonymousPull?: readonly string[]
  readonly service?: string
  readonly issuer?: string
}

export interface TokenRequest {
  /** The Basic user name, undefined when anonymous. */
  readonly user: string | undefined
  readonly scopes: readonly string[]
  readonly status: number
  /** What the token granted, as `name:actions`. */
  readonly granted: readonly string[]
}

function patternMatches (pattern: string, name: string): boolean {
  const source = pattern.split('/').map(segment => segment === '**' ? '.+' : segment.split('*').map(p => p.replace(/[.\\+?^${}()|[\]]/g, '\\$&')).join('[^/]*')).join('/')
  return new RegExp(`^${source}$`).test(name)
}

function base64url (data: Buffer | string): string {
  return Buffer.from(data).toString('base64url')
}

export class TokenServer {
  readonly service: string
  readonly issuer: string
  readonly certPath: string
  readonly requests: TokenRequest[] = []
  readonly #options: TokenServerOptions
  readonly #users: Map<string, TokenUser>
  readonly #server: Server
  readonly #key: string
  readonly #x5c: string

  private constructor (options: TokenServerOptions, certPath: string, key: string, certPem: string) {
    this.#options = options
    this.#users = new Map(Object.entries(options.users))
    this.service = options.service ?? 'test-registry'
    this.issuer = options.issuer ?? 'test-token-issuer'
    this.certPath = certPath
    this.#key = key
    this.#x5c = certPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '')
    this.#server = createServer((req, res) => { this.#handle(req, res) })
  }

  static async start (options: TokenServerOptions): Promise<TokenServer> {
    const keyPath = join(options.dir, 'token-signer.key')
    const certPath = join(options.dir, 'token-signer.crt')
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=test-token-signer'])
    const server = new TokenServer(options, certPath, await readFile(keyPath, 'utf8'), await readFile(certPath, 'utf8'))
    server.#server.listen(0, '127.0.0.1')
    await once(server.#server, 'listening')
    return server
  }

  get realm (): string {
    const { port } = this.#server.address() as AddressInfo
    return `http://127.0.0.1:${port}/token`
  }

  /**
   * Adds a user or replaces one's password and rights, as an upstream's admin
   * would: every token asked for from now on follows it (tokens already
   * issued keep what they grant until they expire, as real ones do).
   */
  setUser (name: string, user: TokenUser): void {
    this.#users.set(name, user)
  }

  /** Requests from this user (undefined: anonymous ones). */
  from (user: string | undefined): TokenRequest[] {
    return this.requests.filter(r => r.user === user)
  }

  async close (): Promise<void> {
    this.#server.closeAllConnections()
    await new Promise<void>(resolve => this.#server.close(() => resolve()))
  }

  #handle (req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://token')
    const scopes = url.searchParams.getAll('scope').flatMap(s => s.split(' ')).filter(s => s !== '')
    const send = (status: number, body: unknown, user: string | undefined, granted: string[] = []): void => {
      this.requests.push({ user, scopes, status, granted })
      res.writeHead(status, { 'content-type': 'application/json', ...(status === 401 ? { 'www-authenticate': 'Basic realm="test-token-server"' } : {}) })
      res.end(JSON.stringify(body))
    }
    if (url.pathname !== '/token') { send(404, { error: 'not found' }, undefined); return }
    let user: string | undefined
    const basic = /^Basic\s+(\S+)$/i.exec(req.headers.authorization ?? '')
    if (basic !== null) {
      const decoded = Buffer.from(basic[1] ?? '', 'base64').toString('utf8')
      const colon = decoded.indexOf(':')
      const name = decoded.slice(0, colon)
      const known = this.#users.get(name)
      const password = decoded.slice(colon + 1)
      if (colon <= 0 || known === undefined || (known.password !== password && known.accessTokens?.includes(password) !== true)) {
        send(401, { errors: [{ code: 'UNAUTHORIZED', message: 'wrong user name or password' }] }, colon > 0 ? name : undefined)
        return
      }
      user = name
    }
    const access: Array<{ type: string, name: string, actions: string[] }> = []
    for (const scope of scopes) {
      const first = scope.indexOf(':')
      const last = scope.lastIndexOf(':')
      if (first < 0 || last <= first) continue
      const type = scope.slice(0, first)
      const name = scope.slice(first + 1, last)
      const asked = scope.slice(last + 1).split(',')
      if (type !== 'repository') continue
      const rights = user === undefined ? { pull: this.#options.anonymousPull ?? [], push: [] } : this.#users.get(user) ?? { pull: [], push: [] }
      const actions = asked.filter(action => ((action === 'pull' ? rights.pull : action === 'push' ? rights.push ?? [] : []) as readonly string[]).some(p => patternMatches(p, name)))
      access.push({ type, name, actions })
    }
    const now = Math.floor(Date.now() / 1000)
    const header = { alg: 'RS256', typ: 'JWT', x5c: [this.#x5c] }
    const claims = { iss: this.issuer, sub: user ?? '', aud: this.service, exp: now + 300, nbf: now - 10, iat: now, jti: randomUUID(), access }
    const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`
    const signature = createSign('RSA-SHA256').update(signingInput).sign(this.#key)
    const token = `${signingInput}.${base64url(signature)}`
    send(200, { token, access_token: token, expires_in: 300, issued_at: new Date().toISOString() }, user, access.filter(a => a.actions.length > 0).map(a => `${a.name}:${a.actions.join(',')}`))
  }
}
