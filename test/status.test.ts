// The status page and /status.json (lib/status/, lib/http/status-routes.ts),
// over a real mirror in front of a fake upstream: the figures agree with
// /metrics, the token gate and its cookie, what a hostile client can put on
// the page (escaped), private repositories hidden from an anonymous viewer,
// bounded memory whatever clients send, and `stats --json`'s same shape.

import t from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setUser } from '../lib/auth/htpasswd.js'
import { Activity, MAX_REPOSITORIES, MINUTES } from '../lib/status/activity.js'
import { EvictionLog, KEPT_EVICTIONS } from '../lib/cache/eviction-log.js'
import { CacheIndex } from '../lib/db/cache-index.js'
import { clientKind } from '../lib/status/client-kind.js'
import { forViewer, type StatusReport } from '../lib/status/report.js'
import { rateLimit } from '../lib/oci/headers.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { makeImage } from './helpers/images.js'
import { startMirror, type TestMirror } from './helpers/mirror.js'
import { sample } from './helpers/prometheus.js'
import { runCli, writeConfig } from './helpers/child-mirror.js'

const MANIFEST_ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json'
const DOCKER_UA = 'docker/27.5.1 go/go1.22.12 git-commit/4c9b3b0 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/27.5.1 \\(linux\\))'
const CONTAINERD_UA = 'containerd/1.7.24+unknown'

