// Users from an htpasswd file, bcrypt entries only (as the reference registry
// accepts: `htpasswd -B`, or `registry-mirror htpasswd`). The file is read at
// start and again when it changes; a changed file that does not parse is
// logged and the users in use kept.

import { createHmac, randomBytes } from 'node:crypto'
import { readFile, rename, stat, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'
import bcrypt from 'bcryptjs'
import type { Logger } from 'pino'
import { errnoCode, HtpasswdError } from '../errors.js'
import { FileWatch } from '../file-signature.js'
import { isUserName } from '../config/access-grammar.js'

const BCRYPT = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/
const BCRYPT_ALPHABET = './ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
/** bcrypt libraries' usual cost, for the unknown names of a file that lists no one. */
const EMPTY_FILE_COST = 10

/** The cost a bcrypt entry was made with (`$2b$05$...` is 5). */
function costOf (hash: string): number {
  return Number(hash.slice(4, 6))
}

/**
 * A well-formed bcrypt entry of the given cost that no password matches (a
 * random salt and digest): comparing a password with it takes what a real
 * entry of that cost takes.
 */
function dummyEntry (cost: number): string {
  const chars = Array.from(randomBytes(53), byte => BCRYPT_ALPHABET[byte % 64]).join('')
  return `$2b$${String(cost).padStart(2, '0')}$${chars}`
}

/** Parses htpasswd text: `user:$2y$...` per line; blank lines and # comments are skipped. */
export function parseHtpasswd (text: string, path: string): Map<string, string> {
  const users = new Map<string, string>()
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/\r$/, '')
    if (line.trim() === '' || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    const where = `${path} line ${i + 1}`
    if (colon <= 0) throw new HtpasswdError(`${where}: expected user:hash`)
    const user = line.slice(0, colon)
    const hash = line.slice(colon + 1)
    if (!isUserName(user)) throw new HtpasswdError(`${where}: "${user}" is not a user name (no spaces, colons or control characters)`)
    if (!BCRYPT.test(hash)) throw new HtpasswdError(`${where}: the entry for ${user} is not bcrypt; only bcrypt entries are accepted (htpasswd -B, or registry-mirror htpasswd)`)
    if (users.has(user)) throw new HtpasswdError(`${where}: ${user} is listed twice`)
    users.set(user, hash)
  }
  return users
}

async function readUsers (path: string): Promise<Map<string, string>> {
  let text
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    throw new HtpasswdError(`cannot read ${path}: ${errnoCode(err) ?? String(err)}`)
  }
  return parseHtpasswd(text, path)
}

