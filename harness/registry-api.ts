// The few distribution API calls the tests make themselves, to learn what an
// upstream serves (the truth a client's pull is compared with).

import { sha256 } from './digest.js'
import { mediaTypes } from './oci-layout.js'

const acceptAll = [mediaTypes.ociIndex, mediaTypes.ociManifest, mediaTypes.dockerList, mediaTypes.dockerManifest].join(', ')

export interface ManifestInfo {
  readonly digest: string
  readonly mediaType: string
  readonly body: Buffer
}

/** GET /v2/NAME/manifests/REF; checks that Docker-Content-Digest matches the bytes. */
export async function getManifest (registryUrl: string, name: string, reference: string): Promise<ManifestInfo> {
  const url = `${registryUrl}/v2/${name}/manifests/${reference}`
  const response = await fetch(url, { headers: { accept: acceptAll } })
  const body = Buffer.from(await response.arrayBuffer())
  if (response.status !== 200) throw new Error(`GET ${url}: ${response.status} ${body.toString('utf8')}`)
  const digest = sha256(body)
  const header = response.headers.get('docker-content-digest')
  if (header !== null && header !== digest) throw new Error(`GET ${url}: Docker-Content-Digest ${header} but the body hashes to ${digest}`)
  return { digest, mediaType: response.headers.get('content-type') ?? '', body }
}
