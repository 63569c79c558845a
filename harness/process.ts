// Child processes for the end-to-end tests: long-running daemons in their own
// process group (so stopping one stops everything it started) and one-shot
// commands with a timeout and a readable error.

import { spawn, type ChildProcess } from 'node:child_process'
import { openSync, closeSync, readFileSync, existsSync } from 'node:fs'
import { once } from 'node:events'

// Teardown does not run when the test process is killed (a tap timeout, ^C),
// and a leftover dockerd breaks the next run, so every process group we start
// is also remembered here and killed on the way out.
const liveGroups = new Set<number>()

function killGroup (pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal)
    return true
  } catch {
    return false
  }
}

function killAllNow (): void {
  for (const pid of liveGroups) killGroup(pid, 'SIGKILL')
  liveGroups.clear()
}

process.on('exit', killAllNow)
const exitCodes = { SIGHUP: 129, SIGINT: 130, SIGALRM: 142, SIGTERM: 143 } as const
for (const signal of Object.keys(exitCodes) as Array<keyof typeof exitCodes>) {
  // tap sends SIGALRM (then SIGKILL) to a test file that runs past its timeout.
  process.once(signal, () => {
    killAllNow()
    process.exit(exitCodes[signal])
  })
}

export interface DaemonOptions {
  readonly env?: NodeJS.ProcessEnv
  readonly cwd?: string
  /** stdout and stderr are appended here (both, unless stderrPath is set). */
  readonly logPath: string
  readonly stderrPath?: string
  /** Pipe stdout to the parent (child.stdout), which watches it and copies it to logPath. */
  readonly pipeStdout?: boolean
}

export class Daemon {
  readonly name: string
  readonly child: ChildProcess
  readonly logPath: string
  readonly stderrPath: string
  readonly exited: Promise<number | null>
  #exitCode: number | null | undefined

  constructor (name: string, command: string, args: readonly string[], options: DaemonOptions) {
    this.name = name
    this.logPath = options.logPath
    this.stderrPath = options.stderrPath ?? options.logPath
    // With pipeStdout the caller copies stdout to logPath itself.
    const err = openSync(this.stderrPath, 'a')
    const out = options.pipeStdout === true ? 'pipe' : this.stderrPath === this.logPath ? err : openSync(this.logPath, 'a')
    try {
      this.child = spawn(command, [...args], {
        cwd: options.cwd,
        env: options.env ?? process.env,
        detached: true, // its own process group, killed as a whole
        stdio: ['ignore', out, err]
      })
    } finally {
      closeSync(err)
      if (typeof out === 'number' && out !== err) closeSync(out)
    }
    const pid = this.child.pid
    if (pid !== undefined) liveGroups.add(pid)
    this.exited = new Promise(resolve => {
      this.child.once('error', () => { this.#exitCode = null; resolve(null) })
      this.child.once('exit', code => { this.#exitCode = code; resolve(code) })
    })
  }

  get running (): boolean {
    return this.#exitCode === undefined
  }

  /** SIGTERM to the whole group, SIGKILL after graceMs. */
  async stop (graceMs = 10_000): Promise<void> {
    const pid = this.child.pid
    if (pid === undefined) return
    if (this.running) {
      killGroup(pid, 'SIGTERM')
      const timer = new Promise(resolve => setTimeout(resolve, graceMs).unref())
      await Promise.race([this.exited, timer])
      if (this.running) killGroup(pid, 'SIGKILL')
      await this.exited
    }
    // Children the leader left behind in its group.
    killGroup(pid, 'SIGKILL')
    liveGroups.delete(pid)
  }

  /** SIGKILL to the whole group at once, as a crash would stop it: nothing drains, nothing is flushed. */
  async kill (): Promise<void> {
    const pid = this.child.pid
    if (pid === undefined) return
    killGroup(pid, 'SIGKILL')
    await this.exited
    liveGroups.delete(pid)
  }

  /** Sends a signal to the leader alone (SIGHUP: nginx reloads its config; SIGUSR2: HAProxy's master does). */
  signal (signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal)
  }

  /** The last lines of the log, for failure messages. */
  tail (lines = 40): string {
    const parts = [this.logPath]
    if (this.stderrPath !== this.logPath) parts.push(this.stderrPath)
    return parts.map(path => `--- ${this.name}: ${path}\n${tailOf(path, lines)}`).join('\n')
  }
}

export function tailOf (path: string, lines = 40): string {
  if (!existsSync(path)) return '(no log)'
  return readFileSync(path, 'utf8').split('\n').slice(-lines - 1).join('\n')
}

export interface CommandOptions {
  readonly env?: NodeJS.ProcessEnv
  readonly cwd?: string
  readonly timeoutMs?: number
  /** Written to the command's stdin (a password for --password-stdin); else stdin is empty. */
  readonly input?: string
  /** Strings (passwords) shown as *** in a failure's message, which repeats the command line and output. */
  readonly secrets?: readonly string[]
}

export interface CommandResult {
  readonly stdout: string
  readonly stderr: string
}

export class CommandError extends Error {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string

  constructor (line: string, code: number | null, signal: string | null, stdout: string, stderr: string, secrets: readonly string[] = []) {
    const how = signal === null ? `exited with ${String(code)}` : `was killed by ${signal}`
    super(redact(`\`${line}\` ${how}\n${lastChars(stderr || stdout, 4000)}`, secrets))
    this.name = 'CommandError'
    this.code = code
    this.stdout = stdout
    this.stderr = stderr
  }
}

function redact (text: string, secrets: readonly string[]): string {
  return secrets.filter(secret => secret !== '').reduce((shown, secret) => shown.split(secret).join('***'), text)
}

function lastChars (text: string, n: number): string {
  return text.length > n ? '...' + text.slice(-n) : text
}

/** Runs a command to completion; rejects with its stderr when it fails or times out. */
export async function run (command: string, args: readonly string[], options: CommandOptions = {}): Promise<CommandResult> {
  const line = [command, ...args].join(' ')
  const child = spawn(command, [...args], {
    cwd: options.cwd,
    env: options.env ?? process.env,
    detached: true,
    stdio: ['pipe', 'pipe', 'pipe']
  })
  // Without input, stdin is at its end at once, as /dev/null would be.
  child.stdin.on('error', () => {}) // a command that exits without reading it
  child.stdin.end(options.input ?? '')
  const pid = child.pid
  if (pid !== undefined) liveGroups.add(pid)
  const stdout: Buffer[] = []
  const stderr: Buffer[] = []
  child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk))
  child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk))
  const timeoutMs = options.timeoutMs ?? 300_000
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    if (pid !== undefined) killGroup(pid, 'SIGKILL')
  }, timeoutMs)
  try {
    const [code, signal] = await once(child, 'close') as [number | null, NodeJS.Signals | null]
    const out = Buffer.concat(stdout).toString('utf8')
    const err = Buffer.concat(stderr).toString('utf8')
    const secrets = options.secrets ?? []
    if (timedOut) throw new CommandError(line, code, `SIGKILL after ${timeoutMs} ms`, out, err, secrets)
    if (code !== 0) throw new CommandError(line, code, signal, out, err, secrets)
    return { stdout: out, stderr: err }
  } finally {
    clearTimeout(timer)
    if (pid !== undefined) {
      killGroup(pid, 'SIGKILL')
      liveGroups.delete(pid)
    }
  }
}
