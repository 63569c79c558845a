export async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

/** Thrown by a waitFor() check when waiting longer cannot help (the daemon exited). */
export class WaitAborted extends Error {
  override name = 'WaitAborted'
}

/**
 * Polls check() until it returns true or the time is up; then throws with
 * describe() so the failure says what was awaited and what the logs show.
 */
export async function waitFor (what: string, check: () => Promise<boolean> | boolean, options: { timeoutMs?: number, intervalMs?: number, describe?: () => string } = {}): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000)
  const details = (): string => options.describe === undefined ? '' : '\n' + options.describe()
  let lastError: unknown
  for (;;) {
    try {
      if (await check()) return
    } catch (err) {
      if (err instanceof WaitAborted) throw new Error(`gave up waiting for ${what}: ${err.message}${details()}`)
      lastError = err
    }
    if (Date.now() > deadline) {
      const cause = lastError instanceof Error ? `\nlast error: ${lastError.message}` : ''
      throw new Error(`timed out waiting for ${what}${cause}${details()}`)
    }
    await sleep(options.intervalMs ?? 100)
  }
}
