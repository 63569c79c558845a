// Private images in passthrough mode (`upstreams.X.clientCredentials:
// passthrough`): whether a caller may read a repository of that upstream is
// the upstream's to say, asked with the caller's own login (or none) — a
// token for the repository's pull scope, then a HEAD of what was asked for —
// before anything of the repository is served, from the cache or not. The
// answer is remembered per (login, repository) for a short time, keyed by the
// login's HMAC, never the secret; concurrent requests share one check. Each
// check asks the upstream anew (its token server too, with no token cached
// from before), and a yes counts from when it was asked, so a right revoked
// upstream is refused within clientAccessTtl and one request. With
// the upstream down, a yes still inside its time is honoured and new checks
// are refused, saying so. The mirror's own credentials never ask for a caller.
// Logins are checked with the upstream at most `loginRate` a second and
// `loginConcurrency` at once: a flood of guesses at the mirror never reaches
// the upstream faster, so the mirror's address is not the one it blocks.

import { LRUCache } from 'lru-cache'
import type { Logger } from 'pino'
import { Inflight } from '../cache/inflight.js'
import { BlobUnknownError, DeniedError, ManifestUnknownError, NameUnknownError, RegistryError, TooManyRequestsError, UnavailableError } from '../errors.js'
import type { MirrorEvents } from '../events.js'
import { MANIFEST_ACCEPT } from '../oci/media-types.js'
import { Limiter, RateLimit } from '../limiter.js'
import type { UpstreamClient } from '../upstream/client.js'
import { callerKey, type ClientLogin, type PassthroughCaller } from '../upstream/client-login.js'

/** What a request asks of a repository, which the check asks upstream for in its stead. */
export type Probe =
  | { readonly kind: 'manifest', readonly reference: string }
  | { readonly kind: 'blob', readonly digest: string }
  | { readonly kind: 'tags' }

export interface PassthroughUpstream {
  readonly client: UpstreamClient
  /** Milliseconds a yes is trusted without asking again. */
  readonly ttl: number
  /** What a user name begins with when it is a login for this upstream. */
  readonly loginPrefix: string
  /** Login checks sent to it, at most, per second and at once. */
  readonly loginRate: number
  readonly loginConcurrency: number
}

/** Login checks waiting for one of an upstream's loginConcurrency slots, at most. */
const LOGINS_WAITING = 64
/** Logins turned away at the bound are logged at most this often (milliseconds), with their count. */
const BOUND_LOG_INTERVAL = 10_000

export interface PassthroughGateOptions {
  /** The upstreams in passthrough mode, by name. */
  readonly upstreams: ReadonlyMap<string, PassthroughUpstream>
  readonly events: Pick<MirrorEvents, 'passthroughChecked'>
  readonly log: Logger
  readonly now?: (() => number) | undefined
  /** An offline mirror asks no upstream: nothing of a passthrough upstream is served. */
  readonly offline?: boolean | undefined
}

/** Remembered answers, at most: a flood of made-up logins or names cannot grow them. */
const MAX_DECISIONS = 10_000
/** A no is remembered this long at most (so a right just granted upstream shows soon), and a flood of refused requests asks upstream once. */
const DENIAL_TTL = 10_000

interface Decision { readonly allowed: boolean, readonly until: number, readonly message: string }

export class PassthroughGate {
  readonly #o: PassthroughGateOptions
  readonly #now: () => number
  readonly #decisions = new LRUCache<string, Decision>({ max: MAX_DECISIONS })
  readonly #checks = new Inflight<Decision>()
  /** Per upstream: how fast and how many at once logins are checked there. */
  readonly #logins = new Map<string, { readonly rate: RateLimit, readonly slots: Limiter, turnedAway: number, loggedAt: number }>()

  constructor (options: PassthroughGateOptions) {
    this.#o = options
    this.#now = options.now ?? Date.now
    for (const [name, entry] of options.upstreams) {
      this.#logins.set(name, { rate: new RateLimit(entry.loginRate, this.#now), slots: new Limiter(entry.loginConcurrency), turnedAway: 0, loggedAt: -Infinity })
    }
  }

