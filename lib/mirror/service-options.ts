// What every pull-through service is built on: the local cache, the upstream
// clients by name, and whether asking upstream is allowed at all.

import type { LocalCache } from '../cache/local-cache.js'
import { DeniedError } from '../errors.js'
import type { UpstreamClient } from '../upstream/client.js'
import type { Route } from '../upstream/routing.js'

export interface ServiceOptions {
  readonly cache: LocalCache
  /** The client of a configured upstream, by its key (`docker.io`). */
  readonly upstream: (name: string) => UpstreamClient
  /** The clock, for time-based answers (tag TTL, referrers TTL). */
  readonly now?: (() => number) | undefined
  /** Never ask upstream: answer from the cache alone, whatever its age; what it lacks is unknown. */
  readonly offline?: boolean | undefined
}

/**
 * Upstream refused a client's own login (passthrough mode): that answer is
 * the client's, never replaced by a stale one from the cache.
 */
export function refusedCaller (route: Route, err: unknown): boolean {
  return route.caller !== undefined && err instanceof DeniedError
}
