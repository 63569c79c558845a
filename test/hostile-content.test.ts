// Content is what it claims: an upstream that answers a manifest request with
// something that is not a manifest gets it refused (503, not cached), and no
// upstream can change the Content-Type another upstream's clients get for a
// digest.

import t from 'tap'
import { request } from 'undici'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { MediaTypes } from './helpers/images.js'
import { startMirror, type TestMirror, type Teardown } from './helpers/mirror.js'

const config = { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'a'.repeat(64)}`, size: 2 }

async function setup (t: Teardown): Promise<{ docker: FakeRegistry, ghcr: FakeRegistry, mirror: TestMirror }> {
  const docker = await startFakeRegistry()
  t.teardown(async () => await docker.close())
  const ghcr = await startFakeRegistry()
  t.teardown(async () => await ghcr.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': docker.url, 'ghcr.io': ghcr.url } })
  return { docker, ghcr, mirror }
}

async function get (url: string): Promise<{ status: number, type: string | undefined, code: string | undefined, message: string | undefined }> {
  const res = await request(url, { headers: { accept: '*/*' } })
  const text = await res.body.text()
  const type = res.headers['content-type']
  let code: string | undefined
  let message: string | undefined
  if (res.statusCode >= 400) {
    const body = JSON.parse(text) as { errors: Array<{ code: string, message: string }> }
    code = body.errors[0]?.code
    message = body.errors[0]?.message
  }
  return { status: res.statusCode, type: typeof type === 'string' ? type : undefined, code, message }
}

t.test('what is not a manifest is refused with 503, logged, and never cached', async t => {
  const { docker, mirror } = await setup(t)
  const cases: Array<[string, Buffer | object, string, RegExp]> = [
    ['notjson', Buffer.from('{"schemaVersion": 2, "config": '), MediaTypes.ociManifest, /not JSON/],
    ['html', Buffer.from('{"config": {}, "note": "<html>an error page</html>"}'), 'text/html', /"text\/html" document where a manifest belongs/],
    ['crlf', { schemaVersion: 2, mediaType: `${MediaTypes.ociManifest}\r\nX-Injected: yes`, config, layers: [] }, MediaTypes.ociManifest, /where a manifest belongs/],
    ['noconfig', { schemaVersion: 2, mediaType: MediaTypes.ociManifest, layers: [] }, MediaTypes.ociManifest, /without a config/],
    ['secrets', { AccessKeyId: 'AKIA', SecretAccessKey: 's3cret' }, 'application/json', /without a config/]
  ]
  for (const [tag, body, type, why] of cases) {
    const digest = docker.addManifest('library/app', tag, body, type)
    for (const path of [`/v2/library/app/manifests/${tag}`, `/v2/library/app/manifests/${digest}`]) {
      const answer = await get(mirror.url + path)
      t.equal(answer.status, 503, `${tag}: ${path}`)
      t.equal(answer.code, 'UNAVAILABLE')
      t.match(answer.message, why)
    }
    t.equal(mirror.index.getManifest(digest), undefined, `${tag}: not cached`)
    t.equal(mirror.index.getTag('docker.io/library/app', tag), undefined)
  }
  t.ok(mirror.logs.some(l => l.level === 50 && l.msg === 'upstream sent something that is not a manifest; not cached'), 'logged as an error')
  // The CR/LF manifest never made it into the cache, so it cannot answer 500 later.
  const again = await get(`${mirror.url}/v2/library/app/manifests/crlf`)
  t.equal(again.status, 503)
})

t.test('the Content-Type of a manifest follows from its bytes, whichever upstream sent them', async t => {
  const { docker, ghcr, mirror } = await setup(t)
  // Bytes that state no mediaType of their own: upstreams may label them differently.
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, config, layers: [] }))
  const digest = docker.addManifest('library/app', 'v1', bytes, MediaTypes.ociManifest)
  ghcr.addManifest('org/other', 'v1', bytes, MediaTypes.dockerManifest)
  t.equal((await get(`${mirror.url}/v2/library/app/manifests/v1`)).type, MediaTypes.ociManifest)
  await get(`${mirror.url}/v2/ghcr.io/org/other/manifests/v1`)
  const byDigest = await get(`${mirror.url}/v2/library/app/manifests/${digest}`)
  t.equal(byDigest.type, MediaTypes.ociManifest, 'the other upstream did not change the type of these bytes')
  t.equal(mirror.index.getManifest(digest)?.mediaType, MediaTypes.ociManifest)

  // Bytes that state their mediaType are served as that, whatever the header said.
  const stated = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.dockerManifest, config, layers: [] }))
  const statedDigest = docker.addManifest('library/app', 'v2', stated, MediaTypes.ociManifest)
  t.equal((await get(`${mirror.url}/v2/library/app/manifests/v2`)).type, MediaTypes.dockerManifest)
  t.equal((await get(`${mirror.url}/v2/library/app/manifests/${statedDigest}`)).type, MediaTypes.dockerManifest)
})