function basic (user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

async function pull (mirror: TestMirror, repository: string, tag: string, headers: Record<string, string>): Promise<void> {
  const m = await fetch(`${mirror.url}/v2/${repository}/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT, ...headers } })
  if (m.status !== 200) throw new Error(`manifest ${repository}:${tag}: ${m.status} ${await m.text()}`)
  const manifest = await m.json() as { config: { digest: string }, layers: Array<{ digest: string }> }
  for (const d of [manifest.config.digest, ...manifest.layers.map(l => l.digest)]) {
    const b = await fetch(`${mirror.url}/v2/${repository}/blobs/${d}`, { headers })
    await b.arrayBuffer()
    if (b.status !== 200) throw new Error(`blob ${d}: ${b.status}`)
  }
}

function dataValue (html: string, field: string): number | undefined {
  const m = new RegExp(`data-field="${field.replace(/\./g, '\\.')}" data-value="([0-9.]*)"`).exec(html)
  return m === null ? undefined : Number(m[1])
}

t.test('the page and /status.json agree with /metrics after real pulls, and say who pulled', async t => {
  const hub = await startFakeRegistry({ rateLimit: { remaining: 90, limit: 100 } })
  t.teardown(async () => await hub.close())
  makeImage(hub, 'library/app', 'v1', { layers: [40_000, 70_000] })
  makeImage(hub, 'library/tool', 'v1', { layers: [5_000] })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url }, eviction: { maxSize: 50 * 1024 * 1024 } })

  const idle = await (await fetch(`${mirror.url}/status`)).text()
  t.match(idle, 'Nothing has pulled through this mirror yet', 'a first-run hint before any pull')
  t.match(idle, `"registry-mirrors": ["http://${new URL(mirror.url).host}"]`, 'with the address the viewer used')

  await pull(mirror, 'library/app', 'v1', { 'user-agent': DOCKER_UA })
  await pull(mirror, 'library/app', 'v1', { 'user-agent': CONTAINERD_UA })
  await pull(mirror, 'library/tool', 'v1', { 'user-agent': 'skopeo/1.9.3' })
  mirror.flushAccess()
  // The report is built at most once a second.
  await new Promise(resolve => setTimeout(resolve, 1100))

  const res = await fetch(`${mirror.url}/status.json`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-security-policy'), /default-src 'none'/)
  const s = await res.json() as StatusReport
  const metrics = await (await fetch(`${mirror.url}/metrics`)).text()
  const outcome = (o: string): number => ['blob', 'manifest'].reduce((sum, kind) => sum + ['GET', 'HEAD'].reduce((n, method) => n + (sample(metrics, 'registry_mirror_requests_total', { kind, method, outcome: o }) ?? 0), 0), 0)
  t.equal(s.cache.totalBytes, sample(metrics, 'registry_mirror_cache_bytes'), 'cache bytes as /metrics')
  t.equal(s.cache.blobs, sample(metrics, 'registry_mirror_cache_blobs'))
  t.equal(s.sinceStart?.hits, outcome('hit') + outcome('stale') + outcome('revalidated'), 'hits as /metrics')
  t.equal(s.sinceStart?.misses, outcome('miss') + outcome('joined'), 'misses as /metrics')
  t.equal(s.sinceStart?.cacheBytes, sample(metrics, 'registry_mirror_served_bytes_total', { source: 'cache' }))
  t.equal(s.sinceStart?.upstreamBytes, sample(metrics, 'registry_mirror_served_bytes_total', { source: 'upstream' }))
  const hubFetched = sample(metrics, 'registry_mirror_upstream_fetched_bytes_total', { upstream: 'docker.io' })
  const docker = s.upstreams.find(u => u.name === 'docker.io')
  t.equal(docker?.fetchedBytes, hubFetched, 'upstream bytes as /metrics')
  const upstreamRequests = metrics.split('\n').filter(l => l.startsWith('registry_mirror_upstream_requests_total{') && l.includes('upstream="docker.io"')).reduce((n, l) => n + Number(l.split(' ').pop()), 0)
  t.equal(docker?.requests, upstreamRequests, 'upstream requests as /metrics')
  t.equal(docker?.state, 'up')
  t.match(docker?.rateLimit, { remaining: Number, limit: 100 }, 'the rate limit upstream last reported')
  t.ok((docker?.rateLimit?.remaining ?? 100) < 90, 'as it went down with the pulls')
  t.equal(s.sinceStart?.pulls, 3, 'three images pulled')
  t.same(s.top.byPulls, [{ repository: 'docker.io/library/app', pulls: 2 }, { repository: 'docker.io/library/tool', pulls: 1 }])
  t.equal(s.top.bySize[0]?.repository, 'docker.io/library/app', 'the largest repository first')
  t.ok((s.top.bySize[0]?.bytes ?? 0) > 110_000)
  t.equal(s.cache.maxSize, 50 * 1024 * 1024)
  t.ok((s.cache.freeBytes ?? 0) > 0, 'the volume\'s free space')
  t.equal(s.lastHour?.length, MINUTES)
  t.equal(s.lastHour?.reduce((n, m) => n + m.requests, 0), s.sinceStart?.requests, 'the last hour holds every request so far')
  const byKind = new Map((s.clients ?? []).map(c => [c.kind, c]))
  t.match(byKind.get('dockerd'), { source: 'upstream', userAgent: DOCKER_UA.slice(0, 200), requests: 4 }, 'dockerd: served, the first pull, from upstream')
  t.match(byKind.get('containerd'), { source: 'cache', requests: 4 }, 'containerd: the same image again, from the cache')
  t.match(byKind.get('skopeo'), { source: 'upstream' }, 'skopeo: its blobs came from upstream')
  t.equal(byKind.get('podman')?.lastServedAt, null, 'podman: never')
  t.equal(s.hidden, 0)
  t.notOk(JSON.stringify(s).includes(hub.url.replace(/\/$/, '') + '@'), 'no credentials in the URL')

  const page = await (await fetch(`${mirror.url}/status`)).text()
  t.notMatch(page, 'Nothing has pulled', 'no first-run hint once something pulled')
  t.equal(dataValue(page, 'cache.totalBytes'), s.cache.totalBytes, 'the page shows the same cache bytes')
  t.equal(dataValue(page, 'sinceStart.hits'), s.sinceStart?.hits)
  t.equal(dataValue(page, 'sinceStart.misses'), s.sinceStart?.misses)
  t.equal(dataValue(page, 'upstreams.docker.io.fetchedBytes'), hubFetched)
  t.match(page, /<svg viewBox="0 0 300 64"[^>]*>.*<rect class="s1"/s, 'charts drawn in the HTML')
  t.match(page, '<script src="/status/assets/status.js" defer></script>')
  t.notMatch(page, /<script>|\sstyle=|\son[a-z]+=/, 'no inline script, style or handler')

  const css = await fetch(`${mirror.url}/status/assets/status.css`)
  t.equal(css.status, 200)
  t.match(css.headers.get('content-type'), 'text/css')
  const etag = css.headers.get('etag') ?? ''
  t.equal((await fetch(`${mirror.url}/status/assets/status.css`, { headers: { 'if-none-match': etag } })).status, 304)
  t.match((await fetch(`${mirror.url}/status/assets/status.js`)).headers.get('content-type'), 'text/javascript')
  t.equal((await fetch(`${mirror.url}/status/assets/..%2Fpackage.json`)).status, 404)
  t.equal((await fetch(`${mirror.url}/status/assets/nope.js`)).status, 404)
})

t.test('a hostile client: its user agent, query and Host are shown escaped or not at all', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  makeImage(hub, 'library/app', 'v1', { layers: [1000] })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url } })
  const evil = '<img src=x onerror=alert(1)>"\'&'
  await pull(mirror, 'library/app', 'v1', { 'user-agent': `docker/1 ${evil}` })
  await pull(mirror, 'library/app', 'v1', { 'user-agent': evil })
  await new Promise(resolve => setTimeout(resolve, 1100))
  const page = await (await fetch(`${mirror.url}/status?x=<script>alert(1)</script>&ns=<b>`)).text()
  t.notMatch(page, '<img', 'no markup from a user agent')
  t.notMatch(page, '<script>alert', 'no query parameter echoed')
  t.notMatch(page, '<b>')
  t.match(page, '&#60;img src=x onerror=alert(1)&#62;&#34;&#39;&#38;', 'shown, escaped')

  // A Host header that is not a host: the hint names the listener instead.
  const { request } = await import('node:http')
  const fresh = await startMirror(t, { upstreams: { 'docker.io': hub.url } })
  const url = new URL(fresh.url)
  const body = await new Promise<string>((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path: '/status', headers: { host: 'x"><script>alert(1)</script>' } }, res => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => { text += c })
      res.on('end', () => resolve(text))
    })
    req.on('error', reject)
    req.end()
  })
  t.notMatch(body, '<script>alert')
  t.match(body, 'Nothing has pulled', 'the hint is still there')
})

t.test('the metrics token guards the page; a browser posts it once and keeps a signed cookie', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url }, metrics: { token: 'the-metrics-token' } })

  const bare = await fetch(`${mirror.url}/status`)
  t.equal(bare.status, 401)
  const form = await bare.text()
  t.match(form, '<form method="post" action="/status/login">', 'a sign-in form')
  t.notMatch(form, 'cache', 'and nothing of the status')
  const json = await fetch(`${mirror.url}/status.json`)
  t.equal(json.status, 401)
  t.match(await json.json(), { errors: [{ code: 'UNAUTHORIZED' }] }, 'the OCI envelope')

  t.equal((await fetch(`${mirror.url}/status.json`, { headers: { authorization: 'Bearer the-metrics-token' } })).status, 200, 'a Bearer header, as for /metrics')
  t.equal((await fetch(`${mirror.url}/status.json`, { headers: { authorization: 'Bearer the-metrics-tokeN' } })).status, 401)

  const post = async (body: string, type = 'application/x-www-form-urlencoded'): Promise<Response> =>
    await fetch(`${mirror.url}/status/login`, { method: 'POST', body, headers: { 'content-type': type }, redirect: 'manual' })
  const wrong = await post('token=guess')
  t.equal(wrong.status, 401)
  t.match(await wrong.text(), 'That token is not the one')
  t.equal(wrong.headers.get('set-cookie'), null)
  t.equal((await post('token=the-metrics-token', 'text/plain')).status, 401, 'only a form')
  t.equal((await post(`token=the-metrics-token&pad=${'x'.repeat(5000)}`)).status, 401, 'a body over 4 KiB is not read')
  const { request } = await import('node:http')
  const chunked = await new Promise<number>((resolve, reject) => {
    const req = request(`${mirror.url}/status/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', 'transfer-encoding': 'chunked' } }, res => { res.resume(); resolve(res.statusCode ?? 0) })
    req.on('error', reject)
    req.write(`token=the-metrics-token&pad=${'x'.repeat(5000)}`)
    // Never ended: the answer comes anyway.
  })
  t.equal(chunked, 401, 'nor one sent without a length')

  const ok = await post('token=the-metrics-token')
  t.equal(ok.status, 303)
  t.equal(ok.headers.get('location'), '/status')
  const cookie = ok.headers.get('set-cookie') ?? ''
  t.match(cookie, /^registry_mirror_status=\d+\.[A-Za-z0-9_-]{43}; path=\/; expires=.*; samesite=strict; httponly$/i)
  t.notMatch(cookie, 'the-metrics-token', 'the token itself is not in the cookie')
  const value = cookie.split(';')[0] ?? ''
  t.equal((await fetch(`${mirror.url}/status`, { headers: { cookie: value } })).status, 200, 'the cookie opens the page')
  t.equal((await fetch(`${mirror.url}/status.json`, { headers: { cookie: value } })).status, 200, 'and its data')
  const [expires] = value.slice(value.indexOf('=') + 1).split('.')
  t.equal((await fetch(`${mirror.url}/status`, { headers: { cookie: `registry_mirror_status=${Number(expires) + 1}.${value.split('.')[1] ?? ''}` } })).status, 401, 'a cookie with a changed expiry is refused')
  t.equal((await fetch(`${mirror.url}/status`, { headers: { cookie: `registry_mirror_status=${expires ?? ''}.${'A'.repeat(43)}` } })).status, 401, 'a forged signature is refused')
  t.equal((await fetch(`${mirror.url}/metrics`, { headers: { cookie: value } })).status, 401, '/metrics still wants its Bearer header')
})

