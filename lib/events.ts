// What the mirror reports as it works: each answer an upstream gave, how each
// blob download ended, what was served without caching, what eviction
// removed, each finished client request. Defined at the bottom of the house so
// that any layer may report and any sink may listen (the Prometheus metrics,
// the request counters of `registry-mirror stats`, a test's recorder) without
// either knowing the other. Metrics implement every event, so an event added
// here is a compile error until it is counted.

/** How the cache answered a request; logged per request and counted in metrics. */
export type CacheOutcome = 'hit' | 'miss' | 'joined' | 'stale' | 'revalidated'

/** The outcomes answered from the cache (the rest came from upstream): one definition for /metrics, stats and the status page. */
export const FROM_CACHE: ReadonlySet<string> = new Set<CacheOutcome>(['hit', 'stale', 'revalidated'])

export type RequestKind = 'manifest' | 'blob' | 'tags' | 'referrers' | 'catalog' | 'other'

export interface RequestRecord {
  readonly method: string
  readonly kind: RequestKind
  readonly status: number
  readonly outcome: CacheOutcome | 'error' | undefined
  readonly seconds: number
  readonly bytes: number
  /** The client's User-Agent as sent; undefined when it sent none. */
  readonly userAgent?: string | undefined
  /** The repository's cache key (`<upstream>/<name>`) of a request the caller was let read. */
  readonly repository?: string | undefined
  /** A manifest asked for by tag, not by digest. */
  readonly byTag?: boolean | undefined
  /** An image manifest (not an index) sent whole: one image pulled, for one platform. */
  readonly pull?: boolean | undefined
  /** A request of the registry API (/v2/…, the token endpoint), not of /metrics, /healthz or the status page. */
  readonly api?: boolean | undefined
}

export interface UpstreamAnswer {
  readonly upstream: string
  /** manifest, blob, tags, referrers, token */
  readonly kind: string
  readonly method: string
  readonly status: number
  /** What the upstream said is left of its rate limit (Docker Hub's `ratelimit-remaining`), when it said it. */
  readonly rateLimit?: RateLimit | undefined
}

/** An upstream's rate limit as its `ratelimit-limit` and `ratelimit-remaining` headers put it (`100;w=21600`). */
export interface RateLimit {
  readonly remaining: number
  readonly limit: number | undefined
  /** The window the limit is counted over. */
  readonly windowSeconds: number | undefined
}

export type RefusalReason = 'realm-host' | 'redirect-host' | 'link-local'

/** Why a client's login failed, or why it was not tried (too many failures before). */
export type AuthFailureReason = 'bad-credentials' | 'malformed' | 'unsupported-scheme' | 'rate-limited' | 'invalid-token'

/** Why a client was not let read what it asked for. */
export type DenialReason = 'login-required' | 'not-allowed' | 'anonymous-network' | 'upstream-denied'

/** Why a client connection was closed as it was accepted: its address held its share (limits.maxConnectionsPerClient), or the listener was full (limits.maxConnections). */
export type ConnectionRefusal = 'per-client' | 'max-connections'

/** How a passthrough upstream answered whether a caller may read a repository. */
export type PassthroughResult = 'allowed' | 'denied' | 'unknown' | 'unavailable'

/** How a download into the cache ended. */
export type DownloadResult = 'ok' | 'mismatch' | 'error' | 'disk-full'

/** How a blob served from upstream without caching it ended. */
export type UncachedResult = 'ok' | 'mismatch' | 'error'

export type EvictionReason = 'age' | 'size' | 'space'

/** How one try of putting a verified blob into a remote store ended: stored, to be tried again, or given up. */
export type StoreUploadResult = 'ok' | 'retry' | 'failed'

export interface EvictedItem {
  readonly kind: 'blob' | 'manifest'
  readonly digest: string
  readonly size: number
  readonly reason: EvictionReason
  /** Tags that went with a manifest. */
  readonly tags: ReadonlyArray<{ readonly repository: string, readonly tag: string }>
}

