import t from 'tap'
import { sample } from './helpers/prometheus.js'
import { randomBytes } from 'node:crypto'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror } from './helpers/mirror.js'

t.test('/metrics counts requests by kind and outcome, bytes by source, upstream traffic and cache state', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [30_000] })
  const layer = image.layerDigests[0] ?? ''
  await (await fetch(`${mirror.url}/v2/library/app/manifests/v1`)).arrayBuffer()
  await (await fetch(`${mirror.url}/v2/library/app/blobs/${layer}`)).arrayBuffer()
  await (await fetch(`${mirror.url}/v2/library/app/blobs/${layer}`)).arrayBuffer()
  await (await fetch(`${mirror.url}/v2/library/app/blobs/sha256:${'0'.repeat(64)}`)).arrayBuffer()
  await new Promise(resolve => setTimeout(resolve, 50))
  const res = await fetch(`${mirror.url}/metrics`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /text\/plain/)
  const text = await res.text()
  t.equal(sample(text, 'registry_mirror_requests_total', { kind: 'blob', method: 'GET', outcome: 'miss' }), 1)
  t.equal(sample(text, 'registry_mirror_requests_total', { kind: 'blob', method: 'GET', outcome: 'hit' }), 1)
  t.equal(sample(text, 'registry_mirror_requests_total', { kind: 'blob', method: 'GET', outcome: 'error' }), 1)
  t.equal(sample(text, 'registry_mirror_requests_total', { kind: 'manifest', method: 'GET', outcome: 'miss' }), 1)
  t.equal(sample(text, 'registry_mirror_request_duration_seconds_count', { kind: 'blob', outcome: 'hit' }), 1)
  t.equal(sample(text, 'registry_mirror_served_bytes_total', { source: 'cache' }), 30_000)
  t.ok((sample(text, 'registry_mirror_served_bytes_total', { source: 'upstream' }) ?? 0) >= 30_000)
  t.equal(sample(text, 'registry_mirror_upstream_fetched_bytes_total', { upstream: 'docker.io' }), 30_000)
  t.equal(sample(text, 'registry_mirror_upstream_requests_total', { upstream: 'docker.io', kind: 'blob', status: '200' }), 1)
  t.equal(sample(text, 'registry_mirror_upstream_requests_total', { upstream: 'docker.io', kind: 'blob', status: '404' }), 1)
  t.equal(sample(text, 'registry_mirror_cache_blobs'), 1)
  t.equal(sample(text, 'registry_mirror_cache_manifests'), 1)
  t.equal(sample(text, 'registry_mirror_cache_tags'), 1)
  t.ok((sample(text, 'registry_mirror_cache_bytes') ?? 0) >= 30_000)
  t.equal(sample(text, 'registry_mirror_downloads_in_flight'), 0)
  t.ok(sample(text, 'process_cpu_user_seconds_total') !== undefined, 'Node process metrics too')
  t.ok(sample(text, 'nodejs_heap_size_used_bytes') !== undefined)
})

t.test('digest mismatches and evictions are counted', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const digest = fake.addBlob('library/app', randomBytes(10_000))
  fake.setBlobFault(digest, { kind: 'corrupt', times: 1 })
  await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`).then(async r => await r.arrayBuffer()).catch(() => {})
  await (await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`)).arrayBuffer()
  await mirror.evictor.run({ needBytes: 1 })
  await new Promise(resolve => setTimeout(resolve, 50))
  const text = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(text, 'registry_mirror_digest_mismatches_total', { upstream: 'docker.io' }), 1)
  t.equal(sample(text, 'registry_mirror_evictions_total', { reason: 'space' }), 1)
  t.equal(sample(text, 'registry_mirror_evicted_bytes_total', { reason: 'space' }), 10_000)
})