t.test('an anonymous viewer sees nothing of a repository it may not read', async t => {
  const dir = await mkdtemp(join(tmpdir(), 'mirror-status-auth-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const htpasswd = join(dir, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  makeImage(hub, 'library/public', 'v1', { layers: [3000] })
  makeImage(hub, 'acme/secret-project', 'v1', { layers: [4000] })
  const mirror = await startMirror(t, {
    upstreams: { 'docker.io': hub.url },
    auth: { htpasswd },
    metrics: { token: 'metrics-token' },
    access: { rules: [{ repositories: ['docker.io/library/*'], users: ['anonymous', '*'], pull: true }, { repositories: ['docker.io/acme/**'], users: ['alice'], pull: true }], default: 'deny' }
  })
  const alice = { authorization: basic('alice', 'alice password') }
  await pull(mirror, 'library/public', 'v1', alice)
  await pull(mirror, 'acme/secret-project', 'v1', alice)
  mirror.cache.addPin('docker.io/acme/secret-project', 'v1')
  await new Promise(resolve => setTimeout(resolve, 1100))
  const viewer = { authorization: 'Bearer metrics-token' }
  const s = await (await fetch(`${mirror.url}/status.json`, { headers: viewer })).json() as StatusReport
  const page = await (await fetch(`${mirror.url}/status`, { headers: viewer })).text()
  t.notMatch(JSON.stringify(s), 'secret-project', 'not in /status.json')
  t.notMatch(page, 'secret-project', 'not on the page')
  t.match(s.top.byPulls, [{ repository: 'docker.io/library/public', pulls: 1 }], 'the public one is')
  t.ok(s.hidden >= 3, `entries hidden are counted (${s.hidden}: pulls, size, pin)`)
  t.match(page, 'entries are hidden')
  const stats = await runCli(['stats', '--json', '--config', await writeConfig(dir, { storage: mirror.storage, upstreams: { 'docker.io': hub.url } })])
  t.equal(stats.code, 0, stats.stderr)
  t.match(stats.stdout, 'secret-project', 'the operator on the host sees everything')
})

t.test('stats --json prints the same shape from the data directory, without what needs a server', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  makeImage(hub, 'library/app', 'v1', { layers: [2000, 3000] })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url } })
  await pull(mirror, 'library/app', 'v1', {})
  mirror.flushAccess()
  await new Promise(resolve => setTimeout(resolve, 1100))
  const live = await (await fetch(`${mirror.url}/status.json`)).json() as StatusReport
  const dir = await mkdtemp(join(tmpdir(), 'mirror-status-stats-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const config = await writeConfig(dir, { storage: mirror.storage, upstreams: { 'docker.io': hub.url } })
  const out = await runCli(['stats', '--json', '--config', config])
  t.equal(out.code, 0, out.stderr)
  const offline = JSON.parse(out.stdout) as StatusReport
  for (const key of ['server', 'sinceStart', 'lastHour', 'clients', 'downloads']) {
    t.ok(key in live, `${key}: from the server`)
    t.notOk(key in offline, `${key}: absent from stats, not zero`)
  }
  t.notOk('byPulls' in offline.top)
  t.same(Object.keys(offline).filter(k => !(k in live)), [], 'no key of its own')
  t.same(offline.cache, { ...live.cache, freeBytes: offline.cache.freeBytes }, 'the same cache figures')
  t.same(offline.requests, live.requests)
  t.same(offline.top.bySize, live.top.bySize)
  t.same(offline.upstreams.map(u => [u.name, u.url, u.state]), [['docker.io', hub.url.replace(/\/$/, ''), 'unknown']], 'stats cannot know an upstream is up')
  t.equal(offline.schema, live.schema)
})

