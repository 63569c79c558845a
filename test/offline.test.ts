// Offline mode: the mirror never contacts an upstream, serves what its cache
// holds (tags whatever their age) and answers the OCI 404 for the rest. The
// fake upstream's request log must stay empty throughout.

import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { appendFile } from 'node:fs/promises'
import { join } from 'node:path'
import { loadConfig } from '../lib/config/load.js'
import { createLogger } from '../lib/log.js'
import { createMirror, type Mirror } from '../lib/server.js'
import { CLI, runCli, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { makeImage, makeIndex, MediaTypes } from './helpers/images.js'
import { tempDir } from './helpers/temp-dir.js'

interface Cached {
  dir: string
  storage: string
  /** Online config. */
  config: string
  fake: FakeRegistry
  image: ReturnType<typeof makeImage>
  multi: ReturnType<typeof makeIndex>
  /** In the upstream, never pulled. */
  other: ReturnType<typeof makeImage>
}

/** A data directory warmed (online, with a 0 tag TTL so every tag is stale at once) from a fake upstream. */
async function cached (t: Test): Promise<Cached> {
  const dir = await tempDir(t, 'mirror-offline')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const storage = join(dir, 'data')
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url, 'ghcr.io': fake.url }, cache: { tagTtl: '0' } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [3000, 200] })
  const multi = makeIndex(fake, 'org/multi', 'v2', ['linux/amd64', 'linux/arm64'], 1000)
  const other = makeImage(fake, 'library/app', 'v2', { layers: [100] })
  const warmed = await runCli(['warm', '--config', config, 'app:v1', 'ghcr.io/org/multi:v2'])
  if (warmed.code !== 0) throw new Error(`warm failed: ${warmed.stdout}${warmed.stderr}`)
  fake.reset()
  return { dir, storage, config, fake, image, multi, other }
}

async function errorCode (res: Response): Promise<string | undefined> {
  const body = await res.json() as { errors?: Array<{ code?: string }> }
  return body.errors?.[0]?.code
}

async function offlineMirror (t: Test, c: Cached, how: 'file' | 'override'): Promise<Mirror> {
  if (how === 'file') await appendFile(c.config, 'offline: true\n')
  const config = await loadConfig({ file: c.config, overrides: { offline: how === 'override' ? true : undefined } })
  t.equal(config.offline, true)
  const mirror = await createMirror(config, createLogger('silent'))
  t.teardown(async () => await mirror.close())
  return mirror
}

t.test('offline: true serves the cache (tags whatever their age) and the OCI 404 for the rest, and never contacts upstream', async t => {
  const c = await cached(t)
  const mirror = await offlineMirror(t, c, 'file')
  const get = async (path: string, init: RequestInit = {}): Promise<Response> => await fetch(`${mirror.url}${path}`, init)

  const byTag = await get('/v2/library/app/manifests/v1', { headers: { accept: MediaTypes.ociManifest } })
  t.equal(byTag.status, 200, 'a stale tag (tagTtl 0) is answered from the cache')
  t.equal(byTag.headers.get('docker-content-digest'), c.image.manifestDigest)
  t.ok(Buffer.from(await byTag.arrayBuffer()).equals(c.image.manifest))
  const index = await get('/v2/ghcr.io/org/multi/manifests/v2')
  t.equal(index.headers.get('docker-content-digest'), c.multi.indexDigest, 'an index by tag, byte-exact')
  await index.arrayBuffer()
  const child = await get(`/v2/org/multi/manifests/${c.multi.manifestDigests[1] ?? ''}?ns=ghcr.io`)
  t.equal(child.status, 200, 'a child manifest by digest, containerd style')
  await child.arrayBuffer()
  for (const d of c.image.blobDigests) {
    const blob = await get(`/v2/library/app/blobs/${d}`)
    t.equal(blob.status, 200)
    await blob.arrayBuffer()
  }
  const tags = await get('/v2/library/app/tags/list')
  t.same(await tags.json(), { name: 'library/app', tags: ['v1'] }, 'tags from the cache: v2 exists upstream but was never pulled')

  const unknownTag = await get('/v2/library/app/manifests/v2')
  t.equal(unknownTag.status, 404)
  t.equal(await errorCode(unknownTag), 'MANIFEST_UNKNOWN')
  const unknownDigest = await get(`/v2/library/app/manifests/${c.other.manifestDigest}`)
  t.equal(unknownDigest.status, 404)
  t.equal(await errorCode(unknownDigest), 'MANIFEST_UNKNOWN')
  const unknownBlob = await get(`/v2/library/app/blobs/${c.other.layerDigests[0] ?? ''}`)
  t.equal(unknownBlob.status, 404)
  t.equal(await errorCode(unknownBlob), 'BLOB_UNKNOWN')
  const headBlob = await get(`/v2/library/app/blobs/${c.other.layerDigests[0] ?? ''}`, { method: 'HEAD' })
  t.equal(headBlob.status, 404, 'HEAD of a blob the cache lacks')
  const unknownRepo = await get('/v2/library/nothing/tags/list')
  t.equal(unknownRepo.status, 404)
  t.equal(await errorCode(unknownRepo), 'NAME_UNKNOWN')
  const referrers = await get(`/v2/library/app/referrers/${c.image.manifestDigest}`)
  t.equal(referrers.status, 404)
  t.equal(await errorCode(referrers), 'MANIFEST_UNKNOWN')
  const narrow = await get('/v2/ghcr.io/org/multi/manifests/v2', { headers: { accept: MediaTypes.ociManifest } })
  t.equal(narrow.status, 404, 'an index to a client that takes only manifests: not fetched narrower upstream')
  t.equal(await errorCode(narrow), 'MANIFEST_UNKNOWN')

  t.same(c.fake.requests.map(r => `${r.method} ${r.path}`), [], 'not one request reached the upstream')
})

