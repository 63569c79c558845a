// Which kind of client sent a request, from its User-Agent: the status page's
// "is it working" answer per kind. A fixed set, so a made-up user agent can
// only land in "other", never add a row.

export type ClientKind = 'dockerd' | 'containerd' | 'podman' | 'skopeo' | 'other'

export const CLIENT_KINDS: readonly ClientKind[] = ['dockerd', 'containerd', 'podman', 'skopeo', 'other']

/** What the page calls each kind. */
export const CLIENT_KIND_NAMES: Readonly<Record<ClientKind, string>> = {
  dockerd: 'dockerd (docker pull)',
  containerd: 'containerd (Kubernetes, nerdctl, ctr)',
  podman: 'podman, CRI-O, buildah',
  skopeo: 'skopeo',
  other: 'other clients'
}

/**
 * dockerd sends `docker/<version> go/…`; containerd `containerd/<version>`; skopeo
 * `skopeo/<version>`; podman, buildah and CRI-O pull through containers/image, which
 * sends `containers/<version> (github.com/containers/image)` unless the tool names itself.
 */
export function clientKind (userAgent: string | undefined): ClientKind {
  if (userAgent === undefined) return 'other'
  const ua = userAgent.trimStart().toLowerCase()
  if (ua.startsWith('docker/')) return 'dockerd'
  if (ua.startsWith('containerd/')) return 'containerd'
  if (ua.startsWith('skopeo/')) return 'skopeo'
  if (ua.startsWith('containers/') || ua.startsWith('podman/') || ua.startsWith('buildah/') || ua.startsWith('cri-o/')) return 'podman'
  return 'other'
}
