// What every mirror under test offers the scenarios, whichever kind it is
// (registry-mirror, or the reference registry in proxy mode).

export interface UpstreamEntry {
  /** The registry host clients name: docker.io, ghcr.io. */
  readonly name: string
  readonly url: string
  readonly default?: boolean
}

export interface Mirror {
  /** http://127.0.0.1:PORT, or https:// for a mirror serving TLS */
  readonly url: string
  /** 127.0.0.1:PORT */
  readonly host: string
  /** The registries it can serve. */
  readonly registries: readonly string[]
  /** host[/prefix] under which a registry's repositories are found (podman, skopeo). */
  locationFor: (registry: string) => string
  /** Its data directory and log files, for a test that looks into them (registry-mirror only). */
  readonly files?: { readonly data: string, readonly logs: readonly string[] } | undefined
  close: () => Promise<void>
  tail: () => string
}