  /** The login form of the passthrough upstream (there is one at most): what its user names begin with. */
  get loginPrefix (): string {
    for (const entry of this.#o.upstreams.values()) return entry.loginPrefix
    throw new Error('no upstream is in passthrough mode')
  }

  /** Whether the upstream is in passthrough mode. */
  covers (upstream: string): boolean {
    return this.#o.upstreams.has(upstream)
  }

  get upstreams (): readonly string[] { return [...this.#o.upstreams.keys()] }

  /**
   * Resolves when upstream lets the caller read the repository (now, or in an
   * answer still inside its time); throws DeniedError when it does not, the
   * not-found error of the probe when upstream does not have what was asked
   * for, and UnavailableError when upstream cannot be asked.
   */
  async check (upstream: string, name: string, caller: PassthroughCaller, probe: Probe): Promise<void> {
    const entry = this.#upstream(upstream)
    const key = decisionKey(caller, `${upstream}/${name}`)
    const known = this.#decisions.get(key)
    if (known !== undefined && known.until > this.#now()) {
      if (known.allowed) return
      throw new DeniedError(known.message, { repository: `${upstream}/${name}` })
    }
    if (this.#o.offline === true) {
      throw new UnavailableError(`this mirror is offline, and only upstream ${upstream} can say who may read ${name}`, { upstream })
    }
    const arrived = this.#now()
    const ask = async (): Promise<Decision> => await this.#ask(entry, upstream, name, caller, probe)
    let runKey = key
    let decision: Decision
    for (;;) {
      const { promise, joined } = this.#checks.run(runKey, ask)
      try {
        decision = await promise
      } catch (err) {
        // A check that found nothing under another request's name says nothing about this one's: ask for it.
        if (!joined || !isNotFound(err) || runKey !== key) throw err
        runKey = `${key}\0${probeKey(probe)}`
        continue
      }
      // A check joined under way may have asked upstream so long before this request came that its
      // answer had run out by then (a slow upstream, a short clientAccessTtl): this request asks again.
      // Each key runs one check at a time, so the next one began after this request came: no loop.
      if (!joined || decision.until > arrived) break
    }
    if (!decision.allowed) throw new DeniedError(decision.message, { repository: `${upstream}/${name}` })
  }

  /** Whether the caller was let read the repository within its time (for the catalog: nothing is asked). */
  allowed (caller: PassthroughCaller, repository: string): boolean {
    const known = this.#decisions.get(decisionKey(caller, repository))
    return known !== undefined && known.allowed && known.until > this.#now()
  }

  /** Upstream refused the caller after all (a request under a yes): the yes goes. */
  forget (caller: PassthroughCaller, repository: string): void {
    this.#decisions.delete(decisionKey(caller, repository))
  }

  /**
   * Whether the passthrough upstream takes the login (its token endpoint
   * asked with it). Unreachable: UnavailableError, saying so.
   */
  async checkLogin (login: ClientLogin): Promise<boolean> {
    let unreachable: RegistryError | undefined
    for (const [name, { client, loginRate }] of this.#o.upstreams) {
      const bounds = this.#logins.get(name)
      if (bounds === undefined) continue
      const wait = bounds.rate.take()
      if (wait > 0 || bounds.slots.waiting >= LOGINS_WAITING) {
        // Once per interval, with the count since: a flood must not become a flood of log lines.
        bounds.turnedAway++
        if (this.#now() - bounds.loggedAt >= BOUND_LOG_INTERVAL) {
          this.#o.log.warn({ upstream: name, turnedAway: bounds.turnedAway }, 'login checks at their bound: logins turned away without asking upstream')
          bounds.loggedAt = this.#now()
          bounds.turnedAway = 0
        }
        throw new TooManyRequestsError(`upstream ${name} is asked to check at most ${loginRate} logins a second; try again in a moment`, { upstream: name }, { 'retry-after': String(Math.max(1, Math.ceil(wait / 1000))) })
      }
      try {
        if (await bounds.slots.run(async () => await client.checkLogin(login))) return true
      } catch (err) {
        if (!(err instanceof UnavailableError)) throw err
        unreachable = new UnavailableError(`the login cannot be checked: upstream ${name} does not answer (${err.message})`, { upstream: name })
      }
    }
    if (unreachable !== undefined) throw unreachable
    return false
  }

  async #ask (entry: PassthroughUpstream, upstream: string, name: string, caller: PassthroughCaller, probe: Probe): Promise<Decision> {
    const repository = `${upstream}/${name}`
    const who = caller.login === undefined ? 'an anonymous caller' : caller.login.username
    const { events, log } = this.#o
    // An answer is as old as the moment upstream was asked, not the moment it came back.
    const askedAt = this.#now()
    let status: number
    try {
      const request = probeRequest(name, probe)
      const res = await entry.client.send(request.method, request.path, { repository: name, headers: request.headers, kind: probe.kind, caller, fresh: true })
      await res.body.dump()
      status = res.status
    } catch (err) {
      if (err instanceof DeniedError) {
        events.passthroughChecked(upstream, 'denied')
        log.info({ upstream, repository, upstreamUser: caller.login?.username }, 'upstream does not let the caller read the repository')
        const decision = { allowed: false, until: askedAt + Math.min(DENIAL_TTL, entry.ttl), message: `upstream ${upstream} does not let ${who} read ${name}` }
        this.#decisions.set(decisionKey(caller, repository), decision)
        return decision
      }
      if (err instanceof TooManyRequestsError) throw err
      events.passthroughChecked(upstream, 'unavailable')
      const reason = err instanceof Error ? err.message : String(err)
      throw new UnavailableError(`whether ${who} may read ${name} is for upstream ${upstream} to say, and it cannot be asked now (${reason}); access it granted in the last ${Math.round(entry.ttl / 1000)} s is still honoured`, { upstream })
    }
    if (status === 200) {
      events.passthroughChecked(upstream, 'allowed')
      const decision = { allowed: true, until: askedAt + entry.ttl, message: '' }
      this.#decisions.set(decisionKey(caller, repository), decision)
      return decision
    }
    if (status === 404) {
      // Upstream looked (so the caller got that far) but has no such thing: nothing is served, nothing remembered.
      events.passthroughChecked(upstream, 'unknown')
      throw notFound(probe, name)
    }
    events.passthroughChecked(upstream, 'unavailable')
    throw new UnavailableError(`upstream ${upstream} answered HTTP ${status} when asked whether ${who} may read ${name}`, { upstream, status })
  }

  #upstream (name: string): PassthroughUpstream {
    const entry = this.#o.upstreams.get(name)
    if (entry === undefined) throw new Error(`upstream ${name} is not in passthrough mode`)
    return entry
  }
}

function decisionKey (caller: PassthroughCaller, repository: string): string {
  return `${callerKey(caller)}\0${repository}`
}

function probeRequest (name: string, probe: Probe): { method: 'GET' | 'HEAD', path: string, headers: Record<string, string> } {
  switch (probe.kind) {
    case 'manifest': return { method: 'HEAD', path: `/v2/${name}/manifests/${probe.reference}`, headers: { accept: MANIFEST_ACCEPT } }
    case 'blob': return { method: 'HEAD', path: `/v2/${name}/blobs/${probe.digest}`, headers: {} }
    // distribution answers no HEAD for tag lists; the shortest page will do.
    case 'tags': return { method: 'GET', path: `/v2/${name}/tags/list?n=1`, headers: {} }
  }
}

function probeKey (probe: Probe): string {
  switch (probe.kind) {
    case 'manifest': return `m:${probe.reference}`
    case 'blob': return `b:${probe.digest}`
    case 'tags': return 't'
  }
}

function isNotFound (err: unknown): boolean {
  return err instanceof ManifestUnknownError || err instanceof BlobUnknownError || err instanceof NameUnknownError
}

function notFound (probe: Probe, name: string): RegistryError {
  switch (probe.kind) {
    case 'manifest': return new ManifestUnknownError('manifest unknown to upstream', { reference: probe.reference })
    case 'blob': return new BlobUnknownError('blob unknown to upstream', { digest: probe.digest })
    case 'tags': return new NameUnknownError('repository name not known to registry', { name })
  }
}