t.test('the same config online asks upstream about the stale tag: offline is what kept it quiet', async t => {
  const c = await cached(t)
  const config = await loadConfig({ file: c.config })
  t.equal(config.offline, false)
  const mirror = await createMirror(config, createLogger('silent'))
  t.teardown(async () => await mirror.close())
  const res = await fetch(`${mirror.url}/v2/library/app/manifests/v1`)
  await res.arrayBuffer()
  t.equal(c.fake.count('HEAD', '/v2/library/app/manifests/v1'), 1)
})

t.test('serve --offline: the flag does what the key does', async t => {
  const c = await cached(t)
  const child = spawn(process.execPath, [CLI, 'serve', '--offline', '--config', c.config], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  })
  let output = ''
  child.stdout.on('data', (d: Buffer) => { output += d.toString() })
  child.stderr.on('data', (d: Buffer) => { output += d.toString() })
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "listening" line:\n${output}`)), 20_000)
    child.stdout.on('data', () => {
      const m = /"url":"(http:\/\/[^"]+)"[^\n]*"offline":true[^\n]*"msg":"listening"/.exec(output)
      if (m?.[1] !== undefined) {
        clearTimeout(timer)
        resolve(m[1])
      }
    })
  })
  const hit = await fetch(`${url}/v2/library/app/manifests/v1`)
  t.equal(hit.status, 200)
  await hit.arrayBuffer()
  const miss = await fetch(`${url}/v2/library/app/manifests/v2`)
  t.equal(miss.status, 404)
  t.equal(await errorCode(miss), 'MANIFEST_UNKNOWN')
  t.same(c.fake.requests.map(r => `${r.method} ${r.path}`), [], 'not one request reached the upstream')
})

t.test('warm --offline checks the cache: cached images pass, missing ones are named, upstream hears nothing', async t => {
  const c = await cached(t)
  const ok = await runCli(['warm', '--offline', '--config', c.config, 'app:v1', 'ghcr.io/org/multi:v2'])
  t.equal(ok.code, 0, ok.stdout + ok.stderr)
  t.match(ok.stdout, /warmed 2 of 2 images: 7 blobs, .* \(0 fetched, 0 B; 7 already cached/)
  const missing = await runCli(['warm', '--offline', '--config', c.config, 'app:v1', 'app:v2'])
  t.equal(missing.code, 1)
  t.match(missing.stdout, /docker\.io\/library\/app:v2: tag not in the cache, and this mirror is offline \(MANIFEST_UNKNOWN\)/)
  t.same(c.fake.requests.map(r => `${r.method} ${r.path}`), [])
})
