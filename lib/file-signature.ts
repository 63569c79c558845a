// What changes when a file is replaced, however it is replaced: rewritten in
// place, renamed over, or a symlink swapped (Kubernetes mounts Secrets that
// way, which a file watch misses). Files the mirror re-reads on a change (TLS
// certificates, htpasswd) are polled with it.

import { stat } from 'node:fs/promises'

export async function fileSignature (paths: readonly string[]): Promise<string> {
  const parts = await Promise.all(paths.map(async path => {
    const s = await stat(path).catch(() => undefined)
    return s === undefined ? `${path}:missing` : `${path}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`
  }))
  return parts.join('|')
}
