// The mirror's typed events, as a listener of its own (beside the metrics) sees them.

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { EventRecorder } from './helpers/event-recorder.js'
import { makeImage } from './helpers/images.js'
import { readBody, startMirror } from './helpers/mirror.js'

t.test('a listener hears one download for eight clients, each upstream answer, and every request with its outcome', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const recorder = new EventRecorder()
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, hooks: { events: [recorder] } })
  const bytes = randomBytes(2 * 1024 * 1024)
  const digest = fake.addBlob('library/app', bytes)
  const gate = fake.gateBlob(digest, 64 * 1024)
  const responses = Array.from({ length: 8 }, async () => await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  await gate.reached
  await new Promise(resolve => setTimeout(resolve, 100))
  gate.release()
  for (const b of await Promise.all(responses.map(async r => await readBody(await r)))) t.ok('bytes' in b && b.bytes.equals(bytes))
  const hit = await readBody(await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  t.ok('bytes' in hit)

  t.same(recorder.of('downloadStarted').map(e => [e.digest, e.upstream]), [[digest, 'docker.io']], 'one download')
  t.same(recorder.of('downloadEnded').map(e => [e.result, e.bytes]), [['ok', bytes.length]], 'it ended committed, with every byte')
  t.equal(recorder.of('upstreamResponse').filter(e => e.answer.kind === 'blob' && e.answer.status === 200).length, 1, 'one upstream blob answer')
  const blobRequests = recorder.of('requestFinished').filter(e => e.record.kind === 'blob')
  for (let i = 0; i < 50 && blobRequests.length < 9; i++) {
    await new Promise(resolve => setTimeout(resolve, 20))
    blobRequests.splice(0, blobRequests.length, ...recorder.of('requestFinished').filter(e => e.record.kind === 'blob'))
  }
  const outcomes = blobRequests.map(e => e.record.outcome).sort()
  t.same(outcomes, ['hit', 'joined', 'joined', 'joined', 'joined', 'joined', 'joined', 'joined', 'miss'], 'nine requests: one miss, seven joined, one hit')
})

t.test('eviction reports each removal with its reason, and the tags that went with a manifest', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const recorder = new EventRecorder()
  let clock = 1_000_000
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, eviction: { maxAge: 60_000 }, hooks: { events: [recorder], now: () => clock } })
  makeImage(fake, 'library/app', 'v1', { layers: [1000] })
  const res = await fetch(`${mirror.url}/v2/library/app/manifests/v1`)
  t.equal(res.status, 200)
  await res.arrayBuffer()
  clock += 120_000
  await mirror.evictor.run()
  const evicted = recorder.of('evicted').map(e => e.item)
  t.same(evicted.map(i => [i.kind, i.reason]), [['manifest', 'age']])
  t.same(evicted[0]?.tags, [{ repository: 'docker.io/library/app', tag: 'v1' }])
})