t.test('token fetches, a retry after a dropped connection, clients joined to a download and pinned bytes are reported', async t => {
  const fake = await startFakeRegistry({ auth: {} })
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const image = makeImage(fake, 'library/app', 'v1', { layers: [200_000, 300_000] })
  const [dropped, shared] = [image.layerDigests[0] ?? '', image.layerDigests[1] ?? '']
  const manifest = Buffer.from(await (await fetch(`${mirror.url}/v2/library/app/manifests/v1`)).arrayBuffer())

  // Upstream drops the connection without answering once: the mirror asks again and serves the blob.
  fake.setBlobFault(dropped, { kind: 'reset', times: 1 })
  const retried = await fetch(`${mirror.url}/v2/library/app/blobs/${dropped}`)
  t.equal(retried.status, 200)
  t.equal((await retried.arrayBuffer()).byteLength, 200_000)
  t.equal(fake.count('GET', `/blobs/${dropped}`), 2, 'asked twice upstream')

  // Three clients on one download held half-way.
  const gate = fake.gateBlob(shared, 100_000)
  const responses = [1, 2, 3].map(async () => await fetch(`${mirror.url}/v2/library/app/blobs/${shared}`))
  await gate.reached
  await new Promise(resolve => setTimeout(resolve, 100))
  const during = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(during, 'registry_mirror_downloads_in_flight'), 1)
  t.equal(sample(during, 'registry_mirror_download_clients'), 3)
  gate.release()
  for (const r of responses) t.equal((await (await r).arrayBuffer()).byteLength, 300_000)

  mirror.index.addPin('docker.io/library/app', 'v1')
  // The cache counts are computed at most once a second; the scrape above was within it.
  await new Promise(resolve => setTimeout(resolve, 1100))
  const text = await (await fetch(`${mirror.url}/metrics`)).text()
  t.equal(sample(text, 'registry_mirror_upstream_token_fetches_total', { upstream: 'docker.io' }), 1, 'one token, reused')
  t.equal(sample(text, 'registry_mirror_upstream_retries_total', { upstream: 'docker.io' }), 1)
  t.equal(sample(text, 'registry_mirror_requests_total', { kind: 'blob', method: 'GET', outcome: 'joined' }), 2)
  t.equal(sample(text, 'registry_mirror_requests_total', { kind: 'blob', method: 'GET', outcome: 'miss' }), 2)
  t.equal(sample(text, 'registry_mirror_cache_pinned_bytes'), manifest.length + 200_000 + 300_000, 'the pinned image: its manifest and the layers cached (the config never was)')
  t.equal(sample(text, 'registry_mirror_cache_bytes'), manifest.length + 200_000 + 300_000, 'manifests cached since start count in the bytes used')
  t.equal(sample(text, 'registry_mirror_downloads_in_flight'), 0)
})

t.test('metrics on a separate listener, behind a bearer token', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url }, metrics: { listen: { host: '127.0.0.1', port: 0 }, token: 'sekret' } })
  t.ok(mirror.opsUrl)
  const onMain = await fetch(`${mirror.url}/metrics`)
  t.equal(onMain.status, 404, 'not exposed where the registry is')
  await onMain.arrayBuffer()
  const noToken = await fetch(`${mirror.opsUrl ?? ''}/metrics`)
  t.equal(noToken.status, 401)
  await noToken.arrayBuffer()
  const wrong = await fetch(`${mirror.opsUrl ?? ''}/metrics`, { headers: { authorization: 'Bearer nope' } })
  t.equal(wrong.status, 401)
  await wrong.arrayBuffer()
  const ok = await fetch(`${mirror.opsUrl ?? ''}/metrics`, { headers: { authorization: 'Bearer sekret' } })
  t.equal(ok.status, 200)
  t.match(await ok.text(), /registry_mirror_requests_total/)
  t.equal((await fetch(`${mirror.opsUrl ?? ''}/healthz`)).status, 200)
})

t.test('/healthz says the process is up; /readyz checks the index and that storage is writable', async t => {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const health = await fetch(`${mirror.url}/healthz`)
  t.equal(health.status, 200)
  t.same(await health.json(), { status: 'ok' })
  const ready = await fetch(`${mirror.url}/readyz`)
  t.equal(ready.status, 200)
  t.same(await ready.json(), { status: 'ready', upstreams: { 'docker.io': 'up' } }, 'each upstream\'s state shown too')
  rmSync(join(mirror.storage, 'tmp'), { recursive: true, force: true })
  const unready = await fetch(`${mirror.url}/readyz`)
  t.equal(unready.status, 503)
  const body = await unready.json() as { status: string, problems: string[] }
  t.equal(body.status, 'unready')
  t.match(body.problems[0], /^staging: /, 'the directory downloads are written to is gone')
})

t.test('every metric the Grafana dashboard queries exists', async t => {
  const { readFile } = await import('node:fs/promises')
  const dashboard = await readFile(new URL('../docs/grafana-dashboard.json', import.meta.url), 'utf8')
  const used = new Set([...dashboard.matchAll(/registry_mirror_[a-z_]+/g)].map(m => m[0].replace(/_(bucket|count|sum)$/, '')))
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const text = await (await fetch(`${mirror.url}/metrics`)).text()
  const exposed = new Set([...text.matchAll(/^# TYPE (\S+)/gm)].map(m => m[1]))
  t.ok(used.size >= 10)
  for (const name of used) t.ok(exposed.has(name), `${name} is exposed`)
})
