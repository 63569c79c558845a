// A circuit breaker per upstream: after repeated connect failures the
// upstream is marked down for a back-off period; what the cache holds is
// answered at once, the rest gets 503 at once without trying to connect;
// then one probe closes the circuit again.

import t from 'tap'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'
import { sample } from './helpers/prometheus.js'

t.test('an upstream that stops answering is marked down, served from the cache meanwhile, and probed back', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  let clock = 1_000_000
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, tagTtl: 1000, hooks: { now: () => clock } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [1000] })
  const missing = fake.addBlob('library/app', Buffer.from('never pulled'))
  t.equal((await fetch(`${mirror.url}/v2/library/app/manifests/v1`)).status, 200)
  await (await fetch(`${mirror.url}/v2/library/app/blobs/${image.layerDigests[0] ?? ''}`)).arrayBuffer()

  await fake.stop()
  for (let i = 0; i < 5; i++) {
    clock += 2000
    const stale = await fetch(`${mirror.url}/v2/library/app/manifests/v1`)
    t.equal(stale.status, 200, `the tag is served stale while upstream fails (${i + 1})`)
    await stale.arrayBuffer()
  }
  t.ok(mirror.logs.some(l => l.msg === 'upstream marked down after repeated connect failures or timeouts; answering from the cache without asking it'), 'marked down, logged')
  let metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(metrics, 'registry_mirror_upstream_up', { upstream: 'docker.io' }), 0)
  const ready = await fetch(`${mirror.url}/readyz`)
  t.equal(ready.status, 200, 'still ready: the cache answers')
  t.match(await ready.json(), { upstreams: { 'docker.io': /^down since / } })

  // Back up, but within the back-off: nothing is asked of it.
  await fake.start()
  fake.reset()
  clock += 2000
  const fast = await fetch(`${mirror.url}/v2/library/app/manifests/v1`)
  t.equal(fast.status, 200, 'the tag is answered from the cache at once')
  await fast.arrayBuffer()
  const uncached = await fetch(`${mirror.url}/v2/library/app/blobs/${missing}`)
  t.equal(uncached.status, 503, 'what the cache lacks is 503 at once')
  t.match(await uncached.json(), { errors: [{ code: 'UNAVAILABLE', message: /is down .* tried again after/ }] })
  t.equal(fake.requests.length, 0, 'no request reached the upstream while its circuit was open')

  clock += 60_000
  const probe = await fetch(`${mirror.url}/v2/library/app/blobs/${missing}`)
  t.equal(probe.status, 200, 'after the back-off one request probes, and succeeds')
  await probe.arrayBuffer()
  metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(metrics, 'registry_mirror_upstream_up', { upstream: 'docker.io' }), 1, 'up again')
  t.match(await (await fetch(`${mirror.url}/readyz`)).json(), { upstreams: { 'docker.io': 'up' } })
})