/**
 * bcrypt comparisons on a worker thread of their own: a check costs tens of milliseconds
 * of CPU, which on the event loop would stall every pull meanwhile (bcryptjs's "async"
 * compare runs in slices of up to 100 ms there).
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads')
const bcrypt = require(workerData)
parentPort.on('message', m => {
  let ok = false
  try { ok = bcrypt.compareSync(m.password, m.hash) } catch {}
  parentPort.postMessage({ id: m.id, ok })
})
`

class BcryptWorker {
  #worker: Worker | undefined
  readonly #waiting = new Map<number, (ok: boolean) => void>()
  #next = 0

  async compare (password: string, hash: string): Promise<boolean> {
    const worker = this.#worker ?? this.#start()
    const id = this.#next++
    return await new Promise(resolve => {
      this.#waiting.set(id, resolve)
      worker.postMessage({ id, password, hash })
    })
  }

  #start (): Worker {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: createRequire(import.meta.url).resolve('bcryptjs') })
    worker.unref()
    worker.on('message', (reply: { id: number, ok: boolean }) => {
      this.#waiting.get(reply.id)?.(reply.ok)
      this.#waiting.delete(reply.id)
    })
    worker.on('error', () => {
      // A check that cannot be made is a refusal; the next one starts a new worker.
      for (const resolve of this.#waiting.values()) resolve(false)
      this.#waiting.clear()
      this.#worker = undefined
    })
    this.#worker = worker
    return worker
  }

  stop (): void {
    void this.#worker?.terminate()
    this.#worker = undefined
  }
}

export class HtpasswdFile {
  readonly #path: string
  readonly #log: Logger
  readonly #bcrypt = new BcryptWorker()
  /** Picks an unknown name's stand-in entry: the same name always gets the same one. */
  readonly #secret = randomBytes(32)
  #users: Map<string, string>
  /** Entries no password matches, one per cost the file uses, in file order: what an unknown name is compared with. */
  #standIns: string[]
  #watch: FileWatch | undefined
  /** Bumped whenever the users change, so that remembered verifications of the old file are not trusted. */
  generation = 0

  private constructor (path: string, log: Logger, users: Map<string, string>) {
    this.#path = path
    this.#log = log
    this.#users = users
    this.#standIns = standInsFor(users)
  }

  /** Reads the file; throws an HtpasswdError naming the problem. */
  static async load (path: string, log: Logger, reloadInterval: number): Promise<HtpasswdFile> {
    let file: HtpasswdFile | undefined
    const watch = await FileWatch.of([path], async () => { if (file !== undefined) await file.#reload() })
    file = new HtpasswdFile(path, log, await readUsers(path))
    file.#watch = watch
    if (file.#users.size === 0) log.warn({ path }, 'the htpasswd file lists no user: only anonymous access is possible')
    watch.start(reloadInterval)
    return file
  }

  get users (): number { return this.#users.size }

  /** Whether the file lists the user. */
  has (user: string): boolean { return this.#users.has(user) }

  /**
   * The user's entry as it stands (undefined when the file does not list the
   * user): what the mirror's tokens for the user are bound to, so that a token
   * stops working when the user leaves the file or the password changes.
   * Never sent or shown anywhere.
   */
  entry (user: string): string | undefined { return this.#users.get(user) }

  /**
   * Whether the password is the user's: a bcrypt comparison (milliseconds to a tenth of a second,
   * by the entry's cost) on the worker thread, off the event loop. A name the file does not list
   * is compared with a stand-in entry of a cost the file uses (the same one for the same name),
   * so that a wrong password costs as long for a made-up name as for a listed one.
   */
  async verify (user: string, password: string): Promise<boolean> {
    const known = this.#users.get(user)
    const matched = await this.#bcrypt.compare(password, known ?? this.#standIn(user))
    return known !== undefined && matched
  }

  #standIn (user: string): string {
    const pick = createHmac('sha256', this.#secret).update(user).digest().readUInt32BE(0)
    return this.#standIns[pick % this.#standIns.length] ?? dummyEntry(EMPTY_FILE_COST)
  }

  /** Looks for a change now (the timer calls it). */
  async check (): Promise<void> {
    await this.#watch?.check()
  }

  async #reload (): Promise<void> {
    try {
      const users = await readUsers(this.#path)
      this.#users = users
      this.#standIns = standInsFor(users)
    } catch (err) {
      this.#log.warn({ err: err instanceof Error ? err.message : String(err) }, 'the htpasswd file changed but does not load; keeping the users in use')
      return
    }
    this.generation++
    this.#log.info({ path: this.#path, users: this.#users.size }, 'htpasswd file reloaded')
  }

  stop (): void {
    this.#watch?.stop()
    this.#bcrypt.stop()
  }
}

/**
 * Stand-in entries for unknown names, one per entry of the file (each of that
 * entry's cost; one made per cost and shared), so that unknown names fall on
 * the costs in the proportions the file has them. Bounded by the file.
 */
function standInsFor (users: ReadonlyMap<string, string>): string[] {
  const byCost = new Map<number, string>()
  const standIns: string[] = []
  for (const hash of users.values()) {
    const cost = costOf(hash)
    let standIn = byCost.get(cost)
    if (standIn === undefined) {
      standIn = dummyEntry(cost)
      byCost.set(cost, standIn)
    }
    standIns.push(standIn)
  }
  return standIns
}

/** bcrypt's cost for new entries: the reference registry's htpasswd -B uses 5 by default; 10 is what bcrypt libraries pick. */
const NEW_ENTRY_COST = 10

/**
 * Adds a user to an htpasswd file, or changes its password (`registry-mirror htpasswd FILE USER`).
 * The other entries stay as they are; the file is replaced whole (a temp file renamed over it),
 * so a mirror reading it never sees half of it. A new file is readable by its owner only.
 */
export async function setUser (path: string, user: string, password: string): Promise<'added' | 'changed'> {
  if (!isUserName(user)) throw new HtpasswdError(`"${user}" is not a user name (no spaces, colons or control characters)`)
  if (password === '') throw new HtpasswdError('the password is empty')
  let text = ''
  let mode = 0o600
  try {
    text = await readFile(path, 'utf8')
    mode = (await stat(path)).mode & 0o777
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw new HtpasswdError(`cannot read ${path}: ${errnoCode(err) ?? String(err)}`)
  }
  const users = parseHtpasswd(text, path)
  const existed = users.has(user)
  const entry = `${user}:${await bcrypt.hash(password, NEW_ENTRY_COST)}`
  const lines = text.split('\n').filter(line => line !== '')
  const at = lines.findIndex(line => line.startsWith(`${user}:`))
  if (at >= 0) lines[at] = entry
  else lines.push(entry)
  const temp = `${path}.${process.pid}.tmp`
  await writeFile(temp, lines.join('\n') + '\n', { mode })
  await rename(temp, path)
  return existed ? 'changed' : 'added'
}
