// Blobs: local first, always. A cached blob is served from disk; a missing one
// is downloaded once from upstream however many clients ask, and every client
// streams from that one download.

import type { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { Logger } from 'pino'
import type { BlobDownload } from '../cache/blob-download.js'
import { Inflight } from '../cache/inflight.js'
import type { RecentPulls } from '../cache/recent-pulls.js'
import { LRUCache } from 'lru-cache'
import type { CacheSpace } from '../cache/eviction-schedule.js'
import type { ChunkHasher } from '../cache/chunk-hasher.js'
import { BlobUnknownError, DigestMismatchError, isDiskFull, UnavailableError } from '../errors.js'
import type { CacheOutcome, MirrorEvents } from '../events.js'
import { contentLength, header, passedThroughHeaders } from '../oci/headers.js'
import { DigestCheck } from '../oci/digest-check.js'
import type { Route } from '../upstream/routing.js'
import { parseRange, type ByteRange } from './range.js'
import type { ServiceOptions } from './service-options.js'

export interface BlobAnswer {
  readonly outcome: CacheOutcome
  readonly digest: string
  /** Total size of the blob, when known (an upstream may stream without a length). */
  readonly size: number | undefined
  /** Set when a Range was honoured. */
  readonly range: ByteRange | undefined
  /** Undefined for HEAD, and for a redirect. */
  readonly body: Readable | undefined
  /** Where the client is sent to fetch the bytes itself (a presigned URL of the store), instead of a body. */
  readonly redirect?: string | undefined
  readonly headers: Readonly<Record<string, string>>
}

/** Room kept free on the volume beyond the blob being written. */
const SPACE_MARGIN = 4 * 1024 * 1024

/** A download (or an uncached answer) under way, with the repository it was fetched under. */
type Started =
  | { readonly kind: 'download', readonly digest: string, readonly repository: string, readonly download: BlobDownload }
  | { readonly kind: 'bypass', readonly digest: string, readonly repository: string, readonly upstream: string, readonly body: Readable, readonly size: number | undefined, claimed: boolean }

export interface BlobServiceOptions extends ServiceOptions {
  readonly log: Logger
  readonly events: MirrorEvents
  /** Room on a full disk, and the count of bytes cached. */
  readonly space: CacheSpace
  /** The images being pulled, which making room leaves alone. */
  readonly pulls: RecentPulls
  /** Hashes large downloads on a worker thread. */
  readonly hasher?: ChunkHasher | undefined
  /** Answer cached blob GETs with a redirect to the store, when it can give a URL (storage.s3.redirect). */
  readonly redirect?: boolean | undefined
}

/** A blob download under way, as the status page shows it. */
export interface DownloadInFlight {
  readonly digest: string
  /** The cache key of the repository it was asked under. */
  readonly repository: string
  readonly upstream: string
  /** Epoch milliseconds. */
  readonly startedAt: number
  readonly bytes: number
  /** As upstream announced it; undefined when it did not. */
  readonly size: number | undefined
  /** Client responses reading from it. */
  readonly clients: number
}

export class BlobService {
  readonly #o: BlobServiceOptions
  /** Downloads under way, by digest: present from the first request until the file is committed or given up. */
  readonly #downloads = new Map<string, Promise<Started>>()
  /** Downloads writing to disk now (for the free-space check and the status page), with what they are of. */
  readonly #active = new Map<BlobDownload, { digest: string, repository: string, upstream: string, startedAt: number }>()
  /**
   * What a full disk taught about blobs upstream sends without a length: how far one got before
   * the disk filled up under it (`exact` false), or its true size, once served uncached and
   * verified (`exact` true).
   */
  readonly #sizes = new LRUCache<string, { bytes: number, exact: boolean }>({ max: 10_000 })
  /** HEADs under way that confirm a repository has a blob the cache holds for another. */
  readonly #confirming = new Inflight<void>()

  constructor (options: BlobServiceOptions) {
    this.#o = options
  }

  get downloadsInFlight (): number { return this.#downloads.size }

  /** Client responses streaming from downloads under way. */
  get downloadClients (): number {
    let n = 0
    for (const d of this.#active.keys()) n += d.readers
    return n
  }

  /** Each download writing to disk now: what it is of, how far it got and how many clients read from it. */
  downloads (): DownloadInFlight[] {
    return [...this.#active].map(([d, of]) => ({ ...of, bytes: d.written, size: d.size, clients: d.readers }))
  }

  /** Resolves once no download is under way. */
  async idle (): Promise<void> {
    while (this.#downloads.size > 0) {
      await Promise.allSettled([...this.#downloads.values()].map(async p => {
        const started = await p
        if (started.kind === 'download') await started.download.settled
      }))
    }
  }

  async get (route: Route, digest: string, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer> {
    const inflight = this.#downloads.get(digest)
    if (inflight !== undefined) return await this.#join(route, await inflight, request)

    const cached = await this.#fromCache(route, digest, request)
    if (cached !== undefined) return cached
    // A store shared by the fleet may have it from another node: asked before upstream.
    if (await this.#o.cache.adoptStored(digest, route.repository)) {
      const adopted = await this.#fromCache(route, digest, request)
      if (adopted !== undefined) return adopted
    }
    if (this.#o.offline === true) throw new BlobUnknownError('blob not in the cache, and this mirror is offline', { digest })

    if (request.method === 'HEAD') return await this.#headUpstream(route, digest)

    // Checked again: another request may have started the download while this one looked at the disk.
    const started = this.#downloads.get(digest)
    if (started !== undefined) return await this.#join(route, await started, request)
    if (this.#o.cache.blob(digest) !== undefined) {
      const nowCached = await this.#fromCache(route, digest, request)
      if (nowCached !== undefined) return nowCached
    }
    return await this.#fromStarted(route, await this.#start(route, digest), 'miss', request)
  }

  /** Joins a download under way; one fetched under another repository only once upstream confirms this one has the blob too. */
  async #join (route: Route, started: Started, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer> {
    if (started.repository !== route.repository && !this.#o.cache.blobBelongsTo(started.digest, route.repository)) {
      if (started.kind === 'bypass') return await this.#passThrough(route, started.digest, request)
      await this.#confirm(route, started.digest)
    }
    return await this.#fromStarted(route, started, 'joined', request)
  }

  async #fromStarted (route: Route, started: Started, outcome: CacheOutcome, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer> {
    if (started.kind === 'download') return await this.#fromDownload(started.download, outcome, request)
    if (!started.claimed && request.range === undefined && request.method === 'GET') {
      started.claimed = true
      return this.#bypassAnswer(started.body, started.size, started.digest, started.upstream, outcome)
    }
    // The uncached body went to another client (or this request cannot take it whole): this one
    // gets its own. Once no one is left to take it, it is let go, with its connection and download slot.
    setImmediate(() => {
      if (started.claimed) return
      started.claimed = true
      started.body.destroy()
    })
    return await this.#passThrough(route, started.digest, request)
  }

  async #fromCache (route: Route, digest: string, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer | undefined> {
    const { cache } = this.#o
    const row = cache.blob(digest)
    if (row === undefined) return undefined
    if (!cache.blobBelongsTo(digest, route.repository)) {
      // Cached for another repository: never read through this one's name until upstream says it has it.
      if (this.#o.offline === true) return undefined
      await this.#confirm(route, digest)
    }
    const range = parseRange(request.range, row.size)
    let body: Readable | undefined
    if (request.method === 'GET' && this.#o.redirect === true) {
      // The client fetches the bytes (and any range) from the store itself.
      const url = await cache.blobUrl(row)
      if (url !== undefined) return { outcome: 'hit', digest, size: row.size, range: undefined, body: undefined, redirect: url, headers: {} }
    }
    if (request.method === 'GET') {
      body = await cache.openBlob(row, range ?? { start: 0, end: row.size - 1 })
      if (body === undefined) return undefined
    } else if (!await cache.hasBlob(row)) {
      return undefined
    }
    return { outcome: 'hit', digest, size: row.size, range, body, headers: {} }
  }

  async #fromDownload (download: BlobDownload, outcome: CacheOutcome, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer> {
    let range: ByteRange | undefined
    if (request.range !== undefined) {
      if (download.size === undefined) {
        // Without a length the range cannot be checked until the blob is complete.
        await download.settled
      }
      range = parseRange(request.range, download.size ?? download.written)
    }
    const body = request.method === 'GET' ? download.createReader(range?.start, range?.end) : undefined
    return { outcome, digest: download.digest, size: download.size, range, body, headers: {} }
  }

  #start (route: Route, digest: string): Promise<Started> {
    const { cache, log, events } = this.#o
    const starting = (async (): Promise<Started> => {
      const client = this.#o.upstream(route.upstream)
      const res = await client.openBlob(route.name, digest, route.caller)
      if (res.status === 404) {
        await res.body.dump()
        throw new BlobUnknownError('blob unknown to upstream', { digest, upstream: route.upstream })
      }
      if (res.status !== 200) {
        await res.body.dump()
        throw new UnavailableError(`upstream ${route.upstream} answered HTTP ${res.status} for a blob`, { digest })
      }
      const bypass = (reason: string): Started => {
        log.warn({ digest, upstream: route.upstream, repository: route.name, size: res.size ?? null, reason }, 'no room in the cache: serving the blob from upstream without caching it')
        events.uncachedStarted(digest, route.upstream, reason)
        return { kind: 'bypass', digest, repository: route.repository, upstream: route.upstream, body: res.body, size: res.size, claimed: false }
      }
      // Once such a blob outgrew the disk, how much more it needs is unknown: evicting for it could
      // fail again, so it is served uncached (which learns its size) rather than tried again.
      if (res.size === undefined && this.#sizes.get(digest)?.exact === false) return bypass('disk full')
      if (!await this.#hasRoom(route, digest, res.size)) return bypass('disk full')
      let download: BlobDownload
      try {
        download = await cache.startDownload({ digest, size: res.size, repository: route.repository, mediaType: header(res.headers, 'content-type') ?? null, hasher: this.#o.hasher })
      } catch (err) {
        if (isDiskFull(err)) return bypass('disk full')
        res.body.destroy()
        throw err
      }
      events.downloadStarted(digest, route.upstream)
      const startedAt = Date.now()
      this.#active.set(download, { digest, repository: route.repository, upstream: route.upstream, startedAt })
      download.run(res.body).then(() => {
        log.info({ digest, upstream: route.upstream, repository: route.name, bytes: download.written, ms: Date.now() - startedAt }, 'blob cached')
        events.downloadEnded(digest, route.upstream, 'ok', download.written)
        this.#o.space.stored(download.written)
      }, (err: unknown) => {
        const mismatch = err instanceof DigestMismatchError
        const full = isDiskFull(err)
        log.error({ digest, upstream: route.upstream, repository: route.name, bytes: download.written, err: errorMessage(err) },
          mismatch
            ? 'blob from upstream failed verification; nothing cached'
            : full ? 'disk full while caching a blob; nothing cached' : 'blob download failed; nothing cached')
        events.downloadEnded(digest, route.upstream, mismatch ? 'mismatch' : full ? 'disk-full' : 'error', download.written)
        if (full) {
          // The next request knows how much room this blob needs at least, announced or not.
          this.#sizes.set(digest, download.size !== undefined ? { bytes: download.size, exact: true } : { bytes: download.written, exact: false })
        }
      }).finally(() => {
        this.#active.delete(download)
        this.#downloads.delete(digest)
      })
      return { kind: 'download', digest, repository: route.repository, download }
    })()
    this.#downloads.set(digest, starting)
    starting.then(started => {
      // An uncached answer is nothing later requests can join.
      if (started.kind === 'bypass') this.#downloads.delete(digest)
    }, () => {
      // A download that never got going is forgotten at once, so the next request may try again.
      this.#downloads.delete(digest)
    })
    return starting
  }

  /**
   * Whether a blob of this size (or, unannounced, the size it reached when the disk last
   * filled up under it) fits on the volume, evicting to make room when that can be enough.
   * Eviction never runs when it cannot free what is needed, and never takes the images the
   * repository is pulling.
   */
  async #hasRoom (route: Route, digest: string, size: number | undefined): Promise<boolean> {
    const { cache } = this.#o
    let reserved = SPACE_MARGIN + (size ?? this.#sizes.get(digest)?.bytes ?? 0)
    for (const download of this.#active.keys()) {
      // Space the downloads under way will still take, at their announced sizes.
      reserved += Math.max(0, (download.size ?? 0) - download.written)
    }
    const available = await cache.freeBytes()
    if (available >= reserved) return true
    const protect = this.#o.pulls.of(route.repository)
    if (available + this.#o.space.evictable(protect) < reserved) return false
    await this.#o.space.makeRoom(reserved - available, protect)
    return await cache.freeBytes() >= reserved
  }

  /** A fresh upstream GET served to one client, verified, not cached. */
  async #passThrough (route: Route, digest: string, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer> {
    if (request.method === 'HEAD') return await this.#headUpstream(route, digest)
    const res = await this.#o.upstream(route.upstream).openBlob(route.name, digest, route.caller)
    if (res.status !== 200) {
      await res.body.dump()
      throw res.status === 404
        ? new BlobUnknownError('blob unknown to upstream', { digest })
        : new UnavailableError(`upstream ${route.upstream} answered HTTP ${res.status} for a blob`, { digest })
    }
    this.#o.events.uncachedStarted(digest, route.upstream, 'disk full')
    return this.#bypassAnswer(res.body, res.size, digest, route.upstream, 'miss')
  }

  #bypassAnswer (body: Readable, size: number | undefined, digest: string, upstream: string, outcome: CacheOutcome): BlobAnswer {
    const { log, events } = this.#o
    // Uncached, still verified: the last chunk waits for the digest to check out, and a
    // mismatch destroys the stream, which cuts the client's connection.
    const verified = new DigestCheck(digest, size, { what: `blob ${digest} from upstream`, holdLast: true })
    // The client's side of the pipe ends (or is cut) through the response's own pipeline; this one only feeds it.
    pipeline(body, verified).then(() => {
      // Verified whole: its size is known from now on, announced or not.
      if (size === undefined && this.#sizes.has(digest)) this.#sizes.set(digest, { bytes: verified.bytes, exact: true })
      events.uncachedEnded(digest, upstream, 'ok', verified.bytes)
    }, (err: unknown) => {
      if (err instanceof DigestMismatchError) {
        log.error({ digest, upstream, bytes: verified.bytes, err: err.message }, 'blob served uncached failed verification; the client was cut off')
        events.uncachedEnded(digest, upstream, 'mismatch', verified.bytes)
      } else {
        log.warn({ digest, upstream, bytes: verified.bytes, err: errorMessage(err) }, 'blob served uncached ended early')
        events.uncachedEnded(digest, upstream, 'error', verified.bytes)
      }
    })
    return { outcome, digest, size, range: undefined, body: verified, headers: {} }
  }

  /** Asks upstream (a HEAD, which Docker Hub does not count) whether this repository has the blob; records it when it does. */
  async #confirm (route: Route, digest: string): Promise<void> {
    await this.#confirming.run(`${route.repository}\0${digest}`, async () => {
      const answer = await this.#headUpstream(route, digest)
      this.#o.cache.addBlobRepository(digest, route.repository)
      this.#o.log.debug({ digest, repository: route.repository, size: answer.size ?? null }, 'upstream confirmed the repository has a cached blob')
    }).promise
  }

  async #headUpstream (route: Route, digest: string): Promise<BlobAnswer> {
    const client = this.#o.upstream(route.upstream)
    const res = await client.send('HEAD', `/v2/${route.name}/blobs/${digest}`, { repository: route.name, caller: route.caller, kind: 'blob' })
    await res.body.dump()
    if (res.status === 404) throw new BlobUnknownError('blob unknown to upstream', { digest })
    if (res.status !== 200) throw new UnavailableError(`upstream ${route.upstream} answered HTTP ${res.status} for a blob`, { digest })
    return { outcome: 'miss', digest, size: contentLength(res.headers), range: undefined, body: undefined, headers: passedThroughHeaders(res.headers) }
  }
}

function errorMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
