// What a node tells the fleet through a shared store, and asks it, so that a
// node serves what another fetched without asking upstream: each manifest it
// caches (by digest), and each repository upstream showed to have a digest (a
// "link": the check every node makes before serving content under a
// repository's name, which would otherwise cost a HEAD upstream per node).
//
// Telling is never on a request's path: puts run in the background, a few at
// a time, and a failure is logged and forgotten (the other nodes then ask
// upstream, as a lone node would). Asking is on the path of a miss only, and a
// store that cannot answer is a "no": the miss goes upstream.

import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { Limiter } from '../limiter.js'
import { MARK_EVERY_MS } from './bucket-eviction.js'
import { childrenOf, manifestMediaType } from '../oci/manifest.js'
import { matchesDigest } from '../oci/digest-check.js'
import type { SharedContent } from '../store/blob-store.js'

/** Puts to the shared store under way at once. */
const PUTS_AT_ONCE = 4
/**
 * Puts waiting beyond this are dropped, and so are failed puts beyond this waiting to be tried
 * again: sharing is best effort, never a queue that a flood of distinct digests (or a store down
 * for an hour) makes grow. What is dropped is told again when next cached or confirmed.
 */
export const MAX_WAITING = 1000
/** How often a run of failing puts is logged again. */
const FAILURE_LOG_MS = 60_000
/** A put that failed is tried again after each of these (a store down for a while, then back). */
const RETRY_DELAYS_MS = [5_000, 30_000, 120_000, 300_000]

export interface SharedManifest { readonly digest: string, readonly mediaType: string, readonly content: Buffer }

export class FleetShare {
  readonly #shared: SharedContent
  readonly #log: Logger
  readonly #puts = new Limiter(PUTS_AT_ONCE)
  readonly #underWay = new Set<Promise<void>>()
  readonly #retries = new Set<NodeJS.Timeout>()
  #closed = false
  /** When this node last marked each blob it served. */
  readonly #marked = new LRUCache<string, number>({ max: 100_000 })
  #failedSinceLogged = 0
  #loggedAt = -Infinity

  constructor (shared: SharedContent, log: Logger) {
    this.#shared = shared
    this.#log = log
  }

  /**
   * A manifest this node cached under a repository: its bytes, its link, and a link for each
   * blob and manifest it names, which belong to the repository with it (as in the node's index).
   */
  manifestStored (repository: string, manifest: SharedManifest): void {
    this.#put('manifest', async () => await this.#shared.putManifest(manifest.digest, manifest.mediaType, manifest.content))
    this.linked(repository, manifest.digest)
    for (const child of childrenOf(manifest.content)) this.linked(repository, child.digest)
  }

  /** Upstream showed the repository has the digest (fetched there, or confirmed with a HEAD). */
  linked (repository: string, digest: string): void {
    this.#put('link', async () => await this.#shared.putLink(repository, digest))
  }

  /**
   * This node served the blob now: marked in the bucket, at most every MARK_EVERY_MS, so that no
   * node's eviction pass takes it while clients still fetch it. `handedOut` (a redirect: the
   * client fetches from the store itself) waits for the mark; a stream does not need to. True
   * when it marked now: the blob may have been evicted before (a mark protects it only from now).
   */
  async accessed (digest: string, now: number, handedOut: boolean): Promise<boolean> {
    const last = this.#marked.get(digest)
    if (last !== undefined && now - last < MARK_EVERY_MS) return false
    const failed = (err: unknown): void => {
      this.#marked.delete(digest) // marked again at the next access
      this.#log.warn({ digest, err }, 'could not mark a blob as served in the shared store')
    }
    if (handedOut) {
      // The client is sent to the store only once the mark is there: not queued behind other puts.
      this.#marked.set(digest, now)
      await this.#shared.mark(digest).catch(failed)
      return true
    }
    // A stream: marked in the background, in turn with the other puts (a flood of hits on
    // distinct blobs is not a flood of requests to the store).
    if (this.#puts.waiting >= MAX_WAITING || this.#closed) return false
    this.#marked.set(digest, now)
    this.#track(this.#puts.run(async () => await this.#shared.mark(digest)).catch(failed))
    return true
  }

  /** Whether another node recorded that upstream showed the repository has the digest; false when the store cannot say. */
  async isLinked (repository: string, digest: string): Promise<boolean> {
    try {
      return await this.#shared.hasLink(repository, digest)
    } catch (err) {
      this.#log.warn({ repository, digest, err }, 'the shared store could not say whether a repository has content; asking upstream')
      return false
    }
  }

  /**
   * A manifest another node cached under this repository, checked against its digest and parsed
   * as a manifest; undefined when there is none, it is not linked to the repository, or the store
   * cannot answer.
   */
  async manifest (repository: string, digest: string): Promise<SharedManifest | undefined> {
    if (!await this.isLinked(repository, digest)) return undefined
    let found
    try {
      found = await this.#shared.getManifest(digest)
    } catch (err) {
      this.#log.warn({ digest, err }, 'the shared store could not give a manifest; asking upstream')
      return undefined
    }
    if (found === undefined) return undefined
    if (!matchesDigest(found.content, digest)) {
      this.#log.error({ digest }, 'a manifest in the shared store does not match its digest; not used')
      return undefined
    }
    try {
      return { digest, mediaType: manifestMediaType(found.mediaType, found.content), content: found.content }
    } catch {
      this.#log.error({ digest }, 'an object in the shared store is not a manifest; not used')
      return undefined
    }
  }

  /** Puts waiting their turn, and failed puts waiting to be tried again. */
  get backlog (): number {
    return this.#puts.waiting + this.#retries.size
  }

  /** Drops the tries still waiting (the node is closing); the puts under way end on their own. */
  close (): void {
    this.#closed = true
    for (const timer of this.#retries) clearTimeout(timer)
    this.#retries.clear()
  }

  /** Resolves when the puts under way have ended. */
  async idle (): Promise<void> {
    while (this.#underWay.size > 0) await Promise.allSettled([...this.#underWay])
  }

  #put (what: string, fn: () => Promise<void>, attempt = 0): void {
    if (this.#puts.waiting >= MAX_WAITING || this.#closed) return
    const put = this.#puts.run(fn).catch((err: unknown) => {
      this.#failedSinceLogged++
      const now = Date.now()
      if (now - this.#loggedAt >= FAILURE_LOG_MS) {
        this.#log.warn({ what, failures: this.#failedSinceLogged, err }, 'could not tell the fleet through the shared store; trying again later, other nodes ask upstream meanwhile')
        this.#loggedAt = now
        this.#failedSinceLogged = 0
      }
      // Tried again after a while: a store down for minutes must not leave the fleet without it for good.
      const delay = RETRY_DELAYS_MS[attempt]
      if (delay === undefined || this.#retries.size >= MAX_WAITING || this.#closed) return
      const timer = setTimeout(() => {
        this.#retries.delete(timer)
        this.#put(what, fn, attempt + 1)
      }, delay)
      timer.unref()
      this.#retries.add(timer)
    })
    this.#track(put)
  }

  #track (work: Promise<void>): void {
    const tracked = work.finally(() => this.#underWay.delete(tracked))
    this.#underWay.add(tracked)
  }
}