t.test('what clients send cannot grow the status memory', async t => {
  let now = Date.UTC(2026, 11, 4, 10, 0, 0)
  const a = new Activity({ upstreams: ['docker.io'], now: () => now })
  for (let i = 0; i < 5000; i++) {
    a.requestFinished({ method: 'GET', kind: 'manifest', status: 200, outcome: 'hit', seconds: 0, bytes: 10, userAgent: `made-up/${i} ${'x'.repeat(1000)}`, repository: `docker.io/r/${i}`, pull: true, api: true })
    a.requestFinished({ method: 'GET', kind: 'other', status: 200, outcome: undefined, seconds: 0, bytes: 10, api: false })
    a.upstreamResponse({ upstream: `other-${i}.example`, kind: 'manifest', method: 'GET', status: 500 })
    now += 1000
  }
  t.equal(a.clients().length, 1, 'one row for every made-up user agent')
  t.ok((a.clients()[0]?.userAgent.length ?? 0) <= 200, 'cut to 200 characters')
  t.equal(a.upstreams().length, 1, 'no row for an upstream the config does not name')
  t.equal(a.pulls().length, MAX_REPOSITORIES, 'pulls counted for at most MAX_REPOSITORIES repositories')
  t.equal(a.lastHour().length, MINUTES)
  const first = Math.floor(now / 60_000) - MINUTES + 1
  const inLastHour = Array.from({ length: 5000 }, (_, i) => Date.UTC(2026, 11, 4, 10, 0, 0) + i * 1000).filter(at => Math.floor(at / 60_000) >= first).length
  t.equal(a.lastHour().reduce((n, m) => n + m.requests, 0), inLastHour, `the last hour only (${inLastHour} of 5000)`)
  t.equal(a.totals.requests, 5000, 'the totals keep counting (the status page\'s own requests not among them)')
  now += 2 * 3600_000
  t.equal(a.lastHour().reduce((n, m) => n + m.requests, 0), 0, 'an idle hour later the chart is empty')
})

