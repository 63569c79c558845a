// The /status page: the report (report.ts) as HTML, rendered here, numbers
// and charts (inline SVG) included, so it reads with scripts off and from
// curl; status.js only fetches the page again and swaps it in. Every string
// from outside (user agents, repository names, errors, the Host header) goes
// through `esc`; nothing else is interpolated but numbers.

import { formatBytes } from '../cli/maintenance.js'
import type { MinuteFigures, StatusReport } from './report.js'

export const ASSET_PATH = '/status/assets'

export function esc (value: string): string {
  return value.replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`)
}

/** A number shown to people, with its exact value in data-value for scripts and tests. */
function figure (field: string, value: number | null, shown: string): string {
  return `<span class="figure" data-field="${esc(field)}" data-value="${value === null ? '' : String(value)}">${esc(shown)}</span>`
}

function bytes (field: string, n: number | null): string {
  return figure(field, n, n === null ? 'unknown' : formatBytes(n))
}

function count (field: string, n: number): string {
  return figure(field, n, n.toLocaleString('en-US'))
}

function percent (field: string, ratio: number | null): string {
  return figure(field, ratio, ratio === null ? 'n/a' : `${(ratio * 100).toFixed(1)}%`)
}

export function ago (iso: string | null, now: number): string {
  if (iso === null) return 'never'
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000))
  if (s < 60) return `${s} s ago`
  if (s < 3600) return `${Math.floor(s / 60)} min ago`
  if (s < 86_400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`
  return `${Math.floor(s / 86_400)} d ago`
}

