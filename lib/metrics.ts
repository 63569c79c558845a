// Prometheus metrics (prom-client), one registry per mirror: what was asked,
// how the cache answered, what it cost upstream, and what the cache holds.

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { FROM_CACHE, type ConnectionRefusal, type DownloadResult, type EvictedItem, type MirrorEvents, type RefusalReason, type AuthFailureReason, type DenialReason, type PassthroughResult, type RequestRecord, type StoreUploadResult, type UncachedResult, type UpstreamAnswer } from './events.js'

/** What the gauges read, when Prometheus scrapes. */
export interface CacheState {
  /** What the cache holds, from the index (read at most once a second). */
  summary: () => { bytes: number, blobs: number, manifests: number, tags: number, pinnedBytes: number }
  downloadsInFlight: () => number
  downloadClients: () => number
  /** Log lines the log destination could not take (see log-sink.ts), when it counts them. */
  logLinesDropped?: (() => number) | undefined
}

/** How long one reading of the cache's summary serves the gauges. */
const SUMMARY_MS = 1000

export class Metrics implements MirrorEvents {
  readonly registry = new Registry()
  readonly #requests: Counter<'kind' | 'method' | 'outcome'>
  readonly #latency: Histogram<'kind' | 'outcome'>
  readonly #served: Counter<'source'>
  readonly #upstreamBytes: Counter<'upstream'>
  readonly #upstreamRequests: Counter<'upstream' | 'kind' | 'status'>
  readonly #tokens: Counter<'upstream'>
  readonly #retries: Counter<'upstream'>
  readonly #refused: Counter<'upstream' | 'reason'>
  readonly #authFailures: Counter<'reason'>
  readonly #denied: Counter<'reason'>
  readonly #passthrough: Counter<'upstream' | 'result'>
  readonly #upstreamUp: Gauge<'upstream'>
  readonly #mismatches: Counter<'upstream'>
  readonly #evictions: Counter<'reason'>
  readonly #evictedBytes: Counter<'reason'>
  readonly #uncached: Counter<'reason'>
  readonly #indexWriteFailures: Counter<'operation'>
  readonly #storeUploads: Counter<'result'>
  readonly #storeUploadBytes: Counter
  readonly #scrubbed: Counter
  readonly #corrupt: Counter<'kind'>
  readonly #connectionsRefused: Counter<'reason'>
  #state: CacheState | undefined
  #summary: { at: number, value: ReturnType<CacheState['summary']> } | undefined

