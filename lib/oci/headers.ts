// What the mirror reads from HTTP headers it did not write: a header's first
// value, a Content-Length that is a plain decimal number, and a rate limit.

export type HeaderMap = Readonly<Record<string, string | string[] | undefined>>

/** The first value of a header (undici and node:http give repeated ones as arrays). */
export function header (headers: HeaderMap, name: string): string | undefined {
  const v = headers[name]
  return Array.isArray(v) ? v[0] : v
}

/** The Content-Length when it is a plain non-negative integer; anything else is no length at all. */
export function contentLength (headers: HeaderMap): number | undefined {
  const length = header(headers, 'content-length')
  if (length === undefined || !/^\d+$/.test(length)) return undefined
  const n = Number(length)
  return Number.isSafeInteger(n) ? n : undefined
}

const PASSED_THROUGH = ['ratelimit-limit', 'ratelimit-remaining', 'docker-ratelimit-source']

/** Headers of an upstream answer that the mirror hands on to its client (rate limits). */
export function passedThroughHeaders (headers: HeaderMap): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of PASSED_THROUGH) {
    const v = header(headers, name)
    if (v !== undefined) out[name] = v
  }
  return out
}

/** `100;w=21600`: a count, then optionally its window in seconds; anything else is not read. */
const RATE = /^\s*(\d{1,12})\s*(?:;\s*w=(\d{1,12}))?\s*(?:;|$)/

/**
 * What an upstream says is left of its rate limit (Docker Hub's `ratelimit-remaining`
 * and `ratelimit-limit`); undefined when it says nothing readable.
 */
export function rateLimit (headers: HeaderMap): { remaining: number, limit: number | undefined, windowSeconds: number | undefined } | undefined {
  const remaining = RATE.exec(header(headers, 'ratelimit-remaining') ?? '')
  if (remaining === null) return undefined
  const limit = RATE.exec(header(headers, 'ratelimit-limit') ?? '')
  const window = remaining[2] ?? limit?.[2]
  return {
    remaining: Number(remaining[1]),
    limit: limit === null ? undefined : Number(limit[1]),
    windowSeconds: window === undefined ? undefined : Number(window)
  }
}

/** The Authorization value of HTTP Basic credentials. */
export function basicAuthorization (username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`
}
