// Addresses as they appear in the config: where to listen, which registry
// hosts are mirrored, where their upstreams live. Like units.ts, each parser
// throws a plain Error naming the bad value; the loader adds the YAML path.

import { isIP, isIPv6 } from 'node:net'

const HOST_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i
const PORT = /^\d{1,5}$/

function isHostname (host: string): boolean {
  if (host.length > 253) return false
  // All-numeric dotted names are IPv4 addresses or mistakes ("999.1.1.1"), never hostnames.
  if (/^[\d.]+$/.test(host)) return isIP(host) === 4
  return host.split('.').every(label => HOST_LABEL.test(label))
}

function parsePort (text: string, min: number): number | undefined {
  if (!PORT.test(text)) return undefined
  const port = Number(text)
  return port >= min && port <= 65535 ? port : undefined
}

/** Splits `host:port` / `[v6]:port` / `host` / `[v6]`; undefined when the shape is wrong. */
function splitHostPort (text: string): { host: string, port: string | undefined, bracketed: boolean } | undefined {
  if (text.startsWith('[')) {
    const close = text.indexOf(']')
    if (close < 0) return undefined
    const rest = text.slice(close + 1)
    if (rest !== '' && !rest.startsWith(':')) return undefined
    return { host: text.slice(1, close), port: rest === '' ? undefined : rest.slice(1), bracketed: true }
  }
  const colon = text.lastIndexOf(':')
  if (colon < 0) return { host: text, port: undefined, bracketed: false }
  return { host: text.slice(0, colon), port: text.slice(colon + 1), bracketed: false }
}

export interface ListenAddress { readonly host: string, readonly port: number }

/**
 * `0.0.0.0:5000`, `localhost:5000`, `[::]:5000` or `:5000`. An empty host
 * means every IPv4 interface (`0.0.0.0`), the same as the shipped default;
 * write `[::]:5000` for IPv6 too. Port 0 asks the OS for a free port.
 */
export function parseListen (text: string): ListenAddress {
  const expected = `expected "host:port", "[ipv6]:port" or ":port", got ${JSON.stringify(text)}`
  const parts = splitHostPort(text.trim())
  if (parts === undefined || parts.port === undefined) throw new Error(expected)
  const { host, bracketed } = parts
  if (bracketed) {
    if (!isIPv6(host)) throw new Error(`${expected} ("${host}" is not an IPv6 address)`)
  } else if (host.includes(':')) {
    throw new Error(`${expected} (put IPv6 addresses in brackets, e.g. "[::]:5000")`)
  } else if (host !== '' && !isHostname(host)) {
    throw new Error(`${expected} ("${host}" is not a hostname or IPv4 address)`)
  }
  const port = parsePort(parts.port, 0)
  if (port === undefined) throw new Error(`${expected} (the port must be a number from 0 to 65535)`)
  return { host: host === '' ? '0.0.0.0' : host, port }
}

/**
 * A registry host as clients name it, the key under `upstreams`:
 * `docker.io`, `ghcr.io`, `localhost:5001`, `10.0.0.7:5000`, `[fd00::7]:5000`.
 * Lowercase only, because it is compared verbatim with `?ns=` and path
 * prefixes sent by clients. Returned unchanged.
 */
export function parseRegistryHost (text: string): string {
  const expected = `expected a registry host like "docker.io" or "localhost:5001", got ${JSON.stringify(text)}`
  if (text !== text.toLowerCase()) throw new Error(`${expected} (registry hosts are written in lowercase)`)
  if (/^[a-z][a-z0-9+.-]*:\/\//.test(text)) throw new Error(`${expected} (the key is the host alone; the URL goes in "url")`)
  const parts = splitHostPort(text)
  if (parts === undefined) throw new Error(expected)
  const hostOk = parts.bracketed ? isIPv6(parts.host) : isHostname(parts.host)
  if (!hostOk) throw new Error(expected)
  if (parts.port !== undefined && parsePort(parts.port, 1) === undefined) {
    throw new Error(`${expected} (the port must be a number from 1 to 65535)`)
  }
  return text
}

/** A host (and port) an upstream may name for tokens and redirects: `auth.docker.io`. */
export function parseAuthHost (text: string): string {
  const expected = `expected a host like "auth.docker.io" or "auth.example:8443", got ${JSON.stringify(text)}`
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) throw new Error(`${expected} (the host alone, not a URL)`)
  try {
    return parseRegistryHost(text)
  } catch {
    throw new Error(expected)
  }
}

