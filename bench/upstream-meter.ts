// What reached the upstream, counted at the upstream: its access log has one
// line per request with the body bytes it sent, written once the response is
// complete. Counting there, not in a mirror's own log, catches the requests a
// mirror makes in the background (distribution's proxy stores every cold blob
// with a second GET of its own, which can end after the client's pull).

import { isBlobGet, type RegistryRequest } from '../harness/access-log.js'
import type { ReferenceRegistry } from '../harness/reference-registry.js'
import { sleep } from '../harness/wait.js'
import { ioBytes } from './proc.js'

export interface UpstreamTraffic {
  readonly requests: readonly RegistryRequest[]
  /** Body bytes the upstream sent. */
  readonly bytes: number
  readonly blobGets: number
  readonly blobHeads: number
  readonly manifestRequests: number
  /** GET/HEAD /v2/ (a client checking the API version or looking for an auth challenge). */
  readonly pings: number
}

const blobPath = /\/blobs\/sha256:[0-9a-f]{64}$/
const manifestPath = /\/manifests\/[^/]+$/

export class UpstreamMeter {
  readonly #registry: ReferenceRegistry
  readonly #pid: number

  constructor (registry: ReferenceRegistry, pid: number) {
    this.#registry = registry
    this.#pid = pid
  }

  async mark (): Promise<number> {
    return await this.#registry.mark()
  }

  async since (mark: number): Promise<UpstreamTraffic> {
    return summarize(await this.#registry.requestsSince(mark))
  }

  /**
   * Waits until the upstream has moved no byte for quietMs: a transfer a
   * mirror started in the background (and whose log line is yet to come) has
   * ended. Then every request so far is in the log.
   */
  async settle (quietMs = 1000, timeoutMs = 180_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let last = await ioBytes(this.#pid)
    let quietSince = Date.now()
    while (Date.now() - quietSince < quietMs) {
      if (Date.now() > deadline) throw new Error(`the upstream was still busy after ${timeoutMs} ms`)
      await sleep(100)
      const now = await ioBytes(this.#pid)
      if (now !== last) {
        last = now
        quietSince = Date.now()
      }
    }
    await this.#registry.flushLog()
  }
}

export function summarize (requests: readonly RegistryRequest[]): UpstreamTraffic {
  let bytes = 0
  let blobGets = 0
  let blobHeads = 0
  let manifestRequests = 0
  let pings = 0
  for (const request of requests) {
    bytes += request.bytes
    if (isBlobGet(request)) blobGets++
    else if (request.method === 'HEAD' && blobPath.test(request.path)) blobHeads++
    else if (manifestPath.test(request.path)) manifestRequests++
    else if (request.path === '/v2/' || request.path === '/v2') pings++
  }
  return { requests, bytes, blobGets, blobHeads, manifestRequests, pings }
}

/** Blob GETs of one digest. */
export function blobGetsOf (traffic: UpstreamTraffic, digest: string): number {
  return traffic.requests.filter(request => isBlobGet(request) && request.path.endsWith(`/blobs/${digest}`)).length
}
