// wrk (Debian's package) as the load generator: C, epoll, a few percent of a
// core at the rates measured here. autocannon was tried first and could not
// drive a 30 MB body past ~15 MB/s on this machine, so it would have measured
// itself. A Lua done() hook prints the summary as one JSON line.

import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { run } from '../harness/process.js'

const REPORT_SCRIPT = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
`

export interface WrkOptions {
  readonly url: string
  readonly connections: number
  readonly seconds: number
  readonly headers?: Readonly<Record<string, string>>
  /** Where the Lua report script is written. */
  readonly workDir: string
}

export interface WrkResult {
  readonly requests: number
  readonly bytes: number
  readonly seconds: number
  readonly requestsPerSecond: number
  readonly bytesPerSecond: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
  /** Socket errors, timeouts and non-2xx/3xx answers. */
  readonly errors: number
}

/** Threads for the client: one per core of this machine, at most one per connection. */
export const WRK_THREADS = 2

export async function wrk (options: WrkOptions): Promise<WrkResult> {
  const script = join(options.workDir, 'wrk-report.lua')
  await writeFile(script, REPORT_SCRIPT)
  const headers = Object.entries(options.headers ?? {}).flatMap(([name, value]) => ['-H', `${name}: ${value}`])
  const threads = Math.min(WRK_THREADS, options.connections)
  const { stdout } = await run('wrk', [
    '-t', String(threads), '-c', String(options.connections), '-d', `${options.seconds}s`,
    '--timeout', '60s', '-s', script, ...headers, options.url
  ], { timeoutMs: (options.seconds + 120) * 1000 })
  const line = stdout.split('\n').find(l => l.startsWith('WRK_JSON '))
  if (line === undefined) throw new Error(`wrk printed no summary:\n${stdout}`)
  const parsed: unknown = JSON.parse(line.slice('WRK_JSON '.length))
  const n = (key: string): number => {
    const value = typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>)[key] : undefined
    if (typeof value !== 'number') throw new Error(`wrk summary without ${key}: ${line}`)
    return value
  }
  const seconds = n('duration_us') / 1e6
  return {
    requests: n('requests'),
    bytes: n('bytes'),
    seconds,
    requestsPerSecond: n('requests') / seconds,
    bytesPerSecond: n('bytes') / seconds,
    p50Ms: n('p50_us') / 1000,
    p99Ms: n('p99_us') / 1000,
    maxMs: n('max_us') / 1000,
    errors: n('connect') + n('read') + n('write') + n('status') + n('timeout')
  }
}
