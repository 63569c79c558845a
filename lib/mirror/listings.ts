// Tag lists, referrers and the catalog. Tag lists and referrers come from
// upstream when it answers (they change), and from what the cache knows when
// it does not. Lists go out in the order the distribution spec names (Go's
// sort.Strings), whatever order they came in, and are paged in it.

import { ManifestInvalidError, ManifestUnknownError, NameUnknownError, PaginationNumberInvalidError, RegistryError, UnavailableError } from '../errors.js'
import { isMediaType, MediaTypes } from '../oci/media-types.js'
import { referrersTag } from '../oci/reference.js'
import { header, passedThroughHeaders } from '../oci/headers.js'
import { MAX_CATALOG_PAGE, MAX_LISTING_BYTES } from '../oci/limits.js'
import type { Route } from '../upstream/routing.js'
import { readLimited, type StoppableBody } from '../read-limited.js'
import type { CacheOutcome } from '../events.js'
import { refusedCaller, type ServiceOptions } from './service-options.js'


export interface Page { readonly n: number | undefined, readonly last: string | undefined }

export interface TagList {
  readonly tags: string[]
  /** The `last` of the next page, when there is one. */
  readonly next: string | undefined
  readonly outcome: CacheOutcome
  readonly headers: Readonly<Record<string, string>>
}

export interface ListingServiceOptions extends ServiceOptions {
  /** How long a referrers answer is trusted without asking upstream. */
  readonly referrersTtl: number
}

export function parsePage (n: string | undefined, last: string | undefined): Page {
  if (n !== undefined && !/^\d+$/.test(n)) throw new PaginationNumberInvalidError('invalid number of results requested', { n })
  return { n: n === undefined ? undefined : Number(n), last: last === '' ? undefined : last }
}

/**
 * Go's sort.Strings order, which the spec asks of tag lists: by UTF-16 code
 * unit, the same as by byte for the ASCII that tags and repository names are
 * made of (`10` before `2`, `Z` before `a`).
 */