  constructor () {
    const registers = [this.registry]
    this.#requests = new Counter({ name: 'registry_mirror_requests_total', help: 'Client requests by kind, method and cache outcome', labelNames: ['kind', 'method', 'outcome'], registers })
    this.#latency = new Histogram({
      name: 'registry_mirror_request_duration_seconds',
      help: 'Time to answer a client request in full, by kind and cache outcome',
      labelNames: ['kind', 'outcome'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers
    })
    this.#served = new Counter({ name: 'registry_mirror_served_bytes_total', help: 'Body bytes sent to clients, by where they came from (cache or upstream)', labelNames: ['source'], registers })
    this.#upstreamBytes = new Counter({ name: 'registry_mirror_upstream_fetched_bytes_total', help: 'Blob bytes fetched from each upstream', labelNames: ['upstream'], registers })
    this.#upstreamRequests = new Counter({ name: 'registry_mirror_upstream_requests_total', help: 'Requests answered by upstreams, by upstream, kind and HTTP status', labelNames: ['upstream', 'kind', 'status'], registers })
    this.#tokens = new Counter({ name: 'registry_mirror_upstream_token_fetches_total', help: 'Bearer tokens fetched from upstream token services', labelNames: ['upstream'], registers })
    this.#retries = new Counter({ name: 'registry_mirror_upstream_retries_total', help: 'Upstream requests retried after a dropped connection', labelNames: ['upstream'], registers })
    this.#authFailures = new Counter({ name: 'registry_mirror_auth_failures_total', help: 'Client logins refused: bad or unreadable credentials, or not checked because the address failed too often', labelNames: ['reason'], registers })
    this.#passthrough = new Counter({ name: 'registry_mirror_passthrough_checks_total', help: 'Passthrough upstreams asked whether a caller may read a repository, by answer: allowed, denied, unknown (404), unavailable', labelNames: ['upstream', 'result'], registers })
    this.#denied = new Counter({ name: 'registry_mirror_access_denied_total', help: 'Requests refused by the access rules: a login required, a user not allowed, or an anonymous caller outside the allowed networks', labelNames: ['reason'], registers })
    this.#refused = new Counter({ name: 'registry_mirror_upstream_refused_total', help: 'Requests the mirror would not make for an upstream: a token realm or redirect off its hosts, or to a link-local address', labelNames: ['upstream', 'reason'], registers })
    this.#upstreamUp = new Gauge({ name: 'registry_mirror_upstream_up', help: 'Whether an upstream answers (0 while its circuit is open after repeated connect failures or timeouts)', labelNames: ['upstream'], registers })
    this.#mismatches = new Counter({ name: 'registry_mirror_digest_mismatches_total', help: 'Blobs from upstream whose bytes did not match their digest (never cached)', labelNames: ['upstream'], registers })
    this.#evictions = new Counter({ name: 'registry_mirror_evictions_total', help: 'Blobs and manifests evicted, by reason', labelNames: ['reason'], registers })
    this.#evictedBytes = new Counter({ name: 'registry_mirror_evicted_bytes_total', help: 'Bytes evicted, by reason', labelNames: ['reason'], registers })
    this.#uncached = new Counter({ name: 'registry_mirror_uncached_blobs_total', help: 'Blobs served from upstream without caching them (disk full)', labelNames: ['reason'], registers })
    this.#storeUploads = new Counter({ name: 'registry_mirror_store_uploads_total', help: 'Tries at putting a verified blob into the remote store (a bucket), by result: ok, retry (to be tried again), failed (given up; nothing indexed)', labelNames: ['result'], registers })
    this.#storeUploadBytes = new Counter({ name: 'registry_mirror_store_uploaded_bytes_total', help: 'Bytes of blobs put into the remote store', registers })
    this.#indexWriteFailures = new Counter({ name: 'registry_mirror_index_write_failures_total', help: 'Index writes that failed (disk full, I/O error) while the answer was served anyway, by operation', labelNames: ['operation'], registers })
    this.#scrubbed = new Counter({ name: 'registry_mirror_scrubbed_bytes_total', help: 'Bytes of cached blobs the background scrub re-hashed', registers })
    this.#corrupt = new Counter({ name: 'registry_mirror_corrupt_removed_total', help: 'Cached blobs and manifests found not to match their digest (bit rot), and removed', labelNames: ['kind'], registers })
    this.#connectionsRefused = new Counter({ name: 'registry_mirror_connections_refused_total', help: 'Client connections closed as they were accepted: per-client (the address held limits.maxConnectionsPerClient) or max-connections (the listener was full)', labelNames: ['reason'], registers })
    const gauge = (name: string, help: string, read: () => number): void => {
      // eslint-disable-next-line no-new -- registered by construction
      new Gauge({ name, help, registers, collect () { this.set(read()) } })
    }
    // From the index, so manifests cached since the last eviction pass count too.
    gauge('registry_mirror_cache_bytes', 'Bytes of blobs and manifests in the cache', () => this.#read()?.bytes ?? 0)
    gauge('registry_mirror_cache_blobs', 'Blobs in the cache', () => this.#read()?.blobs ?? 0)
    gauge('registry_mirror_cache_manifests', 'Manifests in the cache', () => this.#read()?.manifests ?? 0)
    gauge('registry_mirror_cache_tags', 'Tags in the cache', () => this.#read()?.tags ?? 0)
    gauge('registry_mirror_cache_pinned_bytes', 'Bytes of pinned images', () => this.#read()?.pinnedBytes ?? 0)
    gauge('registry_mirror_downloads_in_flight', 'Upstream blob downloads under way', () => this.#state?.downloadsInFlight() ?? 0)
    gauge('registry_mirror_download_clients', 'Client responses streaming from downloads under way', () => this.#state?.downloadClients() ?? 0)
    let droppedSeen = 0
    const state = (): CacheState | undefined => this.#state
    // eslint-disable-next-line no-new -- registered by construction
    new Counter({
      name: 'registry_mirror_log_lines_dropped_total',
      help: 'Log lines dropped because the log destination failed or stalled',
      registers,
      collect () {
        const dropped = state()?.logLinesDropped?.() ?? 0
        if (dropped > droppedSeen) this.inc(dropped - droppedSeen)
        droppedSeen = dropped
      }
    })
    collectDefaultMetrics({ register: this.registry })
  }

  /** Where the gauges read from, once the cache is open. */
  watch (state: CacheState): void {
    this.#state = state
    this.#summary = undefined
  }

  #read (): ReturnType<CacheState['summary']> | undefined {
    const state = this.#state
    if (state === undefined) return undefined
    const now = Date.now()
    if (this.#summary === undefined || now - this.#summary.at >= SUMMARY_MS) this.#summary = { at: now, value: state.summary() }
    return this.#summary.value
  }

  requestFinished (r: RequestRecord): void {
    const outcome = r.outcome ?? (r.status >= 400 ? 'error' : 'none')
    this.#requests.inc({ kind: r.kind, method: r.method, outcome })
    this.#latency.observe({ kind: r.kind, outcome }, r.seconds)
    if (r.bytes > 0 && (r.kind === 'blob' || r.kind === 'manifest') && outcome !== 'error') {
      this.#served.inc({ source: FROM_CACHE.has(outcome) ? 'cache' : 'upstream' }, r.bytes)
    }
  }

  upstreamResponse (answer: UpstreamAnswer): void { this.#upstreamRequests.inc({ upstream: answer.upstream, kind: answer.kind, status: String(answer.status) }) }
  tokenFetched (upstream: string): void { this.#tokens.inc({ upstream }) }
  upstreamRetried (upstream: string): void { this.#retries.inc({ upstream }) }
  upstreamRefused (upstream: string, reason: RefusalReason): void { this.#refused.inc({ upstream, reason }) }
  authFailed (reason: AuthFailureReason): void { this.#authFailures.inc({ reason }) }
  accessDenied (reason: DenialReason): void { this.#denied.inc({ reason }) }
  passthroughChecked (upstream: string, result: PassthroughResult): void { this.#passthrough.inc({ upstream, result }) }
  connectionRefused (reason: ConnectionRefusal): void { this.#connectionsRefused.inc({ reason }) }
  upstreamState (upstream: string, down: { since: number, until: number } | undefined): void { this.#upstreamUp.set({ upstream }, down === undefined ? 1 : 0) }
  downloadStarted (): void {}

  downloadEnded (_digest: string, upstream: string, result: DownloadResult, bytes: number): void {
    this.#upstreamBytes.inc({ upstream }, bytes)
    if (result === 'mismatch') this.#mismatches.inc({ upstream })
  }

  uncachedStarted (_digest: string, _upstream: string, reason: string): void { this.#uncached.inc({ reason }) }

  uncachedEnded (_digest: string, upstream: string, result: UncachedResult, bytes: number): void {
    this.#upstreamBytes.inc({ upstream }, bytes)
    if (result === 'mismatch') this.#mismatches.inc({ upstream })
  }

  indexWriteFailed (operation: string): void { this.#indexWriteFailures.inc({ operation }) }
  storeUpload (result: StoreUploadResult, bytes: number): void {
    this.#storeUploads.inc({ result })
    if (result === 'ok') this.#storeUploadBytes.inc(bytes)
  }
  scrubbed (bytes: number): void { this.#scrubbed.inc(bytes) }
  corruptRemoved (kind: 'blob' | 'manifest'): void { this.#corrupt.inc({ kind }) }

  evicted (item: EvictedItem): void {
    this.#evictions.inc({ reason: item.reason })
    this.#evictedBytes.inc({ reason: item.reason }, item.size)
  }

  async text (): Promise<string> { return await this.registry.metrics() }
  get contentType (): string { return this.registry.contentType }
}