/**
 * An upstream's base URL: http or https, no credentials, no query or
 * fragment. Returned normalised (lowercase host, default port dropped) and
 * without a trailing slash, so callers can append `/v2/...`.
 */
export function parseUpstreamUrl (text: string): string {
  // Whatever stands between "//" and "@" may be a password: never in a message.
  const shown = text.replace(/\/\/[^/?#]*@/, '//***@')
  const expected = `expected an http(s) URL, got ${JSON.stringify(shown)}`
  const trimmed = text.trim()
  // WHATWG URL would accept "https:ghcr.io"; insist on the usual form.
  if (!/^https?:\/\//i.test(trimmed)) throw new Error(expected)
  let url: URL
  try {
    url = new URL(trimmed)
  } catch {
    throw new Error(expected)
  }
  if (url.hostname === '') throw new Error(expected)
  if (url.username !== '' || url.password !== '') {
    throw new Error(`${expected} (put credentials in "username" and "password", not in the URL)`)
  }
  if (url.search !== '' || url.hash !== '' || trimmed.includes('?') || trimmed.includes('#')) {
    throw new Error(`${expected} (no query or fragment)`)
  }
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, '')}`
}

/** The name of an environment variable, as passwordEnv gives it. */
export function parseEnvName (text: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(text)) {
    throw new Error(`expected an environment variable name like "HUB_TOKEN", got ${JSON.stringify(text)}`)
  }
  return text
}

/**
 * A CIDR network: `10.0.0.0/8`, `fd00::/8`, one host as `10.0.0.5/32`.
 * Returned unchanged. The prefix is required, so that a bare address is never
 * read as a network its writer did not mean.
 */
export function parseNetwork (text: string): string {
  const [address = '', bits, extra] = text.split('/')
  const family = isIP(address)
  const max = family === 4 ? 32 : 128
  if (family === 0 || bits === undefined || extra !== undefined || !/^\d{1,3}$/.test(bits) || Number(bits) > max) {
    const hint = family !== 0 && bits === undefined ? ` (one host: "${address}/${max}")` : ''
    throw new Error(`expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "${text}"${hint}`)
  }
  return text
}

/** An S3 bucket name (the rules AWS gives for new buckets: 3-63 of a-z, 0-9, ".", "-"). */
export function parseBucketName (text: string): string {
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(text) || text.includes('..')) {
    throw new Error(`expected an S3 bucket name (3-63 lowercase letters, digits, "." and "-"), got ${JSON.stringify(text)}`)
  }
  return text
}

/** An S3 region name such as "us-east-1" (Ceph and MinIO take whatever is given; "us-east-1" is their usual one). */
export function parseRegion (text: string): string {
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(text)) throw new Error(`expected a region name like "us-east-1", got ${JSON.stringify(text)}`)
  return text
}

/** A key prefix for a bucket shared with other data: "" or path segments, always ending in "/". */
export function parseKeyPrefix (text: string): string {
  const trimmed = text.replace(/^\/+/, '')
  if (trimmed === '') return ''
  if (!/^[A-Za-z0-9!_.*'()/-]+$/.test(trimmed) || trimmed.split('/').some(s => s === '.' || s === '..')) {
    throw new Error(`expected a key prefix of letters, digits and !_.*'()/- like "mirror/", got ${JSON.stringify(text)}`)
  }
  return trimmed.endsWith('/') ? trimmed : `${trimmed}/`
}
