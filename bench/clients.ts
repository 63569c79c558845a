// The clients of the single-shot workloads: curl for a blob (C, writes to
// /dev/null, so the client costs next to nothing) and skopeo for a whole image.

import { run } from '../harness/process.js'
import type { Skopeo } from '../harness/skopeo.js'

export interface BlobPull {
  readonly status: number
  readonly bytes: number
  /** curl's own time_total: from the connect to the last byte. */
  readonly seconds: number
}

export async function curlGet (url: string): Promise<BlobPull> {
  const { stdout } = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{time_total}', url], { timeoutMs: 600_000 })
  const [status, bytes, time] = stdout.trim().split(' ').map(Number)
  if (status === undefined || bytes === undefined || time === undefined) throw new Error(`curl ${url}: unexpected output "${stdout}"`)
  return { status, bytes, seconds: time }
}

/** GETs url, and fails unless the whole blob came back. */
export async function pullBlob (url: string, size: number): Promise<BlobPull> {
  const pull = await curlGet(url)
  if (pull.status !== 200 || pull.bytes !== size) {
    throw new Error(`GET ${url}: HTTP ${pull.status} with ${pull.bytes} bytes, expected 200 with ${size}`)
  }
  return pull
}

/** skopeo copy of every platform into dir; fails unless the manifest digest is the expected one. */
export async function timedSkopeoPull (skopeo: Skopeo, reference: string, dir: string, digest: string): Promise<number> {
  const started = process.hrtime.bigint()
  const pulled = await skopeo.pullToDir(reference, dir)
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9
  if (pulled.digest !== digest) throw new Error(`skopeo pulled ${reference} as ${pulled.digest}, expected ${digest}`)
  return elapsed
}
