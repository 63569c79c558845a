// Every error class of the mirror, told apart with instanceof.
//
// RegistryErrors: one class per OCI distribution error code, each with its HTTP
// status, so a failure anywhere in the mirror can be answered with the spec's
// envelope by a single piece of code (lib/http/envelope.ts). Their messages are
// meant for clients; anything else that escapes is a 500 UNKNOWN whose
// internals stay in the log.
//
// The other classes are failures inside the mirror (content checks, the HTTP
// response) and of its commands (config, warm, export, import, the CLI).

export interface ErrorDetail { readonly [key: string]: unknown }

// --- OCI distribution errors, answered to clients ---

export abstract class RegistryError extends Error {
  abstract readonly code: string
  abstract readonly status: number
  readonly detail: unknown
  /** Extra response headers, e.g. Retry-After on TOOMANYREQUESTS. */
  readonly headers: Readonly<Record<string, string>>

  constructor (message: string, detail?: unknown, headers: Record<string, string> = {}) {
    super(message)
    this.name = new.target.name
    this.detail = detail ?? null
    this.headers = headers
  }
}

export class BlobUnknownError extends RegistryError { readonly code = 'BLOB_UNKNOWN'; readonly status = 404 }
export class ManifestUnknownError extends RegistryError { readonly code = 'MANIFEST_UNKNOWN'; readonly status = 404 }
export class NameUnknownError extends RegistryError { readonly code = 'NAME_UNKNOWN'; readonly status = 404 }
export class NameInvalidError extends RegistryError { readonly code = 'NAME_INVALID'; readonly status = 400 }
export class DigestInvalidError extends RegistryError { readonly code = 'DIGEST_INVALID'; readonly status = 400 }
export class ManifestInvalidError extends RegistryError { readonly code = 'MANIFEST_INVALID'; readonly status = 400 }
export class SizeInvalidError extends RegistryError { readonly code = 'SIZE_INVALID'; readonly status = 400 }
export class RangeInvalidError extends RegistryError { readonly code = 'RANGE_INVALID'; readonly status = 416 }
export class PaginationNumberInvalidError extends RegistryError { readonly code = 'PAGINATION_NUMBER_INVALID'; readonly status = 400 }
export class UnsupportedError extends RegistryError { readonly code = 'UNSUPPORTED'; readonly status = 405 }
export class UnauthorizedError extends RegistryError { readonly code = 'UNAUTHORIZED'; readonly status = 401 }
export class DeniedError extends RegistryError { readonly code = 'DENIED'; readonly status = 403 }
/** A token request the mirror's token endpoint cannot take (an OAuth2 grant other than password, a form it cannot read). */
export class TokenRequestInvalidError extends RegistryError { readonly code = 'UNSUPPORTED'; readonly status = 400 }
export class TooManyRequestsError extends RegistryError { readonly code = 'TOOMANYREQUESTS'; readonly status = 429 }
export class UnavailableError extends RegistryError { readonly code = 'UNAVAILABLE'; readonly status = 503 }
/**
 * The blob store failed with something other than "not found": a volume's EACCES or EIO, a
 * bucket's 500, SlowDown or timeout. Answered 503 with a message that names no internals; the
 * cause is kept for the log. Never a reason to drop what the index says is cached.
 */
export class StorageUnavailableError extends UnavailableError {
  readonly operation: string
  constructor (operation: string, cause: unknown, detail?: unknown) {
    super('the cache storage cannot be read now; try again later', detail)
    this.operation = operation
    this.cause = cause
  }
}
/** The named registry is not one of the configured upstreams: the mirror is not an open proxy. */
export class RegistryUnknownError extends RegistryError { readonly code = 'NAME_UNKNOWN'; readonly status = 404 }
/** A path outside the distribution API. */
export class NotFoundError extends RegistryError { readonly code = 'NOT_FOUND'; readonly status = 404 }

// --- Inside the mirror ---

/** A failure of the mirror's own, with a stable code and its class name as name. */
export abstract class MirrorFailure extends Error {
  abstract readonly code: string

  constructor (message: string) {
    super(message)
    this.name = new.target.name
  }
}

