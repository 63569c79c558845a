// Bit rot is never served for long: the background scrub re-hashes the cache
// at a bounded rate and removes what no longer matches; gc --verify does the
// same at once.

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { runCli, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'
import { sample } from './helpers/prometheus.js'
import { tempDir } from './helpers/temp-dir.js'

const fileOf = (storage: string, digest: string): string => join(storage, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))

function flipByte (path: string): void {
  const bytes = readFileSync(path)
  const middle = Math.floor(bytes.length / 2)
  bytes[middle] = (bytes[middle] ?? 0) ^ 0xff
  writeFileSync(path, bytes)
}

t.test('the scrub finds a flipped byte in a cached blob and a changed manifest, removes them, and the next pulls fetch them again', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, scrub: { rate: '256MiB', interval: 1000 } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [300_000, 200_000] })
  t.equal((await fetch(`${mirror.url}/v2/library/app/manifests/v1`)).status, 200)
  for (const digest of image.blobDigests) await (await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)).arrayBuffer()
  const [rotten, sound] = image.layerDigests as [string, string]
  flipByte(fileOf(mirror.storage, rotten))
  {
    const db = new Database(join(mirror.storage, 'index.db'))
    const row = db.prepare('SELECT content FROM manifests WHERE digest = ?').get(image.manifestDigest) as { content: Buffer }
    const changed = Buffer.from(row.content)
    changed[changed.length - 2] = 0x20
    db.prepare('UPDATE manifests SET content = ? WHERE digest = ?').run(changed, image.manifestDigest)
    db.close()
  }
  for (let i = 0; i < 300 && (mirror.index.getBlob(rotten) !== undefined || mirror.index.getManifest(image.manifestDigest) !== undefined); i++) {
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  t.equal(mirror.index.getBlob(rotten), undefined, 'the rotten blob is gone from the index')
  t.equal(mirror.index.getManifest(image.manifestDigest), undefined, 'and the changed manifest')
  t.ok(mirror.index.getBlob(sound), 'what matches stays')
  t.ok(mirror.logs.some(l => l.level === 50 && l.msg === 'scrub: cached blob does not match its digest (bit rot?); removing it' && l.digest === rotten), 'logged as an error')
  const metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(metrics, 'registry_mirror_corrupt_removed_total', { kind: 'blob' }), 1)
  t.equal(sample(metrics, 'registry_mirror_corrupt_removed_total', { kind: 'manifest' }), 1)
  t.ok((sample(metrics, 'registry_mirror_scrubbed_bytes_total') ?? 0) >= 500_000, 'the scrubbed bytes are counted')

  const again = await fetch(`${mirror.url}/v2/library/app/blobs/${rotten}`)
  t.equal(again.headers.get('x-mirror-cache'), 'miss', 'fetched again')
  t.ok(Buffer.from(await again.arrayBuffer()).equals(image.layers[0] ?? Buffer.alloc(0)), 'with the right bytes')
  const manifest = await fetch(`${mirror.url}/v2/library/app/manifests/${image.manifestDigest}`)
  t.ok(Buffer.from(await manifest.arrayBuffer()).equals(image.manifest))
})

t.test('gc checks sizes only; gc --verify re-hashes every cached blob and removes what does not match', async t => {
  const dir = await tempDir(t, 'mirror-verify')
  const storage = join(dir, 'data')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const digest = fake.addBlob('library/app', randomBytes(100_000))
  {
    const mirror = await startMirror({ teardown: () => {} }, { upstreams: { 'docker.io': fake.url }, storage })
    await (await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)).arrayBuffer()
    await mirror.close()
  }
  flipByte(fileOf(storage, digest))
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url } })
  const quick = await runCli(['gc', '--config', config])
  t.equal(quick.code, 0, quick.stderr)
  t.notMatch(quick.stdout, /re-hashed/)
  const dry = await runCli(['gc', '--verify', '--dry-run', '--config', config])
  t.match(dry.stdout, /cached blobs and manifests re-hashed, not matching would remove: 1/)
  const verified = await runCli(['gc', '--verify', '--config', config])
  t.equal(verified.code, 0, verified.stderr)
  t.match(verified.stdout, /cached blobs and manifests re-hashed, not matching removed: 1/)
  const again = await runCli(['gc', '--verify', '--config', config])
  t.match(again.stdout, /not matching removed: 0/, 'nothing left to remove')
  const misuse = await runCli(['stats', '--verify', '--config', config])
  t.equal(misuse.code, 2)
  t.match(misuse.stderr, /--verify is for gc only/)
})
