// distribution 2.8 writes one Apache "combined" line per request to stdout
// (gorilla/handlers), whatever log.level says, once the response is complete:
//   127.0.0.1 - - [23/Nov/2026:15:43:31 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
// (Its JSON "response completed" lines go to stderr, and only at level info.)

export interface RegistryRequest {
  readonly method: string
  /** Without the query string. */
  readonly path: string
  /** Path and query, as sent. */
  readonly uri: string
  readonly status: number
  readonly bytes: number
  readonly userAgent: string
}

const combined = /^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-) "(?:[^"\\]|\\.)*" "((?:[^"\\]|\\.)*)"/

export function parseAccessLog (text: string): RegistryRequest[] {
  const requests: RegistryRequest[] = []
  for (const line of text.split('\n')) {
    const match = combined.exec(line)
    if (match === null) continue
    const [, method = '', uri = '', status = '0', bytes = '-', userAgent = ''] = match
    const query = uri.indexOf('?')
    requests.push({
      method,
      uri,
      path: query === -1 ? uri : uri.slice(0, query),
      status: Number(status),
      bytes: bytes === '-' ? 0 : Number(bytes),
      userAgent
    })
  }
  return requests
}

const blobPath = /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/
const manifestPath = /^\/v2\/.+\/manifests\/[^/]+$/

export function isBlobGet (request: Pick<RegistryRequest, 'method' | 'path'>): boolean {
  return request.method === 'GET' && blobPath.test(request.path)
}

export function isManifestRequest (request: Pick<RegistryRequest, 'path'>): boolean {
  return manifestPath.test(request.path)
}
