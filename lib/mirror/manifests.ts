// Manifests. By digest: local first, upstream once, verified, then never again.
// By tag: the cached answer while younger than tagTtl; after that a HEAD
// upstream (free under Docker Hub's pull limit) confirms or replaces it; when
// upstream can't answer, the cached answer is served stale. Bytes are stored
// and served exactly as upstream sent them.

import type { Logger } from 'pino'
import { Inflight } from '../cache/inflight.js'
import type { Manifest } from '../cache/local-cache.js'
import type { RecentPulls } from '../cache/recent-pulls.js'
import { ManifestInvalidError, ManifestUnknownError, RegistryError, SizeInvalidError, UnavailableError } from '../errors.js'
import { parseDigest, type ManifestReference } from '../oci/reference.js'
import { digestOf } from '../oci/digest-check.js'
import { accepts, MANIFEST_ACCEPT, MediaTypes } from '../oci/media-types.js'
import type { CacheOutcome } from '../events.js'
import { contentLength, header, passedThroughHeaders } from '../oci/headers.js'
import { MAX_MANIFEST_BYTES } from '../oci/limits.js'
import { manifestMediaType } from '../oci/manifest.js'
import type { Route } from '../upstream/routing.js'
import { readLimited } from '../read-limited.js'
import { refusedCaller, type ServiceOptions } from './service-options.js'

export type { Manifest } from '../cache/local-cache.js'

export interface ManifestAnswer extends Manifest {
  readonly outcome: CacheOutcome
  readonly headers: Readonly<Record<string, string>>
}

export interface ManifestServiceOptions extends ServiceOptions {
  /** How long a tag's answer is trusted without asking upstream. */
  readonly tagTtl: number
  readonly log: Logger
  /** Told of each manifest served, so that making room leaves the images being pulled alone. */
  readonly pulls?: RecentPulls | undefined
}

type Fetched = { manifest: Manifest, headers: Record<string, string>, outcome: CacheOutcome }

export class ManifestService {
  readonly #o: ManifestServiceOptions
  readonly #now: () => number
  readonly #flights = new Inflight<Fetched>()

  constructor (options: ManifestServiceOptions) {
    this.#o = options
    this.#now = options.now ?? Date.now
  }

  async get (route: Route, reference: ManifestReference, accept: string | undefined): Promise<ManifestAnswer> {
    const answer = reference.kind === 'digest'
      ? await this.#byDigest(route, reference.digest, accept)
      : await this.#byTag(route, reference.tag, accept)
    this.#o.cache.access.manifest(answer.digest)
    this.#o.pulls?.served(route.repository, answer.digest)
    return answer
  }