function duration (seconds: number): string {
  const d = Math.floor(seconds / 86_400)
  const h = Math.floor((seconds % 86_400) / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  return d > 0 ? `${d} d ${h} h` : h > 0 ? `${h} h ${m} min` : `${m} min ${seconds % 60} s`
}

function time (iso: string, now: number): string {
  return `<time datetime="${esc(iso)}" title="${esc(iso)}">${esc(ago(iso, now))}</time>`
}

/** Bars, one a minute, scaled to the hour's largest; each series stacked on the one before. */
function chart (id: string, label: string, minutes: MinuteFigures[], series: Array<{ name: string, cls: string, value: (m: MinuteFigures) => number }>, show: (n: number) => string): string {
  const width = 300
  const height = 64
  const step = width / Math.max(1, minutes.length)
  const totals = minutes.map(m => series.reduce((sum, s) => sum + s.value(m), 0))
  const max = Math.max(...totals, 0)
  let bars = ''
  minutes.forEach((m, i) => {
    let y = height
    const parts: string[] = []
    for (const s of series) {
      const v = s.value(m)
      if (v <= 0 || max === 0) continue
      const h = Math.max(1, (v / max) * (height - 2))
      y -= h
      bars += `<rect class="${s.cls}" x="${(i * step).toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, step - 1).toFixed(1)}" height="${h.toFixed(1)}"/>`
      parts.push(`${s.name} ${show(v)}`)
    }
    if (parts.length > 0) bars += `<rect class="hover" x="${(i * step).toFixed(1)}" y="0" width="${step.toFixed(1)}" height="${height}"><title>${esc(m.at.slice(11, 16))} UTC: ${esc(parts.join(', '))}</title></rect>`
  })
  const legend = series.map(s => `<span class="key ${s.cls}">${esc(s.name)}</span>`).join(' ')
  return `<figure class="chart" id="${id}"><figcaption>${esc(label)} <small>per minute, last hour, peak ${esc(show(max))}</small> ${legend}</figcaption>` +
    `<svg viewBox="0 0 ${width} ${height}" preserveAspectRatio="none" role="img" aria-label="${esc(label)}"><line class="axis" x1="0" y1="${height - 0.5}" x2="${width}" y2="${height - 0.5}"/>${bars}</svg></figure>`
}

function table (head: string[], rows: string[][], empty: string): string {
  if (rows.length === 0) return `<p class="empty">${esc(empty)}</p>`
  return `<div class="scroll"><table><thead><tr>${head.map(h => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows.map(r => `<tr>${r.map(c => `<td>${c}</td>`).join('')}</tr>`).join('')}</tbody></table></div>`
}

/** What to put in each client's configuration to pull through this mirror, at the address the viewer used. */
function firstRun (address: string): string {
  const a = esc(address)
  return `<section class="hint" id="first-run"><h2>Nothing has pulled through this mirror yet</h2>
<p>Point a client at <code>${a}</code> (add <code>https://</code> if it serves TLS), then pull an image; this page says when it sees one.</p>
<details open><summary>dockerd (<code>/etc/docker/daemon.json</code>, then restart dockerd)</summary><pre>{ "registry-mirrors": ["http://${a}"] }</pre><p>dockerd sends only Docker Hub's images to a mirror.</p></details>
<details><summary>containerd (<code>/etc/containerd/certs.d/docker.io/hosts.toml</code>)</summary><pre>server = "https://registry-1.docker.io"

[host."http://${a}"]
  capabilities = ["pull", "resolve"]
  override_path = false</pre><p>One directory per registry (<code>ghcr.io</code>, <code>quay.io</code>…) with the same host; the mirror tells them apart by <code>?ns=</code>. containerd 2.1 and later need <code>use_local_image_pull = true</code>.</p></details>
<details><summary>podman, CRI-O, buildah, skopeo (<code>/etc/containers/registries.conf.d/mirror.conf</code>)</summary><pre>[[registry]]
location = "docker.io"

[[registry.mirror]]
location = "${a}/docker.io"
insecure = true</pre></details>
</section>`
}

export interface PageOptions {
  /** host[:port] the viewer reached the mirror at (already checked), for the first-run hint. */
  readonly address: string
  readonly now: number
}

export function renderStatusPage (r: StatusReport, options: PageOptions): string {
  const now = options.now
  const out: string[] = []
  const refresh = r.server?.refreshSeconds ?? 0
  out.push(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="color-scheme" content="light dark">`)
  out.push(`<title>registry-mirror status</title><link rel="stylesheet" href="${ASSET_PATH}/status.css"><script src="${ASSET_PATH}/status.js" defer></script></head><body>`)
  out.push(`<main id="status" data-refresh="${refresh}" data-generated="${esc(r.generatedAt)}">`)
  out.push(`<header><h1>registry-mirror</h1><p class="meta">version ${esc(r.version)}` +
    (r.server === undefined ? '' : ` · up ${esc(duration(r.server.uptimeSeconds))}`) +
    ` · ${esc(r.node.note)} · <span class="generated">as of ${esc(r.generatedAt.slice(11, 19))} UTC</span><span class="stale-note" hidden> · not refreshing: the mirror did not answer</span></p></header>`)

  // Is it working?
  const clients = r.clients ?? []
  const seen = clients.filter(c => c.lastServedAt !== null)
  const problems: string[] = []
  if (r.cache.degraded !== null) problems.push(`The cache is degraded: ${r.cache.degraded}.`)
  for (const u of r.upstreams) if (u.state === 'down') problems.push(`Upstream ${u.name} is down${u.downSince === null ? '' : ` since ${u.downSince.slice(0, 19)}Z`}; cached content is still served.`)
  out.push(`<section id="working"><h2>Is it working?</h2>`)
  if (problems.length > 0) out.push(`<ul class="problems">${problems.map(p => `<li>${esc(p)}</li>`).join('')}</ul>`)
  if (seen.length === 0) {
    out.push('<p class="verdict idle">No client has been served since the mirror started.</p>')
  } else {
    const last = seen.reduce((a, b) => (Date.parse(a.lastServedAt ?? '') >= Date.parse(b.lastServedAt ?? '') ? a : b))
    out.push(`<p class="verdict ok">Yes: ${esc(last.name)} was served ${time(last.lastServedAt ?? '', now)} from the ${esc(last.source ?? 'cache')}.</p>`)
  }
  out.push(table(['client', 'last served', 'from', 'requests', 'last user agent'], clients.map(c => [
    esc(c.name),
    c.lastServedAt === null ? 'never' : time(c.lastServedAt, now),
    esc(c.source ?? '—'),
    count(`clients.${c.kind}.requests`, c.requests),
    c.userAgent === null ? '—' : `<code class="ua">${esc(c.userAgent)}</code>`
  ]), 'Client kinds are shown by a running mirror.'))
  out.push('</section>')
  if (r.server !== undefined && seen.length === 0) out.push(firstRun(options.address))

  // What it saves
  const s = r.sinceStart
  out.push(`<section id="savings"><h2>What it saves</h2>`)
  if (s !== undefined) {
    out.push(`<dl class="figures">` +
      `<div><dt>hit ratio</dt><dd>${percent('sinceStart.hitRatio', s.hitRatio)}</dd></div>` +
      `<div><dt>served from cache</dt><dd>${bytes('sinceStart.cacheBytes', s.cacheBytes)}</dd></div>` +
      `<div><dt>served from upstream</dt><dd>${bytes('sinceStart.upstreamBytes', s.upstreamBytes)}</dd></div>` +
      `<div><dt>fetched from upstream</dt><dd>${bytes('sinceStart.fetchedBytes', s.fetchedBytes)}</dd></div>` +
      `<div><dt>bytes saved</dt><dd>${bytes('sinceStart.savedBytes', s.savedBytes)}</dd></div>` +
      `<div><dt>requests</dt><dd>${count('sinceStart.requests', s.requests)}</dd></div>` +
      `<div><dt>pulls</dt><dd>${count('sinceStart.pulls', s.pulls)}</dd></div>` +
      `<div><dt>hits / misses</dt><dd>${count('sinceStart.hits', s.hits)} / ${count('sinceStart.misses', s.misses)}</dd></div>` +
      `<div><dt>upstream requests avoided</dt><dd>${count('sinceStart.avoided.tagsWithinTtl', s.avoided.tagsWithinTtl)} tags within their TTL, ${count('sinceStart.avoided.joinedDownloads', s.avoided.joinedDownloads)} joined downloads</dd></div>` +
      `</dl><p class="note">Since the mirror started${r.server === undefined ? '' : ` (${esc(r.server.startedAt.slice(0, 19))}Z)`}; pulls count image manifests sent, one per image and platform.</p>`)
  }
  const lastHour = r.lastHour ?? []
  if (lastHour.length > 0) {
    out.push('<div class="charts">')
    out.push(chart('chart-requests', 'Requests', lastHour, [{ name: 'requests', cls: 's1', value: m => m.requests }], n => String(n)))
    out.push(chart('chart-pulls', 'Hits and misses', lastHour, [{ name: 'hits', cls: 's1', value: m => m.hits }, { name: 'misses', cls: 's2', value: m => m.misses }], n => String(n)))
    out.push(chart('chart-bytes', 'Bytes served', lastHour, [{ name: 'from cache', cls: 's1', value: m => m.cacheBytes }, { name: 'from upstream', cls: 's2', value: m => m.upstreamBytes }], formatBytes))
    out.push('</div>')
  }
  const a = r.requests
  out.push(`<p class="note">Since the cache was made: ${count('requests.hit', a.hit)} hits, ${count('requests.revalidated', a.revalidated)} revalidated, ${count('requests.miss', a.miss)} misses, ${count('requests.joined', a.joined)} joined, ${count('requests.error', a.error)} errors; hit ratio ${percent('requests.hitRatio', a.hitRatio)}.</p>`)
  out.push('</section>')

  // Cache
  const c = r.cache
  out.push(`<section id="cache"><h2>Cache</h2>`)
  const max = c.maxSize
  if (max !== null && max > 0) {
    const used = Math.min(1, c.totalBytes / max)
    const mark = (f: number | null, cls: string): string => f === null ? '' : `<line class="${cls}" x1="${((f / max) * 300).toFixed(1)}" x2="${((f / max) * 300).toFixed(1)}" y1="0" y2="12"/>`
    out.push(`<svg class="usage" viewBox="0 0 300 12" preserveAspectRatio="none" role="img" aria-label="cache use against storage.maxSize"><rect class="track" x="0" y="0" width="300" height="12"/><rect class="used" x="0" y="0" width="${(used * 300).toFixed(1)}" height="12"/>${mark(c.lowWatermarkBytes, 'low')}${mark(c.highWatermarkBytes, 'high')}</svg>`)
  }
  out.push(`<dl class="figures">` +
    `<div><dt>used</dt><dd>${bytes('cache.totalBytes', c.totalBytes)}${c.maxSize === null ? ' (no storage.maxSize)' : ` of ${bytes('cache.maxSize', c.maxSize)}`}</dd></div>` +
    (c.maxSize === null ? '' : `<div><dt>eviction</dt><dd>starts above ${bytes('cache.highWatermarkBytes', c.highWatermarkBytes)}, stops at ${bytes('cache.lowWatermarkBytes', c.lowWatermarkBytes)}</dd></div>`) +
    `<div><dt>free on the volume</dt><dd>${bytes('cache.freeBytes', c.freeBytes)}</dd></div>` +
    `<div><dt>blobs</dt><dd>${count('cache.blobs', c.blobs)}</dd></div>` +
    `<div><dt>manifests</dt><dd>${count('cache.manifests', c.manifests)}</dd></div>` +
    `<div><dt>tags</dt><dd>${count('cache.tags', c.tags)}</dd></div>` +
    `<div><dt>repositories</dt><dd>${count('cache.repositories', c.repositories)}</dd></div>` +
    `<div><dt>pinned</dt><dd>${count('cache.pins', c.pins)} images, ${bytes('cache.pinnedBytes', c.pinnedBytes)}</dd></div>` +
    `<div><dt>index</dt><dd>${c.degraded === null ? 'writable' : `<strong class="bad">${esc(c.degraded)}</strong>`}</dd></div>` +
    `</dl>`)
  out.push('<div class="columns"><div><h3>Top repositories by pulls</h3>')
  out.push(r.top.byPulls === undefined
    ? '<p class="empty">Counted by a running mirror.</p>'
    : table(['repository', 'pulls'], r.top.byPulls.map(t => [esc(t.repository), count('pulls', t.pulls)]), 'No pulls yet.'))
  out.push('</div><div><h3>Top repositories by size</h3>')
  out.push(table(['repository', 'size', 'blobs'], r.top.bySize.map(t => [esc(t.repository), bytes('size', t.bytes), count('blobs', t.blobs)]), 'The cache is empty.'))
  out.push('</div></div><h3>Pinned</h3>')
  out.push(table(['repository', 'reference', 'since'], r.pins.map(p => [esc(p.repository), `<code>${esc(p.reference)}</code>`, time(p.createdAt, now)]), 'Nothing is pinned.'))
  out.push('<h3>Recent evictions</h3>')
  out.push(table(['when', 'what', 'size', 'reason', 'repositories'], r.evictions.map(e => [
    time(e.at, now),
    `${esc(e.kind)} <code>${esc(e.digest.slice(0, 19))}…</code>`,
    e.bytes === null ? '—' : esc(formatBytes(e.bytes)),
    `${esc(e.reason)}${e.by === 'serve' ? '' : ` <small>(${esc(e.by)})</small>`}`,
    esc(e.repositories.join(', '))
  ]), 'Nothing evicted yet.'))
  out.push('</section>')

  // Downloads
  if (r.downloads !== undefined) {
    out.push(`<section id="downloads"><h2>Downloads in flight</h2>`)
    out.push(table(['blob', 'repository', 'progress', 'rate', 'clients'], r.downloads.map(d => [
      `<code>${esc(d.digest.slice(0, 19))}…</code>`,
      esc(d.repository),
      `${esc(formatBytes(d.bytes))}${d.size === null ? '' : ` of ${esc(formatBytes(d.size))} <progress max="${d.size}" value="${d.bytes}"></progress>`}`,
      `${esc(formatBytes(d.bytesPerSecond))}/s`,
      String(d.clients)
    ]), 'None now.'))
    out.push('</section>')
  }

  // Upstreams
  out.push(`<section id="upstreams"><h2>Upstreams</h2>`)
  out.push(table(['upstream', 'state', 'rate limit left', 'requests', 'fetched', 'last error'], r.upstreams.map(u => [
    `${esc(u.name)}${u.default ? ' <small>(default)</small>' : ''}${u.passthrough ? ' <small>(passthrough)</small>' : ''}<br><small>${esc(u.url)}</small>`,
    `<span class="state ${u.state}" data-upstream="${esc(u.name)}" data-state="${u.state}">${u.state}</span>` +
      (u.downSince === null ? '' : ` since ${time(u.downSince, now)}`) +
      (u.nextProbe === undefined || u.nextProbe === null ? '' : `, tried again at ${esc(u.nextProbe.slice(11, 19))} UTC`),
    u.rateLimit === undefined ? '—' : u.rateLimit === null ? 'unknown (it sends none)' : `${u.rateLimit.remaining}${u.rateLimit.limit === null ? '' : ` of ${u.rateLimit.limit}`}${u.rateLimit.windowSeconds === null ? '' : ` per ${Math.round(u.rateLimit.windowSeconds / 3600)} h`}, ${time(u.rateLimit.at, now)}`,
    u.requests === undefined ? '—' : count(`upstreams.${u.name}.requests`, u.requests),
    u.fetchedBytes === undefined ? '—' : bytes(`upstreams.${u.name}.fetchedBytes`, u.fetchedBytes),
    u.lastError === undefined || u.lastError === null ? '—' : `${esc(u.lastError.message)} (${time(u.lastError.at, now)})`
  ]), 'No upstreams.'))
  out.push('</section>')

  // Configuration
  const k = r.config
  out.push(`<section id="config"><h2>Configuration</h2><dl class="config">` +
    `<div><dt>listen</dt><dd><code>${esc(k.listen)}</code>${k.tls ? ' (TLS)' : ''}</dd></div>` +
    `<div><dt>storage</dt><dd><code>${esc(k.storage.path)}</code>${k.storage.bucket === null ? '' : `, bucket <code>${esc(k.storage.bucket)}</code>${k.storage.redirect ? ' (redirects)' : ''}`}</dd></div>` +
    `<div><dt>bounds</dt><dd>${k.storage.maxSize === null ? 'no size limit' : esc(formatBytes(k.storage.maxSize))}, ${k.storage.maxAgeSeconds === null ? 'no age limit' : `at most ${Math.round(k.storage.maxAgeSeconds / 86_400)} days unused`}</dd></div>` +
    `<div><dt>tag TTL</dt><dd>${k.tagTtlSeconds} s</dd></div>` +
    `<div><dt>offline</dt><dd>${k.offline ? 'yes: upstreams are never asked' : 'no'}</dd></div>` +
    `<div><dt>auth</dt><dd>${k.auth === null ? 'none: anyone who reaches it may pull' : `${k.auth.users ? 'users (htpasswd)' : 'passthrough logins only'}, ${k.auth.rules} rules, default ${k.auth.defaultPull ? 'pull' : 'deny'}`}</dd></div>` +
    `<div><dt>metrics</dt><dd>${k.metrics.ownListener ? 'own listener' : 'main listener'}, ${k.metrics.tokenRequired ? 'token required' : 'no token'}</dd></div>` +
    `</dl>${r.hidden > 0 ? `<p class="note">${r.hidden} entries are hidden: their repositories are not readable by this viewer.</p>` : ''}</section>`)
  out.push('</main></body></html>')
  return out.join('\n')
}

/** The form a browser without the metrics token gets: the token goes in a cookie, never in the URL. */
export function renderLoginPage (failed: boolean): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta name="color-scheme" content="light dark">` +
    `<title>registry-mirror status: sign in</title><link rel="stylesheet" href="${ASSET_PATH}/status.css"></head><body><main id="login">` +
    `<h1>registry-mirror status</h1><p>This page needs the mirror's metrics token (<code>metrics.token</code>).</p>` +
    (failed ? '<p class="bad">That token is not the one.</p>' : '') +
    '<form method="post" action="/status/login"><label>Token <input type="password" name="token" autocomplete="current-password" required></label> <button type="submit">Open</button></form>' +
    '<p class="note">The page keeps it in a cookie for this site (12 hours); scripts cannot read it.</p></main></body></html>'
}
