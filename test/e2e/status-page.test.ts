// The status page in a real browser (Debian's chromium through playwright-core,
// harness/browser.ts), after real pulls: dockerd (anonymous, Docker Hub's
// public library) and skopeo (alice's private ghcr.io image) through a mirror
// with users, access rules and a metrics token. The browser signs in with the
// token through the page's own form, and then:
//   - the page shows the figures /metrics shows (cache bytes, hits, misses,
//     bytes fetched from each upstream), and who pulled;
//   - its charts are drawn (SVG with bars in it);
//   - the private repository appears nowhere on it;
//   - with the upstreams stopped, the page says so at its next refresh, by
//     itself (no reload);
//   - no request of the page went anywhere but the mirror;
//   - on a phone-sized screen in dark mode it fits and is dark;
//   - with scripts off it signs in and shows the same numbers.
// Screenshots go to test/artifacts/ (TEST_ARTIFACTS to put them elsewhere).

import t from 'tap'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { requireTools } from '../../harness/tools.js'
import { World } from '../../harness/world.js'
import { Dockerd } from '../../harness/dockerd.js'
import { Skopeo } from '../../harness/skopeo.js'
import { HeadlessBrowser } from '../../harness/browser.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { mirrorKind } from '../../harness/mirror.js'
import { repoRoot } from '../../harness/mirror-process.js'
import { setUser } from '../../lib/auth/htpasswd.js'
import { sample } from '../helpers/prometheus.js'

const skip = requireTools(t, ['docker-registry', 'skopeo', 'containerd', 'dockerd', 'docker', 'chromium'], { root: true }) ||
  (mirrorKind() === 'reference' ? 'E2E_MIRROR=reference: the reference registry has no status page' : false)

const TOKEN = 'status-page-test-token'
const ARTIFACTS = process.env.TEST_ARTIFACTS ?? join(repoRoot(), 'test', 'artifacts')

