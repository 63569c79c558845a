// Where warm gets content from: the cache's own pull-through services on the
// data directory, or a running mirror over HTTP (`--server`). Both answer
// exactly as a pull through the mirror would: a manifest by tag or digest,
// and a blob as a stream that must be consumed or destroyed.

import { MirrorAnswerError } from '../errors.js'
import { readLimited } from '../read-limited.js'
import type { Readable } from 'node:stream'
import type { Dispatcher } from 'undici'
import type { BlobService } from '../mirror/blobs.js'
import type { ManifestService } from '../mirror/manifests.js'
import { basicAuthorization, contentLength, header } from '../oci/headers.js'
import { MAX_MANIFEST_BYTES } from '../oci/limits.js'
import { parseDigest, parseManifestReference } from '../oci/reference.js'
import { digestOf } from '../oci/digest-check.js'
import { MANIFEST_ACCEPT } from '../oci/media-types.js'
import type { Route } from '../upstream/routing.js'

export interface SourceManifest {
  readonly digest: string
  readonly mediaType: string
  readonly content: Buffer
}

export interface SourceBlob {
  /** Served from what the mirror had: no upstream was asked. */
  readonly cached: boolean
  readonly size: number | undefined
  readonly body: Readable
}

export interface ContentSource {
  manifest: (route: Route, reference: string) => Promise<SourceManifest>
  blob: (route: Route, digest: string) => Promise<SourceBlob>
  close: () => Promise<void>
}

/** The data directory's own services: `core.manifests` and `core.blobs`. */
export function coreSource (core: { readonly manifests: ManifestService, readonly blobs: BlobService }): ContentSource {
  return {
    manifest: async (route, reference) => {
      const answer = await core.manifests.get(route, parseManifestReference(reference), MANIFEST_ACCEPT)
      return { digest: answer.digest, mediaType: answer.mediaType, content: answer.content }
    },
    blob: async (route, digest) => {
      const answer = await core.blobs.get(route, digest, { method: 'GET', range: undefined })
      if (answer.body === undefined) throw new Error(`no body for blob ${digest}`)
      return { cached: answer.outcome === 'hit', size: answer.size, body: answer.body }
    },
    close: async () => {}
  }
}


/** A running mirror at `base` (http://host:port), by the path-prefix form `/v2/<registry>/<name>/...`. */
/** `credentials` (user and password) go with every request, for a mirror with auth. */
export async function serverSource (base: string, credentials?: { readonly user: string, readonly password: string }): Promise<ContentSource> {
  // Loaded here, for warm --server only: `serve` never needs undici (its upstreams are http1-agent.ts's).
  const { Agent, request } = await import('undici')
  const root = base.replace(/\/+$/, '')
  const login: Record<string, string> = credentials === undefined ? {} : { authorization: basicAuthorization(credentials.user, credentials.password) }
  const agent = new Agent({ connections: 32, headersTimeout: 300_000, bodyTimeout: 300_000 })
  const url = (route: Route, what: 'manifests' | 'blobs', reference: string): string =>
    `${root}/v2/${route.upstream}/${route.name}/${what}/${reference}`

  const fail = async (res: Dispatcher.ResponseData, what: string): Promise<never> => {
    const text = await res.body.text().catch(() => '')
    let code = 'UNKNOWN'
    let message = `the mirror answered HTTP ${res.statusCode} for ${what}`
    try {
      const first: unknown = (JSON.parse(text) as { errors?: unknown[] }).errors?.[0]
      if (typeof first === 'object' && first !== null && 'code' in first && typeof first.code === 'string') {
        code = first.code
        if ('message' in first && typeof first.message === 'string') message = `${first.message} (the mirror answered HTTP ${res.statusCode} ${code})`
      }
    } catch {}
    throw new MirrorAnswerError(res.statusCode, code, message)
  }

  return {
    manifest: async (route, reference) => {
      const res = await request(url(route, 'manifests', reference), { headers: { accept: MANIFEST_ACCEPT, ...login }, dispatcher: agent })
      if (res.statusCode !== 200) return await fail(res, `manifest ${reference}`)
      const content = await readLimited(res.body, MAX_MANIFEST_BYTES)
      if (content === undefined) throw new Error(`manifest ${reference} is larger than ${MAX_MANIFEST_BYTES} bytes`)
      const expected = reference.includes(':') ? reference : header(res.headers, 'docker-content-digest')
      const algorithm = expected === undefined ? 'sha256' : parseDigest(expected).algorithm
      const digest = digestOf(content, algorithm)
      if (expected !== undefined && digest !== expected) {
        throw new Error(`manifest ${reference} from the mirror does not match its digest ${expected}: got ${digest}`)
      }
      const mediaType = (header(res.headers, 'content-type') ?? '').split(';')[0]?.trim() ?? ''
      return { digest, mediaType, content }
    },
    blob: async (route, digest) => {
      const res = await request(url(route, 'blobs', digest), { headers: login, dispatcher: agent })
      if (res.statusCode !== 200) return await fail(res, `blob ${digest}`)
      return {
        cached: header(res.headers, 'x-mirror-cache') === 'hit',
        size: contentLength(res.headers),
        body: res.body
      }
    },
    close: async () => { await agent.close() }
  }
}
