// One class per OCI distribution error code, each with its HTTP status, so a
// failure anywhere in the mirror can be answered with the spec's envelope by a
// single piece of code (lib/http/errors.ts). Messages of RegistryErrors are
// meant for clients; anything else that escapes is a 500 UNKNOWN whose
// internals stay in the log.

export interface ErrorDetail { readonly [key: string]: unknown }

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
export class TooManyRequestsError extends RegistryError { readonly code = 'TOOMANYREQUESTS'; readonly status = 429 }
export class UnavailableError extends RegistryError { readonly code = 'UNAVAILABLE'; readonly status = 503 }
/** The named registry is not one of the configured upstreams: the mirror is not an open proxy. */
export class RegistryUnknownError extends RegistryError { readonly code = 'NAME_UNKNOWN'; readonly status = 404 }

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

/** The upstream answered in a way the mirror cannot use (bad bytes, unexpected status). */
export class UpstreamError extends Error {
  readonly code: string
  readonly upstream: string
  readonly status: number | undefined

  constructor (upstream: string, code: string, message: string, status?: number) {
    super(message)
    this.name = 'UpstreamError'
    this.upstream = upstream
    this.code = code
    this.status = status
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

/** A path outside the distribution API. */
export class NotFoundError extends RegistryError { readonly code = 'NOT_FOUND'; readonly status = 404 }
