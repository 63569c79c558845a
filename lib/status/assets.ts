// The status page's stylesheet and script, served by the mirror itself (no
// CDN, no web fonts: the page works on an air-gapped site) under a CSP that
// allows only these. The script is the page's only moving part: it fetches
// /status again every `data-refresh` seconds and swaps the new <main> in; with
// scripts off the page is whole, only static.

import { createHash } from 'node:crypto'

const CSS = `
:root { color-scheme: light dark; --fg: #1b1f24; --muted: #57606a; --bg: #ffffff; --card: #f6f8fa; --line: #d0d7de;
  --s1: #2f81f7; --s2: #e16f24; --ok: #1a7f37; --bad: #cf222e; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --muted: #8d96a0; --bg: #0d1117; --card: #161b22; --line: #30363d; --s1: #58a6ff; --s2: #f0883e; --ok: #3fb950; --bad: #f85149; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg); font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 70rem; margin: 0 auto; padding: 1rem; }
h1 { margin: 0; font-size: 1.5rem; }
h2 { font-size: 1.15rem; margin: 0 0 .5rem; }
h3 { font-size: 1rem; margin: 1rem 0 .4rem; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .8rem 1rem; margin: 1rem 0; }
.meta, .note, small, .empty { color: var(--muted); }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, monospace; overflow-wrap: anywhere; }
pre { background: var(--bg); border: 1px solid var(--line); padding: .5rem; overflow-x: auto; }
.verdict { font-size: 1.1rem; font-weight: 600; }
.verdict.ok, .state.up { color: var(--ok); }
.verdict.idle { color: var(--muted); }
.bad, .state.down, .problems { color: var(--bad); }
.state.unknown { color: var(--muted); }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(11rem, 1fr)); gap: .5rem 1rem; margin: .5rem 0; }
.figures div, .config div { margin: 0; }
dt { color: var(--muted); font-size: .85rem; }
dd { margin: 0; font-size: 1.05rem; font-variant-numeric: tabular-nums; }
.config { display: grid; grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); gap: .5rem 1rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
.ua { display: inline-block; max-width: 28rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(18rem, 1fr)); gap: 1rem; }
.chart { margin: 0; }
.chart svg { width: 100%; height: 4rem; display: block; background: var(--bg); border: 1px solid var(--line); }
.chart figcaption { font-size: .9rem; margin-bottom: .2rem; }
.key::before { content: ""; display: inline-block; width: .7em; height: .7em; margin: 0 .2em 0 .4em; background: currentColor; }
.key.s1, rect.s1 { color: var(--s1); fill: var(--s1); }
.key.s2, rect.s2 { color: var(--s2); fill: var(--s2); }
rect.hover { fill: transparent; }
rect.hover:hover { fill: var(--muted); fill-opacity: .15; }
line.axis { stroke: var(--line); stroke-width: 1; }
svg.usage { width: 100%; height: .9rem; display: block; border-radius: 4px; }
svg.usage .track { fill: var(--bg); }
svg.usage .used { fill: var(--s1); }
svg.usage line { stroke: var(--bad); stroke-width: 2; }
svg.usage line.low { stroke: var(--muted); }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr)); gap: 0 1rem; }
body.stale main { opacity: .6; }
input, button { font: inherit; padding: .3rem .5rem; }
@media (max-width: 40rem) { main { padding: .5rem; } section { padding: .6rem; } th, td { padding: .2rem .3rem; } }
`

const JS = `'use strict';
(function () {
  var timer;
  function every () {
    var main = document.getElementById('status');
    var seconds = main ? Number(main.getAttribute('data-refresh')) : 0;
    if (!(seconds > 0)) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, seconds * 1000);
  }
  function stale (yes) {
    document.body.classList.toggle('stale', yes);
    var note = document.querySelector('.stale-note');
    if (note) note.hidden = !yes;
  }
  function refresh () {
    fetch(location.pathname + location.search, { credentials: 'same-origin', cache: 'no-store', headers: { accept: 'text/html' } })
      .then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, 'text/html').getElementById('status');
        var now = document.getElementById('status');
        if (!next || !now) throw new Error('no status in the answer');
        var open = {};
        now.querySelectorAll('details[id], section[id] details').forEach(function (d, i) { open[i] = d.open; });
        now.replaceWith(document.adoptNode(next));
        next.querySelectorAll('details[id], section[id] details').forEach(function (d, i) { if (i in open) d.open = open[i]; });
        stale(false);
        document.dispatchEvent(new CustomEvent('status:refreshed'));
      })
      .catch(function () { stale(true); })
      .then(every);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', every); else every();
})();
`

export interface Asset {
  readonly body: string
  readonly type: string
  /** A strong ETag of the body. */
  readonly etag: string
}

function asset (body: string, type: string): Asset {
  return { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` }
}

export const STATUS_ASSETS: ReadonlyMap<string, Asset> = new Map([
  ['status.css', asset(CSS, 'text/css; charset=utf-8')],
  ['status.js', asset(JS, 'text/javascript; charset=utf-8')]
])
