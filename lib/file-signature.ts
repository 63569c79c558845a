// What changes when a file is replaced, however it is replaced: rewritten in
// place, renamed over, or a symlink swapped (Kubernetes mounts Secrets that
// way, which a file watch misses). Files the mirror re-reads on a change (TLS
// certificates, htpasswd) are polled with it.

import { stat } from 'node:fs/promises'

export async function fileSignature (paths: readonly string[]): Promise<string> {
  const parts = await Promise.all(paths.map(async path => {
    const s = await stat(path).catch(() => undefined)
    return s === undefined ? `${path}:missing` : `${path}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`
  }))
  return parts.join('|')
}

/**
 * Files polled for a change: every `interval` (once started) or on check(),
 * their signature is compared with the last one seen, and `changed` runs once
 * per change found, never two at once. A caller that finds the new contents
 * unusable keeps what it has; the next change is tried again.
 */
export class FileWatch {
  readonly #paths: readonly string[]
  readonly #changed: () => Promise<void>
  #seen: string
  #timer: NodeJS.Timeout | undefined
  #checking: Promise<void> | undefined

  private constructor (paths: readonly string[], seen: string, changed: () => Promise<void>) {
    this.#paths = paths
    this.#seen = seen
    this.#changed = changed
  }

  /** Takes the files' signature now, before they are first read, so a change during the read is seen. */
  static async of (paths: readonly string[], changed: () => Promise<void>): Promise<FileWatch> {
    return new FileWatch(paths, await fileSignature(paths), changed)
  }

  /** Polls every `interval` milliseconds from now on (again: no second timer). */
  start (interval: number): void {
    this.#timer ??= setInterval(() => { void this.check() }, interval).unref()
  }

  /** Looks for a change now; resolves once a change found was handled. */
  async check (): Promise<void> {
    this.#checking ??= this.#check().finally(() => { this.#checking = undefined })
    await this.#checking
  }

  async #check (): Promise<void> {
    const now = await fileSignature(this.#paths)
    if (now === this.#seen) return
    this.#seen = now
    await this.#changed()
  }

  stop (): void {
    clearInterval(this.#timer)
    this.#timer = undefined
  }
}