export interface MirrorEvents {
  /** Every request an upstream answered, token fetches included. */
  upstreamResponse: (answer: UpstreamAnswer) => void
  tokenFetched: (upstream: string) => void
  /** An upstream request sent again after a dropped connection. */
  upstreamRetried: (upstream: string) => void
  /** A request the mirror would not make: a token realm or redirect off the upstream's hosts, or to a link-local address. */
  upstreamRefused: (upstream: string, reason: RefusalReason) => void
  /** An upstream went down (with when it is tried again) or came back (undefined). */
  upstreamState: (upstream: string, down: { since: number, until: number } | undefined) => void
  downloadStarted: (digest: string, upstream: string) => void
  downloadEnded: (digest: string, upstream: string, result: DownloadResult, bytes: number) => void
  /** A blob is being served straight from upstream, not cached (the disk has no room for it). */
  uncachedStarted: (digest: string, upstream: string, reason: string) => void
  uncachedEnded: (digest: string, upstream: string, result: UncachedResult, bytes: number) => void
  evicted: (item: EvictedItem) => void
  /** Bytes the background scrub re-hashed. */
  scrubbed: (bytes: number) => void
  /** A cached blob or manifest found not to match its digest, and removed. */
  corruptRemoved: (kind: 'blob' | 'manifest', digest: string) => void
  /** An index write an answer did not depend on failed (disk full, I/O error); the answer was served anyway. */
  indexWriteFailed: (operation: string) => void
  /** A try at putting a verified blob into the remote store (a bucket) ended. */
  storeUpload: (result: StoreUploadResult, bytes: number) => void
  /** A client's credentials were refused (or not checked: too many failures from its address). */
  authFailed: (reason: AuthFailureReason) => void
  /** A client was refused a repository by the access rules (or, anonymous, by its network). */
  accessDenied: (reason: DenialReason) => void
  /** A passthrough upstream was asked whether a caller may read a repository. */
  passthroughChecked: (upstream: string, result: PassthroughResult) => void
  /** A client connection closed as it was accepted (see ConnectionRefusal). */
  connectionRefused: (reason: ConnectionRefusal) => void
  requestFinished: (record: RequestRecord) => void
}

/** A listener for some of the events. */
export type EventSink = Partial<MirrorEvents>

/** Hands every event to each sink in turn. */
export class Events implements MirrorEvents {
  readonly #sinks: readonly EventSink[]

  constructor (sinks: ReadonlyArray<EventSink | undefined> = []) {
    this.#sinks = sinks.filter((s): s is EventSink => s !== undefined)
  }

  upstreamResponse (answer: UpstreamAnswer): void { for (const s of this.#sinks) s.upstreamResponse?.(answer) }
  tokenFetched (upstream: string): void { for (const s of this.#sinks) s.tokenFetched?.(upstream) }
  upstreamRetried (upstream: string): void { for (const s of this.#sinks) s.upstreamRetried?.(upstream) }
  upstreamRefused (upstream: string, reason: RefusalReason): void { for (const s of this.#sinks) s.upstreamRefused?.(upstream, reason) }
  upstreamState (upstream: string, down: { since: number, until: number } | undefined): void { for (const s of this.#sinks) s.upstreamState?.(upstream, down) }
  downloadStarted (digest: string, upstream: string): void { for (const s of this.#sinks) s.downloadStarted?.(digest, upstream) }
  downloadEnded (digest: string, upstream: string, result: DownloadResult, bytes: number): void {
    for (const s of this.#sinks) s.downloadEnded?.(digest, upstream, result, bytes)
  }

  uncachedStarted (digest: string, upstream: string, reason: string): void { for (const s of this.#sinks) s.uncachedStarted?.(digest, upstream, reason) }
  uncachedEnded (digest: string, upstream: string, result: UncachedResult, bytes: number): void {
    for (const s of this.#sinks) s.uncachedEnded?.(digest, upstream, result, bytes)
  }

  evicted (item: EvictedItem): void { for (const s of this.#sinks) s.evicted?.(item) }
  scrubbed (bytes: number): void { for (const s of this.#sinks) s.scrubbed?.(bytes) }
  corruptRemoved (kind: 'blob' | 'manifest', digest: string): void { for (const s of this.#sinks) s.corruptRemoved?.(kind, digest) }
  indexWriteFailed (operation: string): void { for (const s of this.#sinks) s.indexWriteFailed?.(operation) }
  storeUpload (result: StoreUploadResult, bytes: number): void { for (const s of this.#sinks) s.storeUpload?.(result, bytes) }
  authFailed (reason: AuthFailureReason): void { for (const s of this.#sinks) s.authFailed?.(reason) }
  accessDenied (reason: DenialReason): void { for (const s of this.#sinks) s.accessDenied?.(reason) }
  passthroughChecked (upstream: string, result: PassthroughResult): void { for (const s of this.#sinks) s.passthroughChecked?.(upstream, result) }
  connectionRefused (reason: ConnectionRefusal): void { for (const s of this.#sinks) s.connectionRefused?.(reason) }
  requestFinished (record: RequestRecord): void { for (const s of this.#sinks) s.requestFinished?.(record) }
}
