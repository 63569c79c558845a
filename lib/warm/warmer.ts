// Warm-up: each image resolved as a pull through the mirror resolves it (the
// tag, then for an index each child manifest, filtered by platform when asked,
// then every config and layer), every blob consumed to its end through a
// digest check, so it is downloaded, verified and cached exactly as a pull
// would leave it. What is cached already is a hit, so a second run only reads
// (or, for export, only looks).

import { pipeline } from 'node:stream/promises'
import { RegistryError } from '../errors.js'
import type { Route } from '../upstream/routing.js'
import { formatBytes } from '../cli/maintenance.js'
import { DigestCheck } from '../oci/digest-check.js'
import { MAX_INDEX_DEPTH } from '../oci/limits.js'
import { parseManifestStrictly, type ChildDescriptor } from '../oci/manifest.js'
import type { RequestedImage } from './image-list.js'
import { Limiter } from '../limiter.js'
import { formatPlatform, matchesPlatform, type PlatformSpec } from '../oci/platform.js'
import type { Progress, ProgressRow } from './progress.js'
import type { ContentSource, SourceManifest } from './sources.js'

export interface WarmerOptions {
  readonly source: ContentSource
  /** Only these platforms of an index; empty or undefined = all. */
  readonly platforms?: readonly PlatformSpec[] | undefined
  /** Blob downloads at once, across all images. */
  readonly concurrency: number
  /**
   * Read cached blobs through the digest check as well (warm). Export leaves
   * this off: it checks every byte as it writes them.
   */
  readonly verifyCached: boolean
  readonly progress: Progress
}

export interface WarmedBlob { readonly digest: string, readonly size: number, readonly mediaType: string | undefined }

export interface WarmedImage {
  readonly image: RequestedImage
  /** What the reference resolved to: the index, or the only manifest. */
  readonly top: { readonly digest: string, readonly mediaType: string, readonly size: number }
  /** Every manifest taken, the top one first. */
  readonly manifests: readonly SourceManifest[]
  /** Every config and layer of those manifests, each once. */
  readonly blobs: readonly WarmedBlob[]
  readonly fetched: { blobs: number, bytes: number }
  readonly cached: { blobs: number, bytes: number }
}

export type WarmResult =
  | { readonly ok: true, readonly image: RequestedImage, readonly warmed: WarmedImage }
  | { readonly ok: false, readonly image: RequestedImage, readonly reason: string }

type BlobResult = { cached: boolean, size: number }

/** Nested indexes deeper than this are refused rather than followed. */

export class Warmer {
  readonly #o: WarmerOptions
  readonly #blobLimit: Limiter
  /** One fetch per blob however many images share it. */
  readonly #blobs = new Map<string, Promise<BlobResult>>()

  constructor (options: WarmerOptions) {
    this.#o = options
    this.#blobLimit = new Limiter(options.concurrency)
  }

