// `registry-mirror import`: a bundle exported from one mirror's cache goes
// into another's, every blob verified, all or nothing; the second mirror then
// serves it offline, byte for byte, without a single upstream request.

import t, { type Test } from 'tap'
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { execFile, spawnSync } from 'node:child_process'
import { promisify } from 'node:util'
import { loadConfig } from '../lib/config/load.js'
import { CacheIndex } from '../lib/db/cache-index.js'
import { createLogger } from '../lib/log.js'
import { createMirror } from '../lib/server.js'
import { tarHeader, END_OF_ARCHIVE } from '../lib/warm/tar.js'
import { auditStorage } from './helpers/audit.js'
import { runCli, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { makeImage, makeIndex, MediaTypes } from './helpers/images.js'
import { tempDir } from './helpers/temp-dir.js'

interface Sites {
  dir: string
  /** The connected side: warmed from `fake`, exports. */
  configA: string
  /** The air-gapped side: its upstream is `dead` (never given content), offline. */
  configB: string
  storageB: string
  fake: FakeRegistry
  dead: FakeRegistry
  bundle: string
  app: ReturnType<typeof makeImage>
  classic: ReturnType<typeof makeImage>
  multi: ReturnType<typeof makeIndex>
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

async function sites (t: Test): Promise<Sites> {
  const dir = await tempDir(t, 'mirror-import')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const dead = await startFakeRegistry()
  t.teardown(async () => await dead.close())
  const a = join(dir, 'a')
  const b = join(dir, 'b')
  const { mkdirSync } = await import('node:fs')
  mkdirSync(a)
  mkdirSync(b)
  const configA = await writeConfig(a, { storage: join(a, 'data'), upstreams: { 'docker.io': fake.url, 'ghcr.io': fake.url } })
  const storageB = join(b, 'data')
  const configB = await writeConfig(b, { storage: storageB, upstreams: { 'docker.io': dead.url, 'ghcr.io': dead.url }, offline: true })
  const app = makeImage(fake, 'library/app', 'v1', { layers: [300_000, 4000] })
  const classic = makeImage(fake, 'library/classic', 'v1', { layers: [20_000], mediaType: 'docker' })
  const multi = makeIndex(fake, 'org/multi', 'v1', ['linux/amd64', 'linux/arm64', 'linux/arm/v7'], 5000)
  const bundle = join(dir, 'bundle.tar')
  const r = await runCli(['export', '--config', configA, 'app:v1', 'classic:v1', 'ghcr.io/org/multi:v1', `library/app@${app.manifestDigest}`, '-o', bundle])
  if (r.code !== 0) throw new Error(`export failed: ${r.stdout}${r.stderr}`)
  return { dir, configA, configB, storageB, fake, dead, bundle, app, classic, multi }
}

/** Everything a cache holds, in a form two snapshots can be compared by. */
function snapshot (storage: string): unknown {
  const files: string[] = []
  const walk = (d: string): void => {
    let names: string[] = []
    try {
      names = readdirSync(d)
    } catch {
      return
    }
    for (const n of names) {
      const p = join(d, n)
      if (statSync(p).isDirectory()) walk(p)
      else files.push(`${relative(storage, p)} ${statSync(p).size}`)
    }
  }
  walk(join(storage, 'blobs'))
  walk(join(storage, 'tmp'))
  const index = new CacheIndex({ path: join(storage, 'index.db') })
  try {
    const totals = index.totals()
    const repositories = index.repositories()
    return {
      files: files.sort(),
      blobs: index.allBlobs().map(b => `${b.digest} ${b.size}`).sort(),
      counts: [totals.blobs, totals.manifests, totals.tags],
      tags: repositories.map(r => [r, index.listTags(r).map(tag => `${tag}=${index.getTag(r, tag)?.digest ?? ''}`)])
    }
  } finally {
    index.close()
  }
}

t.test('a bundle imported into an offline mirror is served byte for byte, with the upstream digests, and no upstream request', async t => {
  const s = await sites(t)
  const r = await runCli(['import', '--config', s.configB, s.bundle])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stdout, /imported 4 images from .*bundle\.tar: 11 blobs added, 0 already cached, 6 manifests/)
  t.same(auditStorage(s.storageB).problems, [], 'every imported blob is on disk under its digest, with its row')
  t.same(readdirSync(join(s.storageB, 'tmp')), [], 'nothing left in staging')

  const config = await loadConfig({ file: s.configB })
  const mirror = await createMirror(config, createLogger('silent'))
  t.teardown(async () => await mirror.close())
  const get = async (path: string, accept?: string): Promise<{ status: number, digest: string | null, type: string | null, bytes: Buffer }> => {
    const res = await fetch(`${mirror.url}${path}`, accept === undefined ? {} : { headers: { accept } })
    return { status: res.status, digest: res.headers.get('docker-content-digest'), type: res.headers.get('content-type'), bytes: Buffer.from(await res.arrayBuffer()) }
  }
  const pulls: Array<[string, string, Buffer, string, string[], Array<[string, Buffer]>]> = [
    ['/v2/library/app', 'v1', s.app.manifest, s.app.mediaType, [], s.app.blobDigests.map((d, i) => [d, i === 0 ? s.app.config : s.app.layers[i - 1] ?? Buffer.alloc(0)])],
    ['/v2/library/classic', 'v1', s.classic.manifest, s.classic.mediaType, [], [[s.classic.configDigest, s.classic.config], [s.classic.layerDigests[0] ?? '', s.classic.layers[0] ?? Buffer.alloc(0)]]],
    ['/v2/ghcr.io/org/multi', 'v1', s.multi.index, s.multi.mediaType, s.multi.manifestDigests, s.multi.images.flatMap(i => [[i.configDigest, i.config] as [string, Buffer], [i.layerDigests[0] ?? '', i.layers[0] ?? Buffer.alloc(0)] as [string, Buffer]])]
  ]
  for (const [repo, tag, manifest, mediaType, children, blobs] of pulls) {
    const byTag = await get(`${repo}/manifests/${tag}`)
    t.equal(byTag.status, 200, `${repo}:${tag}`)
    t.equal(byTag.digest, sha256(manifest), `${repo}:${tag} has the upstream's digest`)
    t.ok(byTag.bytes.equals(manifest), 'byte for byte')
    t.equal(byTag.type, mediaType, 'and its media type')
    for (const child of children) t.equal((await get(`${repo}/manifests/${child}`)).status, 200)
    for (const [digest, bytes] of blobs) {
      const blob = await get(`${repo}/blobs/${digest}`)
      t.equal(blob.status, 200)
      t.ok(blob.bytes.equals(bytes), `${digest.slice(0, 19)} byte for byte`)
    }
  }
  const byDigest = await get(`/v2/library/app/manifests/${s.app.manifestDigest}`)
  t.equal(byDigest.status, 200, 'an image exported by digest is there by digest')
  t.same(JSON.parse((await get('/v2/library/app/tags/list')).bytes.toString()), { name: 'library/app', tags: ['v1'] }, 'the tags came along')
  t.equal((await get('/v2/library/app/manifests/v2')).status, 404, 'what the bundle lacks is a 404')
  t.same(s.dead.requests.map(q => `${q.method} ${q.path}`), [], 'the upstream of the offline mirror heard nothing')

  const again = await runCli(['import', '--config', s.configB, s.bundle])
  t.equal(again.code, 0, again.stderr)
  t.match(again.stdout, /0 blobs added, 11 already cached/, 'importing twice adds nothing')
})

t.test('an index exported and imported stays byte-identical, its digest unchanged', async t => {
  const s = await sites(t)
  t.equal((await runCli(['import', '--config', s.configB, s.bundle])).code, 0)
  const index = new CacheIndex({ path: join(s.storageB, 'index.db') })
  t.teardown(() => index.close())
  const tag = index.getTag('ghcr.io/org/multi', 'v1')
  t.equal(tag?.digest, s.multi.indexDigest)
  const row = index.getManifest(s.multi.indexDigest)
  t.ok(row?.content.equals(s.multi.index), 'the same bytes')
  t.equal(row?.mediaType, MediaTypes.ociIndex)
  for (const d of s.multi.manifestDigests) t.ok(index.getManifest(d), `platform manifest ${d.slice(0, 19)} imported`)
})

/** Positions of each entry's data in a tar, for the tests that damage one. */
function entryOffsets (tar: Buffer): Array<{ name: string, data: number, size: number }> {
  const out: Array<{ name: string, data: number, size: number }> = []
  let at = 0
  while (at + 512 <= tar.length && tar[at] !== 0) {
    const name = tar.subarray(at, at + 100).toString().replace(/\0.*$/s, '')
    const size = parseInt(tar.subarray(at + 124, at + 136).toString().replace(/\0.*$/s, ''), 8)
    out.push({ name, data: at + 512, size })
    at += 512 + Math.ceil(size / 512) * 512
  }
  return out
}

t.test('a bundle with one flipped byte is refused, naming the entry, and the cache is unchanged', async t => {
  const s = await sites(t)
  // Something there already, so "unchanged" means more than "empty".
  const pre = join(s.dir, 'pre.tar')
  t.equal((await runCli(['export', '--config', s.configA, 'app:v1', '-o', pre])).code, 0)
  t.equal((await runCli(['import', '--config', s.configB, pre])).code, 0)
  const before = snapshot(s.storageB)

  const tar = readFileSync(s.bundle)
  const layer = s.app.layerDigests[0] ?? ''
  const entry = entryOffsets(tar).find(e => e.name === `blobs/sha256/${layer.slice(7)}`)
  if (entry === undefined) throw new Error('the layer is not in the bundle')
  const bad = Buffer.from(tar)
  const at = entry.data + Math.floor(entry.size / 2)
  bad[at] = (bad[at] ?? 0) ^ 0x01
  const flipped = join(s.dir, 'flipped.tar')
  writeFileSync(flipped, bad)
  const r = await runCli(['import', '--config', s.configB, flipped])
  t.equal(r.code, 1)
  t.match(r.stderr, new RegExp(`flipped\\.tar refused, nothing imported: bundle is corrupt: entry blobs/sha256/${layer.slice(7)} does not match its digest`))
  t.same(snapshot(s.storageB), before, 'the cache is as it was, staging removed')

  // A flipped byte in a header is caught by its checksum.
  const header = Buffer.from(tar)
  header[entry.data - 512 + 130] = (header[entry.data - 512 + 130] ?? 0) ^ 0x01
  const badHeader = join(s.dir, 'header.tar')
  writeFileSync(badHeader, header)
  const h = await runCli(['import', '--config', s.configB, badHeader])
  t.equal(h.code, 1)
  t.match(h.stderr, /bundle is corrupt: the header at byte \d+ \(after entry .*\) fails its checksum/)
  t.same(snapshot(s.storageB), before)
  t.same(s.dead.requests.length, 0)
})

t.test('a truncated bundle is refused, mid-entry or at an entry boundary, and the cache is unchanged', async t => {
  const s = await sites(t)
  t.equal((await runCli(['stats', '--config', s.configB])).code, 0, 'an empty cache to compare against')
  const before = snapshot(s.storageB)
  const tar = readFileSync(s.bundle)
  const entries = entryOffsets(tar)
  const big = entries.reduce((a, e) => e.size > a.size ? e : a)
  const mid = join(s.dir, 'mid.tar')
  writeFileSync(mid, tar.subarray(0, big.data + 1000))
  const r = await runCli(['import', '--config', s.configB, mid])
  t.equal(r.code, 1)
  t.match(r.stderr, new RegExp(`bundle is truncated: entry ${big.name} has 1000 of its ${big.size} bytes`))
  t.same(snapshot(s.storageB), before)

  const boundary = join(s.dir, 'boundary.tar')
  const cut = entries[entries.length - 2]
  if (cut === undefined) throw new Error('entries expected')
  writeFileSync(boundary, tar.subarray(0, cut.data + Math.ceil(cut.size / 512) * 512))
  const b = await runCli(['import', '--config', s.configB, boundary])
  t.equal(b.code, 1)
  t.match(b.stderr, new RegExp(`bundle is truncated: it ends after entry ${cut.name} without the end-of-archive marker`))
  t.same(snapshot(s.storageB), before)
})

t.test('a bundle missing a blob an image needs, or naming a registry that is not an upstream, is refused', async t => {
  const s = await sites(t)
  t.equal((await runCli(['stats', '--config', s.configB])).code, 0, 'an empty cache to compare against')
  const before = snapshot(s.storageB)
  const tar = readFileSync(s.bundle)
  const entries = entryOffsets(tar)
  const layer = `blobs/sha256/${(s.classic.layerDigests[0] ?? '').slice(7)}`
  // The same tar without one layer entry.
  const parts: Buffer[] = []
  for (const e of entries) {
    if (e.name === layer) continue
    parts.push(tar.subarray(e.data - 512, e.data + Math.ceil(e.size / 512) * 512))
  }
  parts.push(END_OF_ARCHIVE)
  const missing = join(s.dir, 'missing.tar')
  writeFileSync(missing, Buffer.concat(parts))
  const r = await runCli(['import', '--config', s.configB, missing])
  t.equal(r.code, 1)
  t.match(r.stderr, new RegExp(`layer of ${s.classic.manifestDigest} ${s.classic.layerDigests[0] ?? ''} is not in the bundle \\(no entry ${layer}\\)`))
  t.same(snapshot(s.storageB), before)

  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ ...s.app.descriptor, annotations: { 'org.opencontainers.image.ref.name': 'quay.io/x/app:v1' } }] }))
  const layout = Buffer.from('{"imageLayoutVersion":"1.0.0"}')
  const pad = (b: Buffer): Buffer => Buffer.alloc((512 - (b.length % 512)) % 512)
  const foreign = join(s.dir, 'foreign.tar')
  writeFileSync(foreign, Buffer.concat([tarHeader('oci-layout', layout.length), layout, pad(layout), tarHeader('index.json', index.length), index, pad(index), END_OF_ARCHIVE]))
  const f = await runCli(['import', '--config', s.configB, foreign])
  t.equal(f.code, 1)
  t.match(f.stderr, /index\.json manifests\[0\]: image quay\.io\/x\/app:v1: registry quay\.io is not an upstream of this mirror \(configured: docker\.io, ghcr\.io\)/)
  t.same(snapshot(s.storageB), before)
})

