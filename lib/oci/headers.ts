// The two things the mirror reads from HTTP headers it did not write: a
// header's first value, and a Content-Length that is a plain decimal number.

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

/** The Authorization value of HTTP Basic credentials. */
export function basicAuthorization (username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`
}