t.test('the status page, in chromium, after dockerd and skopeo pulled through the mirror', { skip, timeout: 600_000 }, async t => {
  const work = await makeTempDir('status-page')
  t.teardown(() => removeTempDir(work))
  const htpasswd = join(work, 'htpasswd')
  await setUser(htpasswd, 'alice', 'alice password')
  const world = await World.create(t, {
    auth: { htpasswd },
    access: {
      rules: [
        { repositories: ['docker.io/library/*'], users: ['anonymous', '*'], pull: true },
        { repositories: ['ghcr.io/org/**'], users: ['alice'], pull: true }
      ],
      default: 'deny'
    },
    metricsToken: TOKEN
  })
  const mirror = world.mirror
  const browser = await HeadlessBrowser.launch()
  t.teardown(() => browser.close())
  t.comment(`chromium ${browser.version}`)
  await mkdir(ARTIFACTS, { recursive: true })

  // Signed in through the page's own form, before anything was pulled.
  const context = await browser.context({ viewport: { width: 1280, height: 900 } })
  const page = await context.newPage()
  const first = await page.goto(`${mirror.url}/status`)
  t.equal(first?.status(), 401, 'without the token: the sign-in form')
  await page.fill('input[name=token]', TOKEN)
  await Promise.all([page.waitForURL(`${mirror.url}/status`), page.click('button[type=submit]')])
  t.match(await page.textContent('#first-run h2'), 'Nothing has pulled through this mirror yet', 'signed in: the first-run hint')
  t.match(await page.textContent('#first-run pre'), `"registry-mirrors": ["http://${mirror.host}"]`, 'with this mirror\'s address')
  // Set once: a reload would lose it, a refresh of the page by its script does not.
  await page.evaluate('window.loadedOnce = true')

  // Real pulls: dockerd anonymously (Docker Hub's library), skopeo as alice (a private ghcr.io image).
  const dockerd = await Dockerd.start({ mirrors: [mirror.url] })
  t.teardown(() => dockerd.close())
  await dockerd.pull('multi:v1')
  const skopeo = new Skopeo(work)
  const privateImage = world.image('ghcr.io', 'org/app')
  await skopeo.pullToDir(`${mirror.locationFor('ghcr.io')}/${privateImage.repository}:v1`, join(work, 'private'), { creds: { user: 'alice', password: 'alice password' } })
  // A client whose user agent is markup: shown as text, never run.
  const hostile = await fetch(`${mirror.url}/v2/library/multi/manifests/v1`, { headers: { 'user-agent': '<img src=x onerror="window.pwned=1">', accept: 'application/vnd.oci.image.index.v1+json' } })
  t.equal(hostile.status, 200)
  await hostile.arrayBuffer()

  // The page refreshes itself every 5 s: the next refresh shows the pulls.
  await page.waitForSelector('.verdict.ok', { timeout: 15_000 })
  t.equal(await page.evaluate('window.loadedOnce'), true, 'refreshed in place, not reloaded')
  // Both the metrics and the report read the index at most once a second: wait past both, then one more refresh.
  await new Promise(resolve => setTimeout(resolve, 1500))
  await page.evaluate('new Promise(resolve => document.addEventListener("status:refreshed", resolve, { once: true }))')
  const metrics = await (await fetch(`${mirror.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text()
  const shown = async (field: string): Promise<number> => Number(await page.getAttribute(`[data-field="${field}"]`, 'data-value'))
  const outcomes = (names: string[]): number => {
    let n = 0
    for (const kind of ['blob', 'manifest']) for (const method of ['GET', 'HEAD']) for (const outcome of names) n += sample(metrics, 'registry_mirror_requests_total', { kind, method, outcome }) ?? 0
    return n
  }
  t.equal(await shown('cache.totalBytes'), sample(metrics, 'registry_mirror_cache_bytes'), 'cache bytes: the page shows /metrics\' figure')
  t.equal(await shown('cache.blobs'), sample(metrics, 'registry_mirror_cache_blobs'), 'cached blobs')
  t.equal(await shown('sinceStart.hits'), outcomes(['hit', 'stale', 'revalidated']), 'hits')
  t.equal(await shown('sinceStart.misses'), outcomes(['miss', 'joined']), 'misses')
  for (const upstream of ['docker.io', 'ghcr.io']) {
    t.equal(await shown(`upstreams.${upstream}.fetchedBytes`), sample(metrics, 'registry_mirror_upstream_fetched_bytes_total', { upstream }), `bytes fetched from ${upstream}`)
  }
  t.ok(await shown('sinceStart.misses') > 0, 'the pulls missed first')
  const clients = await page.$$eval('#working tbody tr', rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.textContent ?? '')))
  const row = (name: string): string[] | undefined => clients.find(r => r[0]?.startsWith(name))
  t.notMatch(row('dockerd')?.[1] ?? 'never', 'never', 'dockerd was seen')
  t.notMatch(row('skopeo')?.[1] ?? 'never', 'never', 'skopeo was seen')
  t.equal(row('containerd')?.[1], 'never')
  t.equal(await page.evaluate('window.pwned'), undefined, 'the markup in a user agent did not run')
  t.match(await page.textContent('#working'), '<img src=x onerror="window.pwned=1">', 'it is shown as text')

  // Charts: SVG with bars.
  for (const id of ['chart-requests', 'chart-pulls', 'chart-bytes']) {
    const bars = await page.evaluate(`[...document.querySelectorAll('#${id} svg rect.s1, #${id} svg rect.s2')].map(r => r.getBBox().height)`) as number[]
    t.ok(bars.length > 0 && bars.every(h => h > 0), `${id}: drawn, ${bars.length} bars`)
  }
  const box = await page.locator('#chart-bytes svg').boundingBox()
  t.ok((box?.width ?? 0) > 100 && (box?.height ?? 0) > 20, 'at a readable size')

  // The private repository: nowhere for this (anonymous) viewer.
  const html = await page.content()
  t.notMatch(html, 'org/app', 'the private repository is not named on the page')
  t.match(html, 'docker.io/library/multi', 'the public one is')
  t.match(await page.textContent('#config'), 'entries are hidden')
  await page.screenshot({ path: join(ARTIFACTS, 'status-page.png'), fullPage: true })

  // Upstreams taken down: five failed connects open a circuit; the page says so at its next refresh.
  await world.stopUpstreams()
  for (let i = 0; i < 6; i++) {
    const res = await fetch(`${mirror.url}/v2/library/gone${i}/manifests/v1`)
    await res.arrayBuffer()
  }
  const started = Date.now()
  // The report is at most a second old.
  await new Promise(resolve => setTimeout(resolve, 1100))
  const state = (await (await fetch(`${mirror.url}/status.json`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { upstreams: Array<{ name: string, state: string }> }
  t.equal(state.upstreams.find(u => u.name === 'docker.io')?.state, 'down', 'the mirror has it down')
  await page.waitForSelector('[data-upstream="docker.io"][data-state="down"]', { timeout: 7_000 })
  t.ok(Date.now() - started <= 7_000, `down on the page within one refresh (${Date.now() - started} ms)`)
  t.equal(await page.evaluate('window.loadedOnce'), true, 'without a reload')
  t.match(await page.textContent('#working .problems'), 'Upstream docker.io is down')
  await page.screenshot({ path: join(ARTIFACTS, 'status-page-upstream-down.png'), fullPage: true })

  // A phone in dark mode: nothing wider than the screen, a dark background.
  const phone = await browser.context({ viewport: { width: 390, height: 844 }, colorScheme: 'dark', deviceScaleFactor: 2 })
  await phone.addCookies(await context.cookies())
  const small = await phone.newPage()
  t.equal((await small.goto(`${mirror.url}/status`))?.status(), 200, 'the cookie opens it')
  const fit = await small.evaluate('({ scroll: document.documentElement.scrollWidth, width: window.innerWidth, background: getComputedStyle(document.body).backgroundColor })') as { scroll: number, width: number, background: string }
  t.ok(fit.scroll <= fit.width, `fits a phone (${fit.scroll} px of ${fit.width})`)
  t.equal(fit.background, 'rgb(13, 17, 23)', 'dark')
  await small.screenshot({ path: join(ARTIFACTS, 'status-page-phone-dark.png'), fullPage: true })
  await phone.close()

  // Scripts off: the form still signs in, and the numbers are in the HTML.
  const noScript = await browser.context({ javaScriptEnabled: false })
  const plain = await noScript.newPage()
  await plain.goto(`${mirror.url}/status`)
  await plain.fill('input[name=token]', TOKEN)
  await Promise.all([plain.waitForURL(`${mirror.url}/status`), plain.click('button[type=submit]')])
  t.equal(Number(await plain.getAttribute('[data-field="cache.totalBytes"]', 'data-value')), sample(metrics, 'registry_mirror_cache_bytes'), 'with scripts off: the same cache bytes')
  await noScript.close()

  // Every request any of these pages made went to the mirror.
  const origin = new URL(mirror.url).origin
  const elsewhere = browser.requests.filter(r => new URL(r.url).origin !== origin)
  t.same(elsewhere, [], `nothing left for another host (${browser.requests.length} requests, all to ${origin})`)
  t.ok(browser.requests.some(r => r.url.endsWith('/status/assets/status.js')), 'the script came from the mirror')
  t.ok(browser.requests.some(r => r.url.endsWith('/status/assets/status.css')), 'the stylesheet too')
  t.ok(browser.requests.filter(r => r.resourceType === 'fetch').length >= 2, 'the refreshes were fetches of the page')
})
