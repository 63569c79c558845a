// `registry-mirror export`: an OCI image layout tar of images from the cache,
// fetched first when missing (or reported missing offline), that standard
// tools read.

import t, { type Test } from 'tap'
import { createHash } from 'node:crypto'
import { createReadStream, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { appendFile } from 'node:fs/promises'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { CacheIndex } from '../lib/db/cache-index.js'
import { readTar } from '../lib/warm/tar.js'
import { runCli, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry, type FakeRegistry } from './helpers/fake-registry.js'
import { makeImage, makeIndex } from './helpers/images.js'
import { tempDir } from './helpers/temp-dir.js'

interface Site { dir: string, storage: string, config: string, fake: FakeRegistry }

async function site (t: Test): Promise<Site> {
  const dir = await tempDir(t, 'mirror-export')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const storage = join(dir, 'data')
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url, 'ghcr.io': fake.url } })
  return { dir, storage, config, fake }
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`

/** Every file entry of a tar, whole (the test bundles are small). */
async function entriesOf (file: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>()
  for await (const entry of readTar(createReadStream(file))) {
    const chunks: Buffer[] = []
    for await (const c of entry.body) chunks.push(c)
    if (entry.type === 'file') out.set(entry.name, Buffer.concat(chunks))
  }
  return out
}

const hasSkopeo = spawnSync('skopeo', ['--version']).status === 0

t.test('export writes an OCI image layout tar, fetching what the cache lacks first; skopeo reads it by image name', async t => {
  const { fake, config, dir } = await site(t)
  const app = makeImage(fake, 'library/app', '1.27', { layers: [20_000, 512], mediaType: 'docker' })
  const multi = makeIndex(fake, 'org/multi', 'v1', ['linux/amd64', 'linux/arm64'], 3000)
  const warmed = await runCli(['warm', '--config', config, 'app:1.27'])
  t.equal(warmed.code, 0, warmed.stderr)
  fake.reset()

  const bundle = join(dir, 'bundle.tar')
  const r = await runCli(['export', '--config', config, 'app:1.27', 'ghcr.io/org/multi:v1', '-o', bundle])
  t.equal(r.code, 0, r.stdout + r.stderr)
  t.match(r.stdout, /exported 2 images to .*bundle\.tar/)
  for (const d of app.blobDigests) t.equal(fake.count('GET', `/blobs/${d}`), 0, 'what was cached came from the cache')
  for (const d of multi.blobDigests) t.equal(fake.count('GET', `/blobs/${d}`), 1, 'what was missing was fetched, once')

  const entries = await entriesOf(bundle)
  t.same(JSON.parse(entries.get('oci-layout')?.toString() ?? '{}'), { imageLayoutVersion: '1.0.0' })
  const index = JSON.parse(entries.get('index.json')?.toString() ?? '{}') as { manifests: Array<{ digest: string, mediaType: string, size: number, annotations: Record<string, string> }> }
  const described = index.manifests.map(m => [m.annotations['org.opencontainers.image.ref.name'], m.digest, m.mediaType, m.size, m.annotations['io.registry-mirror.wrapper-for']])
  const wrapper = index.manifests[1]
  t.same(described, [
    ['docker.io/library/app:1.27', app.manifestDigest, app.mediaType, app.manifest.length, undefined],
    ['docker.io/library/app:1.27', wrapper?.digest, 'application/vnd.oci.image.index.v1+json', wrapper?.size, app.manifestDigest],
    ['ghcr.io/org/multi:v1', multi.indexDigest, multi.mediaType, multi.index.length, undefined]
  ], 'each image under its name, byte-exact; a Docker-typed one also through an OCI index that skopeo can select by name')
  t.same(JSON.parse(entries.get(`blobs/sha256/${wrapper?.digest.slice(7) ?? ''}`)?.toString() ?? '{}').manifests, [
    { ...app.descriptor, platform: { architecture: 'amd64', os: 'linux' } }
  ], 'the OCI index names the Docker manifest as it is, with its platform from the config')
  const expected = [app.manifestDigest, ...app.blobDigests, wrapper?.digest ?? '', multi.indexDigest, ...multi.manifestDigests, ...multi.blobDigests]
  const blobs = [...entries.keys()].filter(n => n.startsWith('blobs/'))
  t.same(blobs.sort(), expected.map(d => `blobs/sha256/${d.slice(7)}`).sort(), 'every manifest, config and layer, each once')
  for (const name of blobs) t.equal(sha256(entries.get(name) ?? Buffer.alloc(0)), `sha256:${name.slice('blobs/sha256/'.length)}`, `${name} matches its name`)
  t.ok(entries.get(`blobs/sha256/${multi.indexDigest.slice(7)}`)?.equals(multi.index), 'the index, byte for byte')
  t.same(readdirSync(dir).filter(n => n.includes('.part')), [], 'no temp file left beside the bundle')

  if (!hasSkopeo) {
    t.comment('skopeo is not installed: skipping the interoperability check')
    return
  }
  const single = join(dir, 'skopeo-app')
  const copied = spawnSync('skopeo', ['--insecure-policy', 'copy', `oci-archive:${bundle}:docker.io/library/app:1.27`, `dir:${single}`], { encoding: 'utf8' })
  t.equal(copied.status, 0, copied.stderr)
  t.equal(sha256(readFileSync(join(single, 'manifest.json'))), app.manifestDigest, 'skopeo copies the image by its name, digest unchanged')
  const all = join(dir, 'skopeo-multi')
  const copiedAll = spawnSync('skopeo', ['--insecure-policy', 'copy', '--all', `oci-archive:${bundle}:ghcr.io/org/multi:v1`, `dir:${all}`], { encoding: 'utf8' })
  t.equal(copiedAll.status, 0, copiedAll.stderr)
  t.equal(sha256(readFileSync(join(all, 'manifest.json'))), multi.indexDigest, 'and the index with every platform, digest unchanged')
})

t.test('export --offline reports images the cache lacks, writes no bundle, and asks upstream nothing', async t => {
  const { fake, config, dir, storage } = await site(t)
  makeImage(fake, 'library/app', 'v1', { layers: [1000] })
  const partial = makeImage(fake, 'library/half', 'v1', { layers: [1000, 1000] })
  makeImage(fake, 'library/never', 'v1', { layers: [1000] })
  t.equal((await runCli(['warm', '--config', config, 'app:v1', 'half:v1'])).code, 0)
  // A layer gone from disk and index (evicted): the image is no longer whole.
  const gone = partial.layerDigests[1] ?? ''
  const index = new CacheIndex({ path: join(storage, 'index.db') })
  index.deleteBlob(gone)
  index.close()
  rmBlob(storage, gone)
  fake.reset()

  const bundle = join(dir, 'bundle.tar')
  const r = await runCli(['export', '--offline', '--config', config, 'app:v1', 'half:v1', 'never:v1', '-o', bundle])
  t.equal(r.code, 1)
  t.match(r.stdout, /found 1 of 3 images/)
  t.match(r.stdout, new RegExp(`docker\\.io/library/half:v1: blob ${gone}: blob not in the cache, and this mirror is offline \\(BLOB_UNKNOWN\\)`))
  t.match(r.stdout, /docker\.io\/library\/never:v1: tag not in the cache, and this mirror is offline \(MANIFEST_UNKNOWN\)/)
  t.match(r.stdout, /no bundle written/)
  t.notOk(existsSync(bundle))
  t.same(fake.requests.map(q => `${q.method} ${q.path}`), [], 'the upstream heard nothing')

  await appendFile(config, 'offline: true\n')
  const fromFile = await runCli(['export', '--config', config, 'never:v1', '-o', bundle])
  t.equal(fromFile.code, 1, 'offline: true in the config does the same')
  t.same(fake.requests.length, 0)
})

t.test('a cached blob that no longer matches its digest stops the export: no bundle under its name', async t => {
  const { fake, config, dir, storage } = await site(t)
  const image = makeImage(fake, 'library/app', 'v1', { layers: [5000] })
  t.equal((await runCli(['warm', '--config', config, 'app:v1'])).code, 0)
  const layer = image.layerDigests[0] ?? ''
  const path = join(storage, 'blobs', 'sha256', layer.slice(7, 9), layer.slice(7))
  const bytes = readFileSync(path)
  bytes[100] = (bytes[100] ?? 0) ^ 0xff
  writeFileSync(path, bytes)
  const bundle = join(dir, 'bundle.tar')
  const r = await runCli(['export', '--config', config, 'app:v1', '-o', bundle])
  t.equal(r.code, 1)
  t.match(r.stderr, new RegExp(`export failed, no bundle written: blob ${layer} in the cache does not match its digest`))
  t.notOk(existsSync(bundle))
  t.same(readdirSync(dir).filter(n => n.includes('.part')), [])
})

t.test('export needs -o and at least one image', async t => {
  const { config } = await site(t)
  const noOutput = await runCli(['export', '--config', config, 'app:v1'])
  t.equal(noOutput.code, 2)
  t.match(noOutput.stderr, /export needs -o BUNDLE\.tar/)
  const noImage = await runCli(['export', '--config', config, '-o', 'x.tar'])
  t.equal(noImage.code, 2)
  const platform = await runCli(['export', '--config', config, '--platform', 'linux/amd64', 'app:v1', '-o', 'x.tar'])
  t.equal(platform.code, 2)
  t.match(platform.stderr, /--platform is for warm only/)
})

function rmBlob (storage: string, digest: string): void {
  rmSync(join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7)))
}