t.test('a bundle skopeo wrote (oci-archive) imports too', { skip: spawnSync('skopeo', ['--version']).status === 0 ? false : 'skopeo is not installed' }, async t => {
  const s = await sites(t)
  const archive = join(s.dir, 'skopeo.tar')
  // Not spawnSync: the fake upstream skopeo pulls from answers on this process's event loop.
  await promisify(execFile)('skopeo', ['--insecure-policy', 'copy', '--all', '--src-tls-verify=false', `docker://${s.fake.host}/org/multi:v1`, `oci-archive:${archive}:ghcr.io/org/multi:v1`], { timeout: 60_000 })
  const r = await runCli(['import', '--config', s.configB, archive])
  t.equal(r.code, 0, r.stderr)
  const index = new CacheIndex({ path: join(s.storageB, 'index.db') })
  t.teardown(() => index.close())
  const tag = index.getTag('ghcr.io/org/multi', 'v1')
  t.ok(tag, 'tagged under the name skopeo gave it')
  const top = index.getManifest(tag?.digest ?? '')
  const children = (JSON.parse(top?.content.toString() ?? '{}') as { manifests?: Array<{ digest: string }> }).manifests ?? []
  t.equal(children.length, 3)
  for (const child of children) t.ok(index.getManifest(child.digest), `with its platform manifest ${child.digest.slice(0, 19)}`)
})