/** A stored blob ended before the size its row records: the file was cut (by hand, by a crash, by bit rot). */
export class ShortFileError extends MirrorFailure { readonly code = 'SHORT_FILE' }

/** An upstream (or a host it redirected to) broke HTTP/1.1: a malformed head or chunk, conflicting lengths. */
export class UpstreamProtocolError extends MirrorFailure { readonly code = 'UPSTREAM_PROTOCOL' }

/** The connection closed before the upstream's answer was complete. */
export class UpstreamClosedError extends MirrorFailure { readonly code = 'UPSTREAM_CLOSED' }

/** An upstream connection, head or body took longer than its configured timeout. */
export class UpstreamTimeoutError extends MirrorFailure {
  readonly code: 'CONNECT_TIMEOUT' | 'HEADERS_TIMEOUT' | 'BODY_TIMEOUT'

  constructor (code: UpstreamTimeoutError['code'], message: string) {
    super(message)
    this.code = code
  }
}

/** Bytes from upstream did not match the digest or size they were asked for. */
export class DigestMismatchError extends Error {
  readonly code = 'DIGEST_MISMATCH'
  readonly expected: string
  readonly actual: string

  constructor (expected: string, actual: string, message?: string) {
    super(message ?? `content digest ${actual} does not match ${expected}`)
    this.name = 'DigestMismatchError'
    this.expected = expected
    this.actual = actual
  }
}

/** The client closed the connection before the whole body was written to it. */
export class ResponseGoneError extends Error {
  constructor () {
    super('the client closed the connection before the body was sent')
    this.name = 'ResponseGoneError'
  }
}

// --- The commands ---

/** An invalid configuration: every problem, each prefixed with its YAML path. */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID'
  readonly problems: readonly string[]

  constructor (source: string, problems: readonly string[]) {
    super(problems.map(p => `${source}: ${p}`).join('\n'))
    this.name = 'ConfigError'
    this.problems = problems
  }
}

/** Every problem with the images asked for (warm, export), one per line. */
export class ImageListError extends Error {
  readonly code = 'IMAGE_LIST_INVALID'
  readonly problems: readonly string[]

  constructor (problems: readonly string[]) {
    super(problems.join('\n'))
    this.name = 'ImageListError'
    this.problems = problems
  }
}

/** An answer of a running mirror (warm --server) that is not the content asked for, with the OCI code it gave. */
export class MirrorAnswerError extends Error {
  readonly code: string
  readonly status: number

  constructor (status: number, code: string, message: string) {
    super(message)
    this.name = 'MirrorAnswerError'
    this.status = status
    this.code = code
  }
}

/** A tar stream that cannot be read (truncated, corrupt), or a name too long to write. */
export class TarError extends MirrorFailure { readonly code = 'TAR_INVALID' }

/** The bundle could not be written (a cached blob failed its check, the disk is full...); nothing is left under its name. */
export class ExportFailedError extends MirrorFailure { readonly code = 'EXPORT_FAILED' }

/** The bundle cannot be imported; the message names the entry and what is wrong with it. */
export class BundleInvalidError extends MirrorFailure { readonly code = 'BUNDLE_INVALID' }

/** The command line is wrong: the CLI prints the message and the usage, and exits 2. */
export class UsageError extends MirrorFailure { readonly code = 'USAGE' }

/**
 * node-config cannot do its work on this node: a configuration directory that is missing or is not a
 * directory. The message names the path and what to mount or create; the loop reports it and tries again.
 */
export class NodeConfigError extends MirrorFailure { readonly code = 'NODE_CONFIG' }

// --- Errors without a class ---

/**
 * The code of a Node system error (ENOENT, ENOSPC, ECONNRESET...) or of an
 * undici one (UND_ERR_SOCKET): those have no class to test with instanceof.
 */
export function errnoCode (err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null || !('code' in err)) return undefined
  return typeof err.code === 'string' ? err.code : undefined
}

/** A write that failed for want of room (the volume, or the user's quota). */
export function isDiskFull (err: unknown): boolean {
  const code = errnoCode(err)
  return code === 'ENOSPC' || code === 'EDQUOT'
}

/** An htpasswd file that cannot be read or parsed, or an entry that cannot be added; the message names the file and line. */
export class HtpasswdError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'HtpasswdError'
  }
}
