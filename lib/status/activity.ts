// What the status page shows of the mirror's own work since it started, from
// its events (events.ts), in memory of a fixed size: a ring of 60 one-minute
// slots, totals, a row per client kind and per configured upstream, and pulls
// per repository (only repositories a client was let read and was served, and
// at most MAX_REPOSITORIES of them). The last evictions are in the index
// (cache/eviction-log.ts), where `gc`'s are too. Nothing a client sends
// can add a row: user agents map onto a fixed set of kinds, unknown upstream
// names are ignored, and a repository counts only once it was served.

import { FROM_CACHE, type CacheOutcome, type EventSink, type RateLimit, type RequestRecord, type UpstreamAnswer, type DownloadResult, type UncachedResult, type RefusalReason } from '../events.js'
import { clientKind, type ClientKind } from './client-kind.js'

export const MINUTES = 60
export const MAX_REPOSITORIES = 1000
/** The longest user agent kept per client kind; longer ones are cut. */
export const MAX_USER_AGENT = 200

const FROM_UPSTREAM: ReadonlySet<string> = new Set<CacheOutcome>(['miss', 'joined'])

/** One minute's figures (and, summed, the totals since start). */
export interface Figures {
  /** Registry API requests answered (/v2/…, tokens), of every kind. */
  requests: number
  /** Image manifests sent whole (see RequestRecord.pull). */
  pulls: number
  /** Blob and manifest requests answered from the cache (hit, stale, revalidated) and from upstream (miss, joined). */
  hits: number
  misses: number
  /** Body bytes of blobs and manifests sent to clients, by where they came from. */
  cacheBytes: number
  upstreamBytes: number
  /** Blob bytes fetched from upstreams (downloads and uncached answers). */
  fetchedBytes: number
}

export interface Totals extends Figures {
  /** Blob requests that joined a download under way: an upstream GET each, saved. */
  joined: number
  /** Manifests by tag answered from the cache within the tag TTL: an upstream request each, saved. */
  tagsWithinTtl: number
  /** Requests answered with an error (4xx, 5xx, or cut). */
  errors: number
}

export interface ClientSeen {
  readonly kind: ClientKind
  /** Epoch milliseconds of the last blob or manifest it was served. */
  lastServedAt: number
  lastSource: 'cache' | 'upstream'
  userAgent: string
  requests: number
}

export interface UpstreamActivity {
  readonly name: string
  requests: number
  fetchedBytes: number
  down: { since: number, until: number } | undefined
  lastError: { at: number, message: string } | undefined
  rateLimit: (RateLimit & { at: number }) | undefined
}

function emptyFigures (): Figures {
  return { requests: 0, pulls: 0, hits: 0, misses: 0, cacheBytes: 0, upstreamBytes: 0, fetchedBytes: 0 }
}

export class Activity implements EventSink {
  readonly startedAt: number
  readonly #now: () => number
  /** Slot i holds the minute whose number (epoch minutes) is congruent to i; `#minuteOf` says which minute it holds. */
  readonly #slots: Figures[] = Array.from({ length: MINUTES }, emptyFigures)
  readonly #minuteOf: number[] = new Array<number>(MINUTES).fill(-1)
  readonly #totals: Totals = { ...emptyFigures(), joined: 0, tagsWithinTtl: 0, errors: 0 }
  readonly #clients = new Map<ClientKind, ClientSeen>()
  readonly #upstreams = new Map<string, UpstreamActivity>()
  readonly #pulls = new Map<string, number>()

  constructor (options: { upstreams: Iterable<string>, now?: (() => number) | undefined }) {
    this.#now = options.now ?? Date.now
    this.startedAt = this.#now()
    for (const name of options.upstreams) {
      this.#upstreams.set(name, { name, requests: 0, fetchedBytes: 0, down: undefined, lastError: undefined, rateLimit: undefined })
    }
  }

  /** The current minute's slot, emptied first when it last held an older minute. */
  #slot (): Figures {
    const minute = Math.floor(this.#now() / 60_000)
    const i = minute % MINUTES
    const slot = this.#slots[i] as Figures
    if (this.#minuteOf[i] !== minute) {
      Object.assign(slot, emptyFigures())
      this.#minuteOf[i] = minute
    }
    return slot
  }