t.test('user agents, rate-limit headers and the viewer cut', async t => {
  t.equal(clientKind(DOCKER_UA), 'dockerd')
  t.equal(clientKind(CONTAINERD_UA), 'containerd')
  t.equal(clientKind('containers/5.24.1 (github.com/containers/image)'), 'podman')
  t.equal(clientKind('cri-o/1.31.0 go/go1.22'), 'podman')
  t.equal(clientKind('skopeo/1.9.3'), 'skopeo')
  t.equal(clientKind('curl/7.88.1'), 'other')
  t.equal(clientKind(undefined), 'other')
  t.same(rateLimit({ 'ratelimit-remaining': '76;w=21600', 'ratelimit-limit': '100;w=21600' }), { remaining: 76, limit: 100, windowSeconds: 21600 })
  t.same(rateLimit({ 'ratelimit-remaining': '5' }), { remaining: 5, limit: undefined, windowSeconds: undefined })
  t.equal(rateLimit({ 'ratelimit-remaining': 'lots' }), undefined)
  t.equal(rateLimit({ 'ratelimit-remaining': '9'.repeat(40) }), undefined, 'no number beyond 12 digits')
  t.equal(rateLimit({}), undefined)

  const report = {
    top: { bySize: [{ repository: 'a/x', bytes: 1, blobs: 1 }, { repository: 'b/y', bytes: 1, blobs: 1 }], byPulls: [{ repository: 'b/y', pulls: 1 }] },
    pins: [{ repository: 'b/y', reference: 'v1', createdAt: '' }],
    downloads: [{ repository: 'b/y', digest: 'd', upstream: 'b', startedAt: '', bytes: 0, size: null, bytesPerSecond: 0, clients: 1 }],
    evictions: [{ at: '', kind: 'manifest', digest: 'd', bytes: 1, reason: 'age', repositories: ['a/x', 'b/y'] }],
    hidden: 0
  } as unknown as StatusReport
  const cut = forViewer(report, r => r.startsWith('a/'))
  t.same(cut.top.bySize.map(x => x.repository), ['a/x'])
  t.same(cut.top.byPulls, [])
  t.same(cut.pins, [])
  t.same(cut.downloads, [])
  t.same(cut.evictions?.[0]?.repositories, ['a/x'])
  t.equal(cut.hidden, 5)
  t.equal(report.top.bySize.length, 2, 'the shared report is left whole')
})

