// Workload 13's load: N people with the status page open, each fetching it
// again every second (as its script does every few seconds; a second is
// harsher), while wrk measures manifests by digest. Each viewer waits for its
// page before the next second's fetch, as a browser would.

export interface ViewersResult {
  readonly pages: number
  readonly errors: number
  /** Bytes of HTML received. */
  readonly bytes: number
}

export interface Viewers {
  stop: () => Promise<ViewersResult>
}

export function startStatusViewers (url: string, count: number, intervalMs = 1000): Viewers {
  let stopped = false
  let pages = 0
  let errors = 0
  let bytes = 0
  const viewer = async (offset: number): Promise<void> => {
    // Spread over the first second, as people do not all arrive at once.
    await new Promise(resolve => setTimeout(resolve, offset))
    while (!stopped) {
      const started = Date.now()
      try {
        const res = await fetch(url, { headers: { accept: 'text/html' } })
        const text = await res.text()
        if (res.status === 200 && text.includes('id="status"')) {
          pages++
          bytes += text.length
        } else {
          errors++
        }
      } catch {
        errors++
      }
      await new Promise(resolve => setTimeout(resolve, Math.max(0, intervalMs - (Date.now() - started))))
    }
  }
  const running = Array.from({ length: count }, async (_, i) => await viewer(Math.floor((i * intervalMs) / count)))
  return {
    stop: async () => {
      stopped = true
      await Promise.all(running)
      return { pages, errors, bytes }
    }
  }
}
