// Blobs: local first, always. A cached blob is served from disk; a missing one
// is downloaded once from upstream however many clients ask, and every client
// streams from that one download.

import type { Readable } from 'node:stream'
import type { Logger } from 'pino'
import type { AccessRecorder } from '../cache/access-recorder.js'
import { BlobDownload } from '../cache/blob-download.js'
import type { CacheIndex } from '../db/cache-index.js'
import { BlobUnknownError, UnavailableError } from '../errors.js'
import { isNotFound, type BlobStore } from '../store/blob-store.js'
import { header, passedThroughHeaders, type UpstreamClient } from '../upstream/client.js'
import type { Route } from '../upstream/routing.js'
import type { CacheOutcome } from './outcome.js'
import { parseRange, type ByteRange } from './range.js'

export interface BlobAnswer {
  readonly outcome: CacheOutcome
  readonly digest: string
  /** Total size of the blob, when known (an upstream may stream without a length). */
  readonly size: number | undefined
  /** Set when a Range was honoured. */
  readonly range: ByteRange | undefined
  /** Undefined for HEAD. */
  readonly body: Readable | undefined
  readonly headers: Readonly<Record<string, string>>
}

export interface BlobEvents {
  onDownloadStart?: (digest: string) => void
  onDownloadEnd?: (digest: string, result: 'ok' | 'mismatch' | 'error', bytes: number) => void
}

export interface BlobServiceOptions {
  readonly index: CacheIndex
  readonly store: BlobStore
  readonly upstream: (name: string) => UpstreamClient
  readonly access: AccessRecorder
  readonly log: Logger
  readonly events?: BlobEvents | undefined
}

export class BlobService {
  readonly #o: BlobServiceOptions
  /** Downloads under way, by digest: present from the first request until the file is committed or given up. */
  readonly #downloads = new Map<string, Promise<BlobDownload>>()

  constructor (options: BlobServiceOptions) {
    this.#o = options
  }

  get downloadsInFlight (): number { return this.#downloads.size }

  async get (route: Route, digest: string, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer> {
    const inflight = this.#downloads.get(digest)
    if (inflight !== undefined) return await this.#fromDownload(await inflight, 'joined', request)

    const cached = await this.#fromCache(route, digest, request)
    if (cached !== undefined) return cached

    if (request.method === 'HEAD') return await this.#headUpstream(route, digest)

    // Checked again: another request may have started the download while this one looked at the disk.
    const started = this.#downloads.get(digest)
    if (started !== undefined) return await this.#fromDownload(await started, 'joined', request)
    if (this.#o.index.getBlob(digest) !== undefined) {
      const nowCached = await this.#fromCache(route, digest, request)
      if (nowCached !== undefined) return nowCached
    }
    const download = this.#startDownload(route, digest)
    return await this.#fromDownload(await download, 'miss', request)
  }

  async #fromCache (route: Route, digest: string, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer | undefined> {
    const row = this.#o.index.getBlob(digest)
    if (row === undefined) return undefined
    const range = parseRange(request.range, row.size)
    let body: Readable | undefined
    try {
      if (request.method === 'GET') {
        body = await this.#o.store.openRead(digest, range)
      } else if (await this.#o.store.size(digest) === undefined) {
        throw Object.assign(new Error('blob file missing'), { code: 'ENOENT' })
      }
    } catch (err) {
      if (!isNotFound(err)) throw err
      // The index outlived the file (deleted by hand, lost in a crash): a miss, never a 500.
      this.#o.log.warn({ digest }, 'indexed blob has no file; dropping the row')
      this.#o.index.deleteBlob(digest)
      return undefined
    }
    this.#o.access.blob(digest, route.repository)
    return { outcome: 'hit', digest, size: row.size, range, body, headers: {} }
  }

  async #fromDownload (download: BlobDownload, outcome: CacheOutcome, request: { method: 'GET' | 'HEAD', range: string | undefined }): Promise<BlobAnswer> {
    let range: ByteRange | undefined
    if (request.range !== undefined) {
      if (download.size === undefined) {
        // Without a length the range cannot be checked until the blob is complete.
        await this.#settled(download)
      }
      range = parseRange(request.range, download.size ?? download.written)
    }
    const body = request.method === 'GET' ? download.createReader(range?.start, range?.end) : undefined
    return { outcome, digest: download.digest, size: download.size, range, body, headers: {} }
  }

  async #settled (download: BlobDownload): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      const reader = download.createReader()
      reader.on('error', reject)
      reader.on('end', resolve)
      reader.resume()
    })
  }

  #startDownload (route: Route, digest: string): Promise<BlobDownload> {
    const { store, index, log } = this.#o
    const starting = (async () => {
      const client = this.#o.upstream(route.upstream)
      const res = await client.openBlob(route.name, digest)
      if (res.status === 404) {
        await res.body.dump()
        throw new BlobUnknownError('blob unknown to upstream', { digest, upstream: route.upstream })
      }
      if (res.status !== 200) {
        await res.body.dump()
        throw new UnavailableError(`upstream ${route.upstream} answered HTTP ${res.status} for a blob`, { digest })
      }
      let temp
      try {
        temp = await store.createTemp()
      } catch (err) {
        res.body.destroy()
        throw err
      }
      const download = new BlobDownload({
        digest,
        size: res.size,
        temp,
        commit: async (tempPath, size) => {
          await store.commit(tempPath, digest)
          index.putBlob(digest, size, route.repository, header(res.headers, 'content-type') ?? null)
        },
        discard: async (tempPath) => await store.discard(tempPath)
      })
      this.#o.events?.onDownloadStart?.(digest)
      const started = Date.now()
      download.run(res.body).then(() => {
        log.info({ digest, upstream: route.upstream, repository: route.name, bytes: download.written, ms: Date.now() - started }, 'blob cached')
        this.#o.events?.onDownloadEnd?.(digest, 'ok', download.written)
      }, (err: unknown) => {
        const mismatch = typeof err === 'object' && err !== null && 'code' in err && err.code === 'DIGEST_MISMATCH'
        log.error({ digest, upstream: route.upstream, repository: route.name, bytes: download.written, err: errorMessage(err) },
          mismatch ? 'blob from upstream failed verification; nothing cached' : 'blob download failed; nothing cached')
        this.#o.events?.onDownloadEnd?.(digest, mismatch ? 'mismatch' : 'error', download.written)
      }).finally(() => {
        this.#downloads.delete(digest)
      })
      return download
    })()
    this.#downloads.set(digest, starting)
    // A download that never got going is forgotten at once, so the next request may try again.
    starting.catch(() => { this.#downloads.delete(digest) })
    return starting
  }

  async #headUpstream (route: Route, digest: string): Promise<BlobAnswer> {
    const client = this.#o.upstream(route.upstream)
    const res = await client.send('HEAD', `/v2/${route.name}/blobs/${digest}`, { repository: route.name, kind: 'blob' })
    await res.body.dump()
    if (res.status === 404) throw new BlobUnknownError('blob unknown to upstream', { digest })
    if (res.status !== 200) throw new UnavailableError(`upstream ${route.upstream} answered HTTP ${res.status} for a blob`, { digest })
    const length = header(res.headers, 'content-length')
    const size = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined
    return { outcome: 'miss', digest, size, range: undefined, body: undefined, headers: passedThroughHeaders(res.headers) }
  }
}

function errorMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