  /** Warms every image; never rejects: each failure is a result with its reason. */
  async run (images: readonly RequestedImage[]): Promise<WarmResult[]> {
    const imageLimit = new Limiter(this.#o.concurrency)
    return await Promise.all(images.map(async image => await imageLimit.run(async () => await this.#warm(image))))
  }

  async #warm (image: RequestedImage): Promise<WarmResult> {
    const row = this.#o.progress.row(image.name)
    const started = Date.now()
    try {
      const warmed = await this.#resolveAndFetch(image, row)
      const seconds = ((Date.now() - started) / 1000).toFixed(1)
      row.done(`${warmed.blobs.length} blobs, ${formatBytes(warmed.fetched.bytes + warmed.cached.bytes)} ` +
        `(${warmed.fetched.blobs} fetched, ${warmed.cached.blobs} cached) in ${seconds}s: ${warmed.top.digest}`)
      return { ok: true, image, warmed }
    } catch (err) {
      const reason = describeError(err)
      row.failed(reason)
      return { ok: false, image, reason }
    }
  }

  async #resolveAndFetch (image: RequestedImage, row: ProgressRow): Promise<WarmedImage> {
    const { source } = this.#o
    const route: Route = image.ref
    const top = await source.manifest(route, image.ref.reference)
    const manifests: SourceManifest[] = [top]
    const blobs = new Map<string, WarmedBlob>()
    const seenManifests = new Set<string>([top.digest])

    const visit = async (manifest: SourceManifest, depth: number): Promise<void> => {
      let parsed
      try {
        parsed = parseManifestStrictly(manifest.content)
      } catch (err) {
        throw new Error(`manifest ${manifest.digest}: ${err instanceof Error ? err.message : String(err)}`)
      }
      if (parsed.isIndex) {
        if (depth >= MAX_INDEX_DEPTH) throw new Error(`index ${manifest.digest} nests indexes more than ${MAX_INDEX_DEPTH} deep`)
        const children = parsed.children.filter(c => c.kind === 'manifest')
        const wanted = this.#o.platforms ?? []
        const chosen = wanted.length === 0 ? children : children.filter(c => matchesPlatform(wanted, c.platform))
        if (chosen.length === 0 && children.length > 0) {
          const has = children.map(c => c.platform === undefined ? 'unknown' : formatPlatform(c.platform))
          throw new Error(`no manifest for ${wanted.map(formatPlatform).join(', ')} in the index (it has ${[...new Set(has)].join(', ')})`)
        }
        for (const child of chosen) {
          if (seenManifests.has(child.digest)) continue
          seenManifests.add(child.digest)
          const m = await source.manifest(route, child.digest)
          if (child.size !== undefined && m.content.length !== child.size) {
            throw new Error(`manifest ${child.digest} has ${m.content.length} bytes, its index says ${child.size}`)
          }
          manifests.push(m)
          await visit(m, depth + 1)
        }
        return
      }
      for (const child of parsed.children) {
        if (child.kind !== 'manifest' && !blobs.has(child.digest)) {
          blobs.set(child.digest, { digest: child.digest, size: child.size ?? -1, mediaType: child.mediaType })
        }
      }
    }
    await visit(top, 0)

    const list = [...blobs.values()]
    row.plan(list.length, list.reduce((sum, b) => sum + Math.max(0, b.size), 0))
    const fetched = { blobs: 0, bytes: 0 }
    const cached = { blobs: 0, bytes: 0 }
    const sized: WarmedBlob[] = []
    // Every blob is tried even when one fails, so one bad layer does not hide the state of the others.
    const outcomes = await Promise.allSettled(list.map(async blob => {
      const { result, advanced } = await this.#blob(route, blob, row)
      const size = result.size
      row.blobDone(blob.digest, size, result.cached ? 'cached' : 'fetched', advanced)
      const tally = result.cached ? cached : fetched
      tally.blobs++
      tally.bytes += size
      sized.push({ ...blob, size })
    }))
    const failures = outcomes.flatMap((o, i) => o.status === 'rejected' ? [`${list[i]?.digest ?? '?'}: ${describeError(o.reason)}`] : [])
    if (failures.length > 0) throw new Error(failures.length === 1 ? `blob ${failures[0] ?? ''}` : `${failures.length} blobs failed: ${failures.join('; ')}`)
    const order = new Map(list.map((b, i) => [b.digest, i]))
    sized.sort((a, b) => (order.get(a.digest) ?? 0) - (order.get(b.digest) ?? 0))
    return {
      image,
      top: { digest: top.digest, mediaType: top.mediaType, size: top.content.length },
      manifests,
      blobs: sized,
      fetched,
      cached
    }
  }

  /** Fetches (or finds) one blob; a blob another image is fetching already is waited for, not fetched again. */
  async #blob (route: Route, blob: WarmedBlob, row: ProgressRow): Promise<{ result: BlobResult, advanced: number }> {
    const running = this.#blobs.get(blob.digest)
    if (running !== undefined) return { result: await running, advanced: 0 }
    let advanced = 0
    const promise = this.#blobLimit.run(async (): Promise<BlobResult> => {
      const answer = await this.#o.source.blob(route, blob.digest)
      const expected = blob.size >= 0 ? blob.size : answer.size
      if (answer.cached && !this.#o.verifyCached) {
        answer.body.destroy()
        return { cached: true, size: expected ?? 0 }
      }
      const sink = new DigestCheck(blob.digest, expected, {
        what: `blob ${blob.digest}`,
        discard: true,
        onBytes: n => {
          advanced += n
          row.advance(n)
        }
      })
      await pipeline(answer.body, sink)
      return { cached: answer.cached, size: sink.bytes }
    })
    this.#blobs.set(blob.digest, promise)
    // A failed fetch is forgotten, so another image naming the same blob tries again.
    promise.catch(() => { if (this.#blobs.get(blob.digest) === promise) this.#blobs.delete(blob.digest) })
    const result = await promise
    return { result, advanced }
  }
}

/** A reason a person can act on: the message, and the OCI code when there is one. */
export function describeError (err: unknown): string {
  if (err instanceof RegistryError) return `${err.message} (${err.code})`
  if (err instanceof Error) {
    const code = 'code' in err && typeof err.code === 'string' && /^[A-Z_]+$/.test(err.code) && !err.message.includes(err.code) ? ` (${err.code})` : ''
    return `${err.message}${code}`
  }
  return String(err)
}

export type { ChildDescriptor }