t.test('the page lives where /metrics does: not at all with metrics off, only on metrics.listen when it is set', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  const off = await startMirror(t, { upstreams: { 'docker.io': hub.url }, metrics: { enabled: false } })
  t.equal((await fetch(`${off.url}/status`)).status, 404)
  t.equal((await fetch(`${off.url}/status.json`)).status, 404)
  const own = await startMirror(t, { upstreams: { 'docker.io': hub.url }, metrics: { listen: { host: '127.0.0.1', port: 0 } } })
  t.equal((await fetch(`${own.url}/status.json`)).status, 404, 'not on the main listener')
  t.equal((await fetch(`${own.opsUrl ?? ''}/status.json`)).status, 200, 'on the metrics listener')
  const page = await (await fetch(`${own.opsUrl ?? ''}/status`)).text()
  t.match(page, `"registry-mirrors": ["http://${new URL(own.opsUrl ?? '').host}"]`, 'the hint names the address the viewer used')
})

t.test('a download under way: its repository, progress and the clients joined to it', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  const bytes = Buffer.alloc(3 * 1024 * 1024, 7)
  const digest = hub.addBlob('library/app', bytes)
  const gate = hub.gateBlob(digest, 1024 * 1024)
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url } })
  const clients = Array.from({ length: 3 }, async () => await fetch(`${mirror.url}/v2/library/app/blobs/${digest}`))
  await gate.reached
  await new Promise(resolve => setTimeout(resolve, 1100))
  const s = await (await fetch(`${mirror.url}/status.json`)).json() as StatusReport
  t.match(s.downloads, [{ digest, repository: 'docker.io/library/app', upstream: 'docker.io', size: bytes.length, clients: 3 }], 'one download, three clients on it')
  const d = s.downloads?.[0]
  t.ok((d?.bytes ?? 0) > 0 && (d?.bytes ?? 0) < bytes.length, `part of it so far (${d?.bytes ?? 0} bytes)`)
  t.ok((d?.bytesPerSecond ?? 0) > 0)
  const page = await (await fetch(`${mirror.url}/status`)).text()
  t.match(page, `<progress max="${bytes.length}" value="${d?.bytes ?? -1}"></progress>`, 'a progress bar on the page')
  gate.release()
  for (const c of clients) await (await c).arrayBuffer()
  await new Promise(resolve => setTimeout(resolve, 1100))
  const after = await (await fetch(`${mirror.url}/status.json`)).json() as StatusReport
  t.same(after.downloads, [], 'gone once done')
  t.equal(after.sinceStart?.avoided.joinedDownloads, 2, 'two clients joined the one download')
})

