// The background scrub: re-hashes every cached blob and manifest at a
// bounded rate, pass after pass, and removes what no longer matches its
// digest (bit rot, a file changed by hand), so that it is fetched again rather
// than served wrong. Reads go through the cache (LocalCache.storedBlobMatches)
// like any other, paced here.

import type { Logger } from 'pino'
import type { MirrorEvents } from '../events.js'
import { matchesDigest } from '../oci/digest-check.js'
import type { LocalCache } from './local-cache.js'

export interface ScrubberOptions {
  readonly cache: LocalCache
  /** Bytes per second; 0 keeps the scrubber off. */
  readonly rate: number
  /** Before the first pass and between passes, in milliseconds. */
  readonly interval: number
  readonly log: Logger
  readonly events?: Pick<MirrorEvents, 'scrubbed' | 'corruptRemoved'> | undefined
}

const PAGE = 100

export class Scrubber {
  readonly #o: ScrubberOptions
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #stopped = false

  constructor (options: ScrubberOptions) {
    this.#o = options
    if (options.rate > 0) this.#schedule()
  }

  #schedule (): void {
    if (this.#stopped) return
    this.#timer = setTimeout(() => {
      this.#running = this.pass().then(() => {}, (err: unknown) => { this.#o.log.error({ err }, 'scrub pass failed') }).finally(() => {
        this.#running = undefined
        this.#schedule()
      })
    }, this.#o.interval)
    this.#timer.unref()
  }

  /** One pass over every cached blob and manifest; resolves early once closed. */
  async pass (): Promise<{ blobs: number, manifests: number, removed: number }> {
    const { cache, log, events } = this.#o
    const counts = { blobs: 0, manifests: 0, removed: 0 }
    let after = ''
    while (!this.#stopped) {
      const page = cache.blobsAfter(after, PAGE)
      if (page.length === 0) break
      for (const row of page) {
        if (this.#stopped) return counts
        after = row.digest
        const matches = await this.#blobMatches(row.digest, row.size)
        counts.blobs++
        if (matches !== false) continue
        log.error({ digest: row.digest, size: row.size }, 'scrub: cached blob does not match its digest (bit rot?); removing it')
        await cache.removeBlob(row.digest)
        events?.corruptRemoved('blob', row.digest)
        counts.removed++
      }
    }
    for (const digest of cache.manifestDigests()) {
      if (this.#stopped) return counts
      const content = cache.storedManifest(digest)
      if (content === undefined) continue
      counts.manifests++
      if (matchesDigest(content, digest)) continue
      log.error({ digest }, 'scrub: cached manifest does not match its digest; removing it')
      cache.removeManifest(digest)
      events?.corruptRemoved('manifest', digest)
      counts.removed++
    }
    if (counts.removed > 0 || counts.blobs > 0) log.info(counts, 'scrub pass done')
    return counts
  }

  /** False when the stored bytes do not match; undefined when they could not be read whole (gone, cut, being replaced). */
  async #blobMatches (digest: string, size: number): Promise<boolean | undefined> {
    return await this.#o.cache.storedBlobMatches(digest, size, async bytes => {
      this.#o.events?.scrubbed(bytes)
      // The rate bound: each chunk is paid for with the time it is worth.
      await new Promise(resolve => setTimeout(resolve, bytes / this.#o.rate * 1000))
      return !this.#stopped
    })
  }

  async close (): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    await this.#running
  }
}
