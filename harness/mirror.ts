// The mirror under test. By default registry-mirror itself, built to dist/;
// E2E_MIRROR=reference runs the same tests against distribution's registry in
// proxy mode (one upstream, docker.io only), the anchor we measure against.

import { ReferenceRegistry } from './reference-registry.js'
import type { Mirror, UpstreamEntry } from './mirror-api.js'
import { MirrorProcess, type MirrorTls, type MirrorAuth, type MirrorAccess } from './mirror-process.js'
import { TrafficRecorder, type SeenRequest } from './traffic-recorder.js'

/** Short, so tests can let tags go stale and see the mirror revalidate or serve them stale. */
export const E2E_TAG_TTL = '1s'

export type { Mirror, UpstreamEntry } from './mirror-api.js'
export type { MirrorTls, MirrorAuth, MirrorAccess, MirrorAccessRule } from './mirror-process.js'

export type MirrorKind = 'registry-mirror' | 'reference'

export function mirrorKind (): MirrorKind {
  return process.env.E2E_MIRROR === 'reference' ? 'reference' : 'registry-mirror'
}

/** A mirror whose clients' requests are on record. */
export interface ObservedMirror extends Mirror {
  /** Every request line clients sent, oldest first. Throws for a TLS mirror, which clients reach directly. */
  requests: () => SeenRequest[]
}

export interface StartMirrorOptions {
  /**
   * Serve HTTPS with these files. Clients then reach the mirror directly:
   * the TrafficRecorder reads request lines off plain HTTP and cannot see
   * inside TLS, so requests() is not available.
   */
  readonly tls?: MirrorTls
  /** The address the mirror listens on (default 127.0.0.1). */
  readonly address?: string
  /** Client authentication (htpasswd users) and the access rules. */
  readonly auth?: MirrorAuth
  readonly access?: MirrorAccess
  /** metrics.token (with auth, metrics are otherwise off). */
  readonly metricsToken?: string
}

export async function startMirror (upstreams: readonly UpstreamEntry[], options: StartMirrorOptions = {}): Promise<ObservedMirror> {
  if (mirrorKind() === 'reference' && (options.tls !== undefined || options.address !== undefined || options.auth !== undefined || options.access !== undefined || options.metricsToken !== undefined)) {
    throw new Error('E2E_MIRROR=reference: the reference proxy is started on 127.0.0.1 without TLS or auth')
  }
  const processOptions = { upstreams, tagTtl: E2E_TAG_TTL, tls: options.tls, address: options.address, auth: options.auth, access: options.access, metricsToken: options.metricsToken }
  if (options.tls !== undefined) {
    return new UnrecordedMirror(await MirrorProcess.start(processOptions))
  }
  const mirror = mirrorKind() === 'reference'
    ? await ReferenceProxy.start(upstreams)
    : await MirrorProcess.start(processOptions)
  try {
    return new RecordedMirror(mirror, await TrafficRecorder.start(mirror.host))
  } catch (err) {
    await mirror.close()
    throw err
  }
}

/** The mirror as clients see it: through a TrafficRecorder. */
class RecordedMirror implements ObservedMirror {
  readonly #mirror: Mirror
  readonly #recorder: TrafficRecorder

  constructor (mirror: Mirror, recorder: TrafficRecorder) {
    this.#mirror = mirror
    this.#recorder = recorder
  }

  get url (): string { return `http://${this.host}` }
  get host (): string { return this.#recorder.host }
  get registries (): readonly string[] { return this.#mirror.registries }
  get files (): Mirror['files'] { return this.#mirror.files }

  locationFor (registry: string): string {
    const location = this.#mirror.locationFor(registry)
    return this.host + location.slice(this.#mirror.host.length)
  }

  requests (): SeenRequest[] {
    return this.#recorder.requests()
  }

  async close (): Promise<void> {
    await this.#recorder.close()
    await this.#mirror.close()
  }

  tail (): string {
    return this.#mirror.tail()
  }
}

/** A mirror clients reach directly (over TLS): nothing records their requests. */
class UnrecordedMirror implements ObservedMirror {
  readonly #mirror: Mirror

  constructor (mirror: Mirror) {
    this.#mirror = mirror
  }

  get url (): string { return this.#mirror.url }
  get host (): string { return this.#mirror.host }
  get registries (): readonly string[] { return this.#mirror.registries }
  get files (): Mirror['files'] { return this.#mirror.files }

  locationFor (registry: string): string {
    return this.#mirror.locationFor(registry)
  }

  requests (): SeenRequest[] {
    throw new Error(`the mirror at ${this.url} serves TLS, which the TrafficRecorder cannot relay: its clients' requests are not recorded`)
  }

  async close (): Promise<void> {
    await this.#mirror.close()
  }

  tail (): string {
    return this.#mirror.tail()
  }
}

/** distribution's registry as a pull-through cache of the default upstream. */
class ReferenceProxy implements Mirror {
  readonly registries: readonly string[]
  readonly #registry: ReferenceRegistry

  private constructor (registry: ReferenceRegistry, registries: readonly string[]) {
    this.#registry = registry
    this.registries = registries
  }

  static async start (upstreams: readonly UpstreamEntry[]): Promise<ReferenceProxy> {
    const upstream = upstreams.find(entry => entry.default === true) ?? upstreams[0]
    if (upstream === undefined) throw new Error('the reference proxy needs an upstream')
    const registry = await ReferenceRegistry.start({ label: 'proxy', proxyRemoteUrl: upstream.url })
    return new ReferenceProxy(registry, [upstream.name])
  }

  get url (): string { return this.#registry.url }
  get host (): string { return this.#registry.host }

  locationFor (registry: string): string {
    if (!this.registries.includes(registry)) throw new Error(`the reference proxy does not serve ${registry}`)
    return this.host
  }

  async close (): Promise<void> {
    await this.#registry.close()
  }

  tail (): string {
    return this.#registry.tail()
  }
}
