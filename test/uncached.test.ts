// Blobs served straight from upstream because the disk has no room for them:
// still verified on the way through (a mismatch cuts the client, is counted and
// logged as an error), never cached, and a second client asking at the same
// time gets its own upstream GET (the pass-through branch).

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { readBody, startMirror } from './helpers/mirror.js'
import { sample } from './helpers/prometheus.js'

const blobPath = (digest: string): string => `/v2/library/app/blobs/${digest}`

/** A volume that never has room: every blob takes the uncached path. Calls wait for `open()` once it is held. */
function fullDisk (): { freeBytes: () => Promise<number>, hold: () => void, open: () => void, calls: () => number } {
  let calls = 0
  let held: Promise<void> | undefined
  let release: () => void = () => {}
  return {
    freeBytes: async () => {
      calls++
      await held
      return 0
    },
    hold: () => { held = new Promise(resolve => { release = resolve }) },
    open: () => { release(); held = undefined },
    calls: () => calls
  }
}

t.test('a blob served uncached that does not match its digest: the client is cut off, it is counted and logged as an error, nothing is cached', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const disk = fullDisk()
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, hooks: { freeBytes: disk.freeBytes } })
  const bytes = randomBytes(2 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  fake.setBlobFault(digest, { kind: 'corrupt' })

  const res = await fetch(mirror.url + blobPath(digest))
  t.equal(res.status, 200)
  t.equal(res.headers.get('x-mirror-cache'), 'miss')
  const body = await readBody(res)
  t.ok('error' in body, 'the response was cut, never completed with the wrong bytes')
  t.ok(disk.calls() > 0, 'the free-space check ran, so this was the uncached path')

  const logged = (): Record<string, unknown> | undefined => mirror.logs.find(l => l.msg === 'blob served uncached failed verification; the client was cut off')
  for (let i = 0; i < 100 && logged() === undefined; i++) await new Promise(resolve => setTimeout(resolve, 20))
  t.match(logged(), { level: 50, digest, upstream: 'docker.io' }, 'logged at error level, naming the blob and its upstream')
  const metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(metrics, 'registry_mirror_digest_mismatches_total', { upstream: 'docker.io' }), 1, 'counted as a digest mismatch')
  t.equal(sample(metrics, 'registry_mirror_uncached_blobs_total', { reason: 'disk full' }), 1)

  t.equal(mirror.index.getBlob(digest), undefined, 'no row')
  t.same(readdirSync(join(mirror.storage, 'tmp')), [], 'no temp file')
  fake.clearFaults()
  const again = await readBody(await fetch(mirror.url + blobPath(digest)))
  t.ok('bytes' in again && again.bytes.equals(bytes), 'the next request gets the right bytes, still uncached')
  t.equal(fake.count('GET', `/blobs/${digest}`), 2)
})

t.test('a second client of a blob being served uncached gets its own verified upstream GET', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const disk = fullDisk()
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, hooks: { freeBytes: disk.freeBytes } })
  const bytes = randomBytes(1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)

  // The first request holds at the free-space check, so the second finds its download starting and waits on it.
  disk.hold()
  const first = fetch(mirror.url + blobPath(digest))
  for (let i = 0; i < 100 && disk.calls() === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  const second = fetch(mirror.url + blobPath(digest))
  await new Promise(resolve => setTimeout(resolve, 200))
  t.equal(disk.calls(), 1, 'the second request did not start a download of its own')
  disk.open()

  const answers = await Promise.all([first, second])
  const bodies = await Promise.all(answers.map(async r => await readBody(r)))
  for (const b of bodies) t.ok('bytes' in b && b.bytes.equals(bytes), 'each client gets the whole blob')
  t.same(answers.map(r => r.headers.get('x-mirror-cache')), ['miss', 'miss'])
  t.equal(fake.count('GET', `/blobs/${digest}`), 2, 'the uncached body serves one client: the other got its own GET')
  t.equal(mirror.index.getBlob(digest), undefined, 'nothing cached')
  const metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(metrics, 'registry_mirror_uncached_blobs_total', { reason: 'disk full' }), 2)
  t.equal(sample(metrics, 'registry_mirror_digest_mismatches_total', { upstream: 'docker.io' }) ?? 0, 0)
})

t.test('a corrupt pass-through body cuts only its own client', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const disk = fullDisk()
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, hooks: { freeBytes: disk.freeBytes } })
  const bytes = randomBytes(1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)

  disk.hold()
  const first = fetch(mirror.url + blobPath(digest))
  for (let i = 0; i < 100 && disk.calls() === 0; i++) await new Promise(resolve => setTimeout(resolve, 10))
  const second = fetch(mirror.url + blobPath(digest))
  await new Promise(resolve => setTimeout(resolve, 200))
  // The first GET is answered already (it is held after the headers): the next one, the second client's, is corrupt.
  fake.setBlobFault(digest, { kind: 'corrupt', times: 1 })
  disk.open()

  const [a, b] = await Promise.all([first, second]).then(async rs => await Promise.all(rs.map(async r => await readBody(r))))
  t.ok(a !== undefined && 'bytes' in a && a.bytes.equals(bytes), 'the first client gets the whole blob')
  t.ok(b !== undefined && 'error' in b, 'the second client, whose upstream bytes were wrong, is cut off')
  const metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(metrics, 'registry_mirror_digest_mismatches_total', { upstream: 'docker.io' }), 1)
})