  async #byDigest (route: Route, digest: string, accept: string | undefined): Promise<ManifestAnswer> {
    const local = this.#o.cache.manifest(digest)
    if (local !== undefined && this.#o.cache.manifestBelongsTo(digest, route.repository)) return { ...local, outcome: 'hit', headers: {} }
    if (local !== undefined && this.#o.offline !== true) {
      // Cached for another repository: served under this one's name only once upstream says it has it
      // (or another node of the fleet recorded that it did).
      await this.#flights.run(`c:${route.repository}:${digest}`, async () => {
        if (await this.#o.cache.adoptStoredManifest(digest, route.repository) === undefined) await this.#confirm(route, digest)
        return { manifest: local, headers: {}, outcome: 'hit' }
      }).promise
      return { ...local, outcome: 'hit', headers: {} }
    }
    const { promise, joined } = this.#flights.run(`d:${route.repository}:${digest}`, async () => {
      // A store shared by the fleet may have it from another node, linked to this repository.
      const shared = await this.#o.cache.adoptStoredManifest(digest, route.repository)
      if (shared !== undefined) return { manifest: shared, headers: {}, outcome: 'hit' }
      if (this.#o.offline === true) throw new ManifestUnknownError('manifest not in the cache, and this mirror is offline', { digest })
      const fetched = await this.#fetch(route, digest, mergeAccept(accept))
      this.#store(route, fetched.manifest)
      return { ...fetched, outcome: 'miss' }
    })
    const fetched = await promise
    return { ...fetched.manifest, outcome: joined ? 'joined' : fetched.outcome, headers: fetched.headers }
  }

  async #byTag (route: Route, tag: string, accept: string | undefined): Promise<ManifestAnswer> {
    const known = this.#o.cache.tag(route.repository, tag)
    const cached = known === undefined ? undefined : this.#o.cache.manifest(known.digest)
    if (this.#o.offline === true) return this.#offlineTag(tag, cached, accept)
    let result: Fetched
    let joined = false
    if (known !== undefined && cached !== undefined && this.#now() - known.confirmedAt < this.#o.tagTtl) {
      result = { manifest: cached, headers: {}, outcome: 'hit' }
    } else {
      const flight = this.#flights.run(`t:${route.repository}:${tag}`, async () => await (cached === undefined
        ? this.#resolveTag(route, tag)
        : this.#revalidateTag(route, tag, cached)))
      joined = flight.joined
      result = await flight.promise
    }
    if (!accepts(accept, result.manifest.mediaType)) {
      // The client can't take what the tag points at (say, an index): ask upstream with the client's
      // own Accept, and keep that answer by digest only; the tag keeps its full answer.
      const narrow = await this.#fetch(route, tag, accept ?? MANIFEST_ACCEPT)
      this.#store(route, narrow.manifest)
      if (!accepts(accept, narrow.manifest.mediaType)) {
        throw new ManifestUnknownError('manifest not available in a media type the client accepts', { tag, mediaType: narrow.manifest.mediaType })
      }
      return { ...narrow.manifest, outcome: 'miss', headers: narrow.headers }
    }
    return { ...result.manifest, outcome: joined ? 'joined' : result.outcome, headers: result.headers }
  }

  /** Offline, a tag is what the cache says, however old; the client must accept what it points at. */
  #offlineTag (tag: string, cached: Manifest | undefined, accept: string | undefined): ManifestAnswer {
    if (cached === undefined) throw new ManifestUnknownError('tag not in the cache, and this mirror is offline', { tag })
    if (!accepts(accept, cached.mediaType)) {
      throw new ManifestUnknownError('manifest not available in a media type the client accepts, and this mirror is offline', { tag, mediaType: cached.mediaType })
    }
    return { ...cached, outcome: 'hit', headers: {} }
  }

  async #resolveTag (route: Route, tag: string): Promise<Fetched> {
    const fetched = await this.#fetch(route, tag, MANIFEST_ACCEPT)
    this.#store(route, fetched.manifest, tag)
    return { ...fetched, outcome: 'miss' }
  }

  async #revalidateTag (route: Route, tag: string, cached: Manifest): Promise<Fetched> {
    const client = this.#o.upstream(route.upstream)
    let res
    try {
      res = await client.send('HEAD', `/v2/${route.name}/manifests/${tag}`, { repository: route.name, caller: route.caller, headers: { accept: MANIFEST_ACCEPT }, kind: 'manifest' })
      await res.body.dump()
    } catch (err) {
      // A client's own login that upstream now refuses (passthrough) gets nothing, stale or not.
      if (refusedCaller(route, err)) throw err
      this.#logStale(route, tag, err)
      return { manifest: cached, headers: err instanceof RegistryError ? pickRateLimit(err.headers) : {}, outcome: 'stale' }
    }
    const headers = passedThroughHeaders(res.headers)
    if (res.status === 404) {
      // Upstream says the tag is gone: so is ours.
      this.#o.cache.deleteTag(route.repository, tag)
      throw new ManifestUnknownError('manifest unknown to upstream', { tag })
    }
    if (res.status !== 200) {
      this.#logStale(route, tag, new UnavailableError(`HTTP ${res.status}`))
      return { manifest: cached, headers, outcome: 'stale' }
    }
    const digest = header(res.headers, 'docker-content-digest')
    if (digest === cached.digest) {
      this.#o.cache.confirmTag(route.repository, tag, digest)
      return { manifest: cached, headers, outcome: 'revalidated' }
    }
    // The tag moved (or upstream did not say where): fetch it; if that fails, the old answer still stands.
    const known = digest === undefined ? undefined : this.#o.cache.manifest(digest)
    if (known !== undefined) {
      this.#store(route, known, tag)
      return { manifest: known, headers, outcome: 'revalidated' }
    }
    try {
      return await this.#resolveTag(route, tag)
    } catch (err) {
      if (err instanceof ManifestUnknownError || refusedCaller(route, err)) throw err
      this.#logStale(route, tag, err)
      return { manifest: cached, headers, outcome: 'stale' }
    }
  }

  /** A HEAD (free under Docker Hub's pull limit): does this repository have the manifest? Recorded when it does. */
  async #confirm (route: Route, digest: string): Promise<void> {
    const res = await this.#o.upstream(route.upstream).send('HEAD', `/v2/${route.name}/manifests/${digest}`, { repository: route.name, caller: route.caller, headers: { accept: MANIFEST_ACCEPT }, kind: 'manifest' })
    await res.body.dump()
    if (res.status === 404) throw new ManifestUnknownError('manifest unknown to upstream', { digest })
    if (res.status !== 200) throw new UnavailableError(`upstream ${route.upstream} answered HTTP ${res.status} for a manifest`, { digest })
    this.#o.cache.addManifestRepository(digest, route.repository)
  }

  #logStale (route: Route, tag: string, err: unknown): void {
    this.#o.log.warn({ upstream: route.upstream, repository: route.name, tag, err: err instanceof Error ? err.message : String(err) },
      'upstream could not revalidate tag; serving the cached manifest')
  }

  /** GETs a manifest from upstream and checks it: size, digest when asked by digest, JSON. */
  async #fetch (route: Route, reference: string, accept: string): Promise<{ manifest: Manifest, headers: Record<string, string> }> {
    const client = this.#o.upstream(route.upstream)
    const res = await client.send('GET', `/v2/${route.name}/manifests/${reference}`, { repository: route.name, caller: route.caller, headers: { accept }, kind: 'manifest' })
    const headers = passedThroughHeaders(res.headers)
    if (res.status === 404) {
      await res.body.dump()
      throw new ManifestUnknownError('manifest unknown to upstream', { reference })
    }
    if (res.status !== 200) {
      await res.body.dump()
      throw new UnavailableError(`upstream ${route.upstream} answered HTTP ${res.status} for a manifest`, { reference })
    }
    const length = contentLength(res.headers) ?? 0
    if (length > MAX_MANIFEST_BYTES) {
      res.body.destroy()
      throw new SizeInvalidError(`manifest is larger than ${MAX_MANIFEST_BYTES} bytes`, { reference, size: length })
    }
    const content = await readLimited(res.body, MAX_MANIFEST_BYTES)
    if (content === undefined) throw new SizeInvalidError(`manifest is larger than ${MAX_MANIFEST_BYTES} bytes`, { reference })
    const algorithm = reference.includes(':') ? parseDigest(reference).algorithm : 'sha256'
    const digest = digestOf(content, algorithm)
    if (reference.includes(':') && digest !== reference) {
      this.#o.log.error({ upstream: route.upstream, repository: route.name, expected: reference, actual: digest }, 'manifest from upstream does not match its digest; not cached')
      throw new ManifestInvalidError('manifest from upstream does not match the requested digest', { expected: reference })
    }
    let mediaType: string
    try {
      mediaType = manifestMediaType(header(res.headers, 'content-type'), content)
    } catch (err) {
      this.#o.log.error({ upstream: route.upstream, repository: route.name, reference, err: err instanceof Error ? err.message : String(err) }, 'upstream sent something that is not a manifest; not cached')
      throw err
    }
    const announced = header(res.headers, 'docker-content-digest')
    if (announced !== undefined && announced.startsWith(`${algorithm}:`) && announced !== digest && !mediaType.startsWith(MediaTypes.dockerSchema1)) {
      this.#o.log.error({ upstream: route.upstream, repository: route.name, announced, actual: digest }, 'manifest bytes do not match the digest upstream announced; not cached')
      throw new UnavailableError('upstream sent a manifest that does not match its announced digest', { reference })
    }
    return { manifest: { digest, mediaType, content }, headers }
  }

  #store (route: Route, manifest: Manifest, tag?: string): void {
    this.#o.cache.putManifest(route.repository, manifest, tag)
  }
}

/** The client's Accept plus every type the mirror can cache, so a by-digest fetch is never refused for its type. */
function mergeAccept (accept: string | undefined): string {
  if (accept === undefined || accept.trim() === '') return MANIFEST_ACCEPT
  return `${accept}, ${MANIFEST_ACCEPT}`
}

function pickRateLimit (headers: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(headers)) if (k.startsWith('ratelimit-') || k === 'docker-ratelimit-source') out[k] = v
  return out
}