  requestFinished (r: RequestRecord): void {
    // The page's own refreshes, /metrics scrapes and probes are not what it reports on.
    if (r.api !== true) return
    const slot = this.#slot()
    const add = (field: keyof Figures, by: number): void => {
      slot[field] += by
      this.#totals[field] += by
    }
    add('requests', 1)
    const outcome = r.outcome
    if (outcome === 'error' || r.status >= 400) {
      this.#totals.errors++
      return
    }
    if (r.pull === true) add('pulls', 1)
    if (r.kind !== 'blob' && r.kind !== 'manifest') return
    if (outcome === undefined) return
    const fromCache = FROM_CACHE.has(outcome)
    if (!fromCache && !FROM_UPSTREAM.has(outcome)) return
    add(fromCache ? 'hits' : 'misses', 1)
    if (r.bytes > 0) add(fromCache ? 'cacheBytes' : 'upstreamBytes', r.bytes)
    if (outcome === 'joined') this.#totals.joined++
    if (outcome === 'hit' && r.kind === 'manifest' && r.byTag === true) this.#totals.tagsWithinTtl++
    this.#sawClient(r.userAgent, fromCache ? 'cache' : 'upstream')
    if (r.pull === true && r.repository !== undefined) this.#pulled(r.repository)
  }

  #sawClient (userAgent: string | undefined, source: 'cache' | 'upstream'): void {
    const kind = clientKind(userAgent)
    const seen = this.#clients.get(kind) ?? { kind, lastServedAt: 0, lastSource: source, userAgent: '', requests: 0 }
    seen.lastServedAt = this.#now()
    seen.lastSource = source
    seen.userAgent = (userAgent ?? '').slice(0, MAX_USER_AGENT)
    seen.requests++
    this.#clients.set(kind, seen)
  }

  #pulled (repository: string): void {
    const n = this.#pulls.get(repository)
    if (n !== undefined) this.#pulls.set(repository, n + 1)
    else if (this.#pulls.size < MAX_REPOSITORIES) this.#pulls.set(repository, 1)
  }

  upstreamResponse (answer: UpstreamAnswer): void {
    const u = this.#upstreams.get(answer.upstream)
    if (u === undefined) return
    u.requests++
    if (answer.rateLimit !== undefined) u.rateLimit = { ...answer.rateLimit, at: this.#now() }
    if (answer.status === 429 || answer.status >= 500) {
      u.lastError = { at: this.#now(), message: `${answer.method} ${answer.kind}: HTTP ${answer.status}` }
    }
  }

  upstreamState (upstream: string, down: { since: number, until: number } | undefined): void {
    const u = this.#upstreams.get(upstream)
    if (u === undefined) return
    u.down = down
    if (down !== undefined) u.lastError = { at: this.#now(), message: 'not answering: connections failing or timing out' }
  }

  upstreamRefused (upstream: string, reason: RefusalReason): void {
    const u = this.#upstreams.get(upstream)
    if (u !== undefined) u.lastError = { at: this.#now(), message: `request refused by the mirror: ${reason}` }
  }

  downloadEnded (digest: string, upstream: string, result: DownloadResult, bytes: number): void {
    this.#fetched(digest, upstream, result, bytes)
  }

  uncachedEnded (digest: string, upstream: string, result: UncachedResult, bytes: number): void {
    this.#fetched(digest, upstream, result, bytes)
  }

  #fetched (digest: string, upstream: string, result: string, bytes: number): void {
    const slot = this.#slot()
    slot.fetchedBytes += bytes
    this.#totals.fetchedBytes += bytes
    const u = this.#upstreams.get(upstream)
    if (u === undefined) return
    u.fetchedBytes += bytes
    if (result === 'mismatch') u.lastError = { at: this.#now(), message: `blob ${digest} did not match its digest` }
    else if (result === 'error') u.lastError = { at: this.#now(), message: `download of ${digest} failed` }
  }

  get totals (): Readonly<Totals> { return { ...this.#totals } }

  /** The last MINUTES minutes, oldest first, the current one last (minutes without a request are zeros). */
  lastHour (): Array<Figures & { minute: number }> {
    const now = Math.floor(this.#now() / 60_000)
    const out: Array<Figures & { minute: number }> = []
    for (let minute = now - MINUTES + 1; minute <= now; minute++) {
      const i = minute % MINUTES
      out.push({ minute, ...(this.#minuteOf[i] === minute ? this.#slots[i] as Figures : emptyFigures()) })
    }
    return out
  }

  clients (): ClientSeen[] { return [...this.#clients.values()].map(c => ({ ...c })) }
  upstreams (): UpstreamActivity[] { return [...this.#upstreams.values()].map(u => ({ ...u })) }
  /** Repositories by pulls since start, most first. */
  pulls (): Array<{ repository: string, pulls: number }> {
    return [...this.#pulls].map(([repository, pulls]) => ({ repository, pulls })).sort((a, b) => b.pulls - a.pulls || (a.repository < b.repository ? -1 : 1))
  }
}