t.test('evictions are kept in the index, the last 100, whichever command made them', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  const app = makeImage(hub, 'library/app', 'v1', { layers: [2000, 3000] })
  makeImage(hub, 'library/tool', 'v1', { layers: [1000] })
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url }, eviction: { maxAge: 1 } })
  await pull(mirror, 'library/app', 'v1', {})
  mirror.flushAccess()
  await new Promise(resolve => setTimeout(resolve, 20))
  const result = await mirror.evictor.run()
  t.ok(result.removed > 0, `the serving mirror evicted ${result.removed}`)
  await new Promise(resolve => setImmediate(resolve))
  await new Promise(resolve => setTimeout(resolve, 1100))
  const s = await (await fetch(`${mirror.url}/status.json`)).json() as StatusReport
  t.ok(s.evictions.length >= 3, 'listed')
  t.ok(s.evictions.every(e => e.reason === 'age' && e.by === 'serve'), 'age, by serve')
  t.ok(s.evictions.some(e => e.kind === 'manifest' && e.digest === app.manifestDigest && e.repositories.includes('docker.io/library/app')), 'the manifest with its repository')
  t.match(await (await fetch(`${mirror.url}/status`)).text(), /<td>age<\/td>/, 'on the page')

  // gc, run beside the serving mirror, evicts what was pulled since: its evictions are listed too.
  await pull(mirror, 'library/tool', 'v1', {})
  mirror.flushAccess()
  await new Promise(resolve => setTimeout(resolve, 20))
  const dir = await mkdtemp(join(tmpdir(), 'mirror-status-gc-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const config = await writeConfig(dir, { storage: mirror.storage, upstreams: { 'docker.io': hub.url }, extraStorage: { maxAge: '1ms' } })
  const gc = await runCli(['gc', '--config', config])
  t.equal(gc.code, 0, gc.stderr)
  const stats = JSON.parse((await runCli(['stats', '--json', '--config', config])).stdout) as StatusReport
  t.ok(stats.evictions.some(e => e.by === 'gc'), 'gc\'s evictions, in stats')
  t.ok(stats.evictions.some(e => e.by === 'serve'), 'and the serving mirror\'s')
  t.equal(new Date(stats.evictions[0]?.at ?? 0) >= new Date(stats.evictions[stats.evictions.length - 1]?.at ?? 0), true, 'newest first')

  // However many are evicted, the index keeps the last KEPT_EVICTIONS, written once per turn of the event loop.
  const index = new CacheIndex({ path: join(dir, 'index.db') })
  t.teardown(() => index.close())
  let writes = 0
  const log = new EvictionLog({ by: 'serve', write: entries => { writes++; index.logEvictions(entries, KEPT_EVICTIONS) } })
  for (let i = 0; i < 5000; i++) log.evicted({ kind: 'blob', digest: `sha256:${String(i).padStart(64, '0')}`, size: i, reason: 'size', tags: [] })
  await new Promise(resolve => setImmediate(resolve))
  for (let i = 0; i < 300; i++) log.corruptRemoved('blob', `sha256:${String(i).padStart(64, 'f')}`)
  log.flush()
  t.equal(writes, 2, 'two writes for 5,300 removals')
  const kept = index.recentEvictions(1000)
  t.equal(kept.length, KEPT_EVICTIONS)
  t.match(kept[0], { reason: 'scrub mismatch', bytes: null }, 'newest first')
})

t.test('the metrics token cannot be guessed: past 10 wrong ones from an address, /metrics, the page and its form answer 429', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url }, metrics: { token: 'the-right-token' } })
  const login = async (token: string): Promise<Response> =>
    await fetch(`${mirror.url}/status/login`, { method: 'POST', body: `token=${token}`, headers: { 'content-type': 'application/x-www-form-urlencoded' }, redirect: 'manual' })
  for (let i = 0; i < 5; i++) t.equal((await login(`guess-${i}`)).status, 401)
  for (let i = 0; i < 5; i++) t.equal((await fetch(`${mirror.url}/metrics`, { headers: { authorization: `Bearer guess-${i}` } })).status, 401)
  const limited = await login('the-right-token')
  t.equal(limited.status, 429, 'the right token too, once the address is past its failures')
  t.match(limited.headers.get('retry-after'), /^\d+$/)
  t.match(await limited.json(), { errors: [{ code: 'TOOMANYREQUESTS' }] })
  t.equal((await fetch(`${mirror.url}/metrics`, { headers: { authorization: 'Bearer the-right-token' } })).status, 429, '/metrics shares the count')
  t.equal((await fetch(`${mirror.url}/status.json`, { headers: { authorization: 'Bearer x' } })).status, 429)
  t.equal((await fetch(`${mirror.url}/status`)).status, 401, 'without a token given: the form, not counted')
  t.equal((await fetch(`${mirror.url}/v2/`)).status, 200, 'pulls are not affected')
})