export function asciiOrder (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/**
 * Applies n/last to a list in ASCII order, into which it is sorted first
 * (upstreams answer in any order; a name listed twice counts once): the items
 * after `last` in that order, at most n, and the `last` of the next page when
 * this one was cut.
 */
export function paginate (items: readonly string[], page: Page): { items: string[], next: string | undefined } {
  const sorted = [...new Set(items)].sort(asciiOrder)
  const last = page.last
  const from = last === undefined ? sorted : sorted.filter(t => asciiOrder(t, last) > 0)
  if (page.n === undefined || from.length <= page.n) return { items: from, next: undefined }
  const cut = from.slice(0, page.n)
  return { items: cut, next: cut.at(-1) }
}

export class ListingService {
  readonly #o: ListingServiceOptions
  readonly #now: () => number

  constructor (options: ListingServiceOptions) {
    this.#o = options
    this.#now = options.now ?? Date.now
  }

  async tags (route: Route, page: Page): Promise<TagList> {
    const query = new URLSearchParams()
    if (page.n !== undefined) query.set('n', String(page.n))
    if (page.last !== undefined) query.set('last', page.last)
    const qs = query.size > 0 ? `?${query.toString()}` : ''
    if (this.#o.offline === true) {
      const known = this.#o.cache.tags(route.repository)
      if (known.length === 0) throw new NameUnknownError('repository not in the cache, and this mirror is offline', { name: route.name })
      const { items, next } = paginate(known, page)
      return { tags: items, next, outcome: 'hit', headers: {} }
    }
    try {
      const res = await this.#o.upstream(route.upstream).send('GET', `/v2/${route.name}/tags/list${qs}`, { repository: route.name, caller: route.caller, kind: 'tags' })
      if (res.status === 404) {
        await res.body.dump()
        throw new NameUnknownError('repository name not known to registry', { name: route.name })
      }
      if (res.status !== 200) {
        await res.body.dump()
        throw new UnavailableError(`upstream answered HTTP ${res.status} for a tag list`)
      }
      const body = await readJson(res.body)
      // Whatever arrives must be a tag list (distribution sends null for a repository without tags).
      if (!isRecord(body) || !(Array.isArray(body.tags) || body.tags === null)) throw new UnavailableError('upstream sent something that is not a tag list')
      const listed = Array.isArray(body.tags) ? body.tags.filter((t): t is string => typeof t === 'string') : []
      const link = header(res.headers, 'link')
      // The page is the mirror's to get right, whatever upstream did with n and last. An upstream
      // that pages as the spec says answers just this page (sorting changes nothing), and its Link
      // names the rest; one that ignores n and last and sorts nothing (distribution 2.8) answers
      // everything, which is sorted and paged here. n=0 is an empty page with no Link.
      const { items, next } = paginate(listed, page)
      const upstreamNext = link === undefined || page.n === 0 ? undefined : nextLast(link)
      return { tags: items, next: next ?? upstreamNext, outcome: 'miss', headers: passedThroughHeaders(res.headers) }
    } catch (err) {
      if (err instanceof NameUnknownError || !(err instanceof RegistryError) || refusedCaller(route, err)) throw err
      const known = this.#o.cache.tags(route.repository)
      if (known.length === 0) throw err
      const { items, next } = paginate(known, page)
      return { tags: items, next, outcome: 'stale', headers: {} }
    }
  }

  async referrers (route: Route, digest: string, artifactType: string | undefined): Promise<{ content: Buffer, outcome: CacheOutcome, filtered: boolean }> {
    if (artifactType !== undefined && !isMediaType(artifactType)) {
      throw new ManifestInvalidError('artifactType is not a media type', { artifactType: artifactType.slice(0, 80) })
    }
    const key = artifactType ?? ''
    const cached = this.#o.cache.referrers(route.repository, digest, key)
    if (cached !== undefined && (this.#o.offline === true || this.#now() - cached.fetchedAt < this.#o.referrersTtl)) {
      return { content: cached.content, outcome: 'hit', filtered: key !== '' }
    }
    if (this.#o.offline === true) throw new ManifestUnknownError('no referrers in the cache for this digest, and this mirror is offline', { digest })
    const qs = artifactType === undefined ? '' : `?artifactType=${encodeURIComponent(artifactType)}`
    try {
      const res = await this.#o.upstream(route.upstream).send('GET', `/v2/${route.name}/referrers/${digest}${qs}`,
        { repository: route.name, caller: route.caller, headers: { accept: MediaTypes.ociIndex }, kind: 'referrers' })
      let body: Record<string, unknown> & { manifests: unknown[] }
      if (res.status === 404) {
        // No referrers API: the spec's fallback is the referrers tag, else no referrers at all.
        await res.body.dump()
        body = await this.#referrersTag(route, digest)
      } else if (res.status !== 200) {
        await res.body.dump()
        throw new UnavailableError(`upstream answered HTTP ${res.status} for referrers`)
      } else {
        const parsed = await readJson(res.body)
        if (!isReferrersIndex(parsed)) throw new UnavailableError('upstream sent an invalid referrers index')
        body = parsed
      }
      // Upstream may ignore artifactType (the spec allows it); the mirror filters itself, so the
      // answer, fresh or cached, is always filtered when a filter was asked for.
      if (artifactType !== undefined) {
        body.manifests = body.manifests.filter(m => isRecord(m) && m.artifactType === artifactType)
      }
      const content = Buffer.from(JSON.stringify(body))
      this.#o.cache.putReferrers(route.repository, digest, key, content)
      return { content, outcome: 'miss', filtered: key !== '' }
    } catch (err) {
      if (cached === undefined || !(err instanceof RegistryError) || refusedCaller(route, err)) throw err
      return { content: cached.content, outcome: 'stale', filtered: key !== '' }
    }
  }

  /** The index under the referrers tag (`sha256-<hex>`), or an empty index when there is none. */
  async #referrersTag (route: Route, digest: string): Promise<Record<string, unknown> & { manifests: unknown[] }> {
    const res = await this.#o.upstream(route.upstream).send('GET', `/v2/${route.name}/manifests/${referrersTag(digest)}`,
      { repository: route.name, caller: route.caller, headers: { accept: MediaTypes.ociIndex }, kind: 'referrers' })
    if (res.status === 200) {
      const parsed = await readJson(res.body).catch(() => undefined)
      if (isReferrersIndex(parsed)) return parsed
    } else {
      await res.body.dump()
    }
    return { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [] }
  }

  /** A page of the repositories the cache holds that `visible` lets the caller see: at most MAX_CATALOG_PAGE, whatever `n` asks. */
  catalog (page: Page, visible: (repository: string) => boolean = () => true): { repositories: string[], next: string | undefined } {
    const n = Math.min(page.n ?? MAX_CATALOG_PAGE, MAX_CATALOG_PAGE)
    const { items, next } = paginate(this.#o.cache.repositories().filter(visible), { n, last: page.last })
    return { repositories: items, next }
  }
}

async function readJson (body: StoppableBody): Promise<unknown> {
  const bytes = await readLimited(body, MAX_LISTING_BYTES)
  if (bytes === undefined) throw new UnavailableError('upstream listing is too large')
  try {
    return JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new UnavailableError('upstream sent invalid JSON')
  }
}

function isReferrersIndex (v: unknown): v is Record<string, unknown> & { manifests: unknown[] } {
  return isRecord(v) && Array.isArray(v.manifests)
}

function isRecord (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** The `last` parameter of an RFC 5988 `rel="next"` link. */
function nextLast (link: string): string | undefined {
  const m = /<([^>]*)>\s*;\s*rel="?next"?/.exec(link)
  if (m === null) return undefined
  try {
    return new URL(m[1] ?? '', 'http://x').searchParams.get('last') ?? undefined
  } catch {
    return undefined
  }
}
