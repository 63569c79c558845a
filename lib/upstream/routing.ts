// Which upstream a request is for, and the repository name to ask it for.
// containerd names the registry in `?ns=`; podman and others put it first in
// the path (`/v2/ghcr.io/org/app/...`); dockerd names nothing and means the
// default upstream. A registry that is not configured is refused: the mirror
// never becomes an open proxy.

import type { MirrorConfig } from '../config/types.js'
import { NameInvalidError, RegistryUnknownError } from '../errors.js'
import { assertName } from '../oci/reference.js'
import type { PassthroughCaller } from './client-login.js'

export interface Route {
  /** The configured upstream's key, e.g. `docker.io`. */
  readonly upstream: string
  /** The repository name as the upstream knows it, e.g. `library/nginx`. */
  readonly name: string
  /** The cache's key for the repository: `<upstream>/<name>`. */
  readonly repository: string
  /**
   * For an upstream in passthrough mode: the client whose own login (or none)
   * asks upstream for this request, once it was let read the repository.
   */
  readonly caller?: PassthroughCaller | undefined
}

export interface RoutingTable {
  readonly upstreams: ReadonlySet<string>
  readonly defaultUpstream: string | undefined
}

/** The configured upstreams and the default one, as routing needs them. */
export function routingTable (config: Pick<MirrorConfig, 'upstreams'>): RoutingTable {
  return { upstreams: new Set(config.upstreams.keys()), defaultUpstream: [...config.upstreams.values()].find(u => u.default)?.name }
}

/** A first path component that names a registry host rather than a namespace. */
function looksLikeHost (component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost'
}

export function route (table: RoutingTable, rawName: string, ns: string | undefined): Route {
  let upstream: string | undefined
  let name = rawName
  const slash = rawName.indexOf('/')
  const first = slash === -1 ? rawName : rawName.slice(0, slash)
  // With ?ns= the registry is named already: a dotted first component is then a namespace
  // (GitLab groups, Harbor projects) unless it names a configured upstream itself.
  const hasNs = ns !== undefined && ns !== ''
  if (slash !== -1 && (table.upstreams.has(first) || (!hasNs && looksLikeHost(first)))) {
    if (!table.upstreams.has(first)) {
      throw new RegistryUnknownError(`registry ${first} is not an upstream of this mirror`, { registry: first })
    }
    upstream = first
    name = rawName.slice(slash + 1)
  }
  if (upstream === undefined && hasNs) {
    if (!table.upstreams.has(ns)) {
      throw new RegistryUnknownError(`registry ${ns} is not an upstream of this mirror`, { registry: ns })
    }
    upstream = ns
  }
  if (upstream === undefined) {
    if (table.defaultUpstream === undefined) {
      throw new RegistryUnknownError('no registry named and this mirror has no default upstream; use ?ns=<registry> or a /v2/<registry>/... path prefix', {})
    }
    upstream = table.defaultUpstream
  }
  if (name === '') throw new NameInvalidError('invalid repository name', { name: rawName })
  assertName(name)
  if (upstream === 'docker.io' && !name.includes('/')) name = `library/${name}`
  return { upstream, name, repository: `${upstream}/${name}` }
}
