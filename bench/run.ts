// npm run bench: registry-mirror against distribution's registry in proxy
// mode, on one machine, in one run, from one upstream (a hosted distribution
// registry holding freshly generated images), with the same clients. Prints
// one table and writes it to bench/RESULTS.md. See bench/README.md.

import { access, mkdir, writeFile, readdir } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { mediaTypes } from '../harness/oci-layout.js'
import { MirrorProcess } from '../harness/mirror-process.js'
import { freshSeed } from '../harness/random.js'
import { ReferenceRegistry } from '../harness/reference-registry.js'
import { Skopeo } from '../harness/skopeo.js'
import { makeTempDir, removeTempDir } from '../harness/temp.js'
import { pullBlob, timedSkopeoPull } from './clients.js'
import { pushImages, layoutBlobDir, TAG, type BenchImage, type ImagePlan } from './images.js'
import { describeEnvironment, missingTools } from './machine.js'
import { cpuSample, currentRss, foreignShare, peakRss, resetPeakRss } from './proc.js'
import { openSlowReaders } from './slow-readers.js'
import { SlowUpstream } from './slow-upstream.js'
import { gigabytesPerSecond, MB, megabytes, milliseconds, perSecond, ratio, renderEnvironment, renderTable, seconds, type Row } from './report.js'
import { findProcess, NginxCacheServer, NginxServer, RegistryMirrorServer } from './servers.js'
import { bigCache } from './big-cache.js'
import { fleetOnBucket, type FleetSideResult } from './fleet.js'
import { blobGetsOf, UpstreamMeter, type UpstreamTraffic } from './upstream-meter.js'
import { wrk, WRK_THREADS, type WrkResult } from './wrk.js'
import { startStatusViewers } from './status-viewers.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')

/** The workloads of issue 5, with the sizes and durations it names. */
const COLD_BLOB = 200 * MB
const CONCURRENT_CLIENTS = 8
const WARM_BLOB = 30 * MB
const WARM_CONNECTIONS = 8
const WARM_SECONDS = 10
const MANIFEST_CONNECTIONS = 16
const MANIFEST_SECONDS = 10
/** Unmeasured load before each measured wrk run, so that no server is measured while its JIT and heap warm up. */
const WARMUP_SECONDS = 2
/** The warm blob is measured this many times per server, interleaved; the best run counts (see README). */
const WARM_ROUNDS = 2
/** Above this share of the CPU going to other processes, a workload's numbers are flagged as disturbed. */
const FOREIGN_CPU_LIMIT = 0.1
const APP_LAYERS = [40 * MB, 20 * MB, 8 * MB, 2 * MB, 500 * 1000]
/** Issue 10's floods: many connections on a small warm blob, and clients that stop reading. */
const SMALL_BLOB = 1 * MB
const MANY_CONNECTIONS = 200
const MANY_SECONDS = 10
const SLOW_READERS = 1000
const MANY_RSS_LIMIT = 200 * MB
const SLOW_READERS_RSS_LIMIT = 1000 * MB
/** Workload 9: slow downloads on the upstream of a cold tag. */
const SLOW_DOWNLOADS = 40
const SLOW_LAYER = 1 * MB
const SLOW_RATE = 128 * 1024
const COLD_TAG_LIMIT_SECONDS = 1
/** Workload 10: opening a data directory of this many blobs, locally, within the limit. */
const BIG_CACHE_BLOBS = 200_000
const BIG_CACHE_LIMIT_SECONDS = 1
/** Long enough that every tag request of the run is answered from the cache, as the issue intends. */
const TAG_TTL = '1h'
const RSS_LIMIT = 150 * MB
/** Issue 18's targets for the cold path: ratios to the reference, and to curl reading the upstream directly. */
const COLD_RATIO_TARGET = 0.8
const COLD_CONCURRENT_RATIO_TARGET = 0.6
const COLD_CEILING_FACTOR = 2
const START_RSS_LIMIT = 60 * MB
/** "Not growing with blob size": a 200 MB cold pull may raise the peak by at most this over a 30 MB one. */
const RSS_GROWTH_LIMIT = 10 * MB

const ACCEPT = [mediaTypes.ociManifest, mediaTypes.ociIndex, mediaTypes.dockerManifest, mediaTypes.dockerList].join(', ')

type Key = 'rm' | 'ref'
const KEYS: readonly Key[] = ['rm', 'ref']

interface MirrorUnderTest {
  readonly key: Key
  readonly label: string
  readonly url: string
  readonly host: string
  readonly pid: number
}

type PerMirror<T> = Record<Key, T>

interface Bench {
  readonly work: string
  readonly upstreamUrl: string
  /** registry-mirror's figures of workloads 1-3, set as they run, for workload 12 to set beside nginx's. */
  readonly figures: { cold?: number, coldGets?: number, coldConcurrent?: number, coldConcurrentGets?: number, warm?: number }
  readonly mirrors: PerMirror<MirrorUnderTest>
  readonly meter: UpstreamMeter
  readonly skopeo: Skopeo
  readonly images: ReadonlyMap<string, BenchImage>
  readonly rows: Row[]
  readonly details: string[]
  /** VmHWM of each server after each stage. */
  readonly rss: Array<{ stage: string, bytes: PerMirror<number> }>
  /** Share of the machine's CPU that other processes took during each workload. */
  readonly foreign: Array<{ workload: string, share: number }>
}

function image (bench: Bench, repository: string): BenchImage {
  const found = bench.images.get(repository)
  if (found === undefined) throw new Error(`no image ${repository}`)
  return found
}

function onlyLayer (img: BenchImage): { digest: string, size: number } {
  const layer = img.layers[0]
  if (layer === undefined || img.layers.length !== 1) throw new Error(`${img.repository} should have exactly one layer`)
  return layer
}

function blobUrl (mirror: MirrorUnderTest, repository: string, digest: string): string {
  return `${mirror.url}/v2/${repository}/blobs/${digest}`
}

function log (line: string): void {
  process.stderr.write(`# ${line}\n`)
}

async function recordRss (bench: Bench, stage: string): Promise<void> {
  const bytes = { rm: await peakRss(bench.mirrors.rm.pid), ref: await peakRss(bench.mirrors.ref.pid) }
  bench.rss.push({ stage, bytes })
  log(`peak RSS ${stage}: registry-mirror ${megabytes(bytes.rm)}, reference ${megabytes(bytes.ref)}`)
}

function describeTraffic (t: UpstreamTraffic): string {
  return `${t.requests.length} (${t.blobGets} blob GET, ${t.blobHeads} blob HEAD, ${t.manifestRequests} manifest, ${t.pings} /v2/)`
}

/** A cold pull of the warm blob: primes both caches, and is the 30 MB point of the RSS growth check. */
async function primeWarmBlob (bench: Bench): Promise<void> {
  const blob = onlyLayer(image(bench, 'bench/warm'))
  for (const key of KEYS) {
    const mirror = bench.mirrors[key]
    const mark = await bench.meter.mark()
    await pullBlob(blobUrl(mirror, 'bench/warm', blob.digest), blob.size)
    await bench.meter.settle()
    const traffic = await bench.meter.since(mark)
    bench.details.push(`cold ${megabytes(blob.size)} blob (priming workload 3), ${mirror.label}: upstream requests ${describeTraffic(traffic)}`)
  }
  await recordRss(bench, `after a cold ${megabytes(blob.size)} blob`)
}

/** 1. One client, one cold 200 MB blob: time, and what it cost the upstream. */
async function coldSingle (bench: Bench): Promise<void> {
  const seconds_: Partial<PerMirror<number>> = {}
  const traffic: Partial<PerMirror<UpstreamTraffic>> = {}
  const gets: Partial<PerMirror<number>> = {}
  let size = 0
  for (const key of KEYS) {
    const mirror = bench.mirrors[key]
    const repository = `bench/cold-one-${key}`
    const blob = onlyLayer(image(bench, repository))
    size = blob.size
    log(`1. cold ${megabytes(blob.size)} blob, one client: ${mirror.label}`)
    const mark = await bench.meter.mark()
    const pull = await pullBlob(blobUrl(mirror, repository, blob.digest), blob.size)
    await bench.meter.settle()
    seconds_[key] = pull.seconds
    traffic[key] = await bench.meter.since(mark)
    gets[key] = blobGetsOf(traffic[key], blob.digest)
  }
  const s = required(seconds_)
  const t = required(traffic)
  const g = required(gets)
  // The ceiling: curl reading the same blob straight from the upstream, which has served it twice already.
  const ceilingBlob = onlyLayer(image(bench, 'bench/cold-one-ref'))
  const direct = (await pullBlob(`${bench.upstreamUrl}/v2/bench/cold-one-ref/blobs/${ceilingBlob.digest}`, ceilingBlob.size)).seconds
  bench.figures.cold = s.rm
  bench.figures.coldGets = g.rm
  const name = `1. cold ${megabytes(size)} blob, 1 client`
  bench.rows.push(
    { workload: `${name}: time`, mirror: seconds(s.rm), reference: seconds(s.ref), ratio: ratio(s.rm, s.ref), target: `≤ ${COLD_RATIO_TARGET}×`, met: s.rm / s.ref <= COLD_RATIO_TARGET },
    { workload: `${name}: time ÷ the ceiling (curl straight from the upstream, ${seconds(direct)})`, mirror: `${(s.rm / direct).toFixed(2)}×`, reference: `${(s.ref / direct).toFixed(2)}×`, ratio: '', target: `≤ ${COLD_CEILING_FACTOR}×`, met: s.rm / direct <= COLD_CEILING_FACTOR },
    { workload: `${name}: upstream GETs of the blob`, mirror: String(g.rm), reference: String(g.ref), ratio: '—', target: 'exactly 1', met: g.rm === 1 },
    { workload: `${name}: upstream requests, all`, mirror: String(t.rm.requests.length), reference: String(t.ref.requests.length), ratio: ratio(t.rm.requests.length, t.ref.requests.length), target: '', met: undefined },
    { workload: `${name}: upstream bytes`, mirror: megabytes(t.rm.bytes), reference: megabytes(t.ref.bytes), ratio: ratio(t.rm.bytes, t.ref.bytes), target: '', met: undefined }
  )
  for (const key of KEYS) bench.details.push(`workload 1, ${bench.mirrors[key].label}: upstream requests ${describeTraffic(t[key])}, ${megabytes(t[key].bytes)}`)
  await recordRss(bench, `after a cold ${megabytes(size)} blob`)
}

/** 2. Eight clients pulling the same uncached 200 MB blob at once. */
async function coldConcurrent (bench: Bench): Promise<void> {
  const wall: Partial<PerMirror<number>> = {}
  const traffic: Partial<PerMirror<UpstreamTraffic>> = {}
  const gets: Partial<PerMirror<number>> = {}
  let size = 0
  for (const key of KEYS) {
    const mirror = bench.mirrors[key]
    const repository = `bench/cold-eight-${key}`
    const blob = onlyLayer(image(bench, repository))
    size = blob.size
    log(`2. cold ${megabytes(blob.size)} blob, ${CONCURRENT_CLIENTS} clients at once: ${mirror.label}`)
    const mark = await bench.meter.mark()
    const started = process.hrtime.bigint()
    await Promise.all(Array.from({ length: CONCURRENT_CLIENTS }, async () => await pullBlob(blobUrl(mirror, repository, blob.digest), blob.size)))
    wall[key] = Number(process.hrtime.bigint() - started) / 1e9
    await bench.meter.settle()
    traffic[key] = await bench.meter.since(mark)
    gets[key] = blobGetsOf(traffic[key], blob.digest)
  }
  const w = required(wall)
  const t = required(traffic)
  const g = required(gets)
  bench.figures.coldConcurrent = w.rm
  bench.figures.coldConcurrentGets = g.rm
  const name = `2. same cold ${megabytes(size)} blob, ${CONCURRENT_CLIENTS} clients at once`
  bench.rows.push(
    { workload: `${name}: wall time`, mirror: seconds(w.rm), reference: seconds(w.ref), ratio: ratio(w.rm, w.ref), target: `≤ ${COLD_CONCURRENT_RATIO_TARGET}×`, met: w.rm / w.ref <= COLD_CONCURRENT_RATIO_TARGET },
    { workload: `${name}: upstream GETs of the blob`, mirror: String(g.rm), reference: String(g.ref), ratio: '—', target: 'exactly 1', met: g.rm === 1 },
    { workload: `${name}: upstream bytes`, mirror: megabytes(t.rm.bytes), reference: megabytes(t.ref.bytes), ratio: ratio(t.rm.bytes, t.ref.bytes), target: '', met: undefined }
  )
  for (const key of KEYS) bench.details.push(`workload 2, ${bench.mirrors[key].label}: upstream requests ${describeTraffic(t[key])}, ${megabytes(t[key].bytes)}`)
  await recordRss(bench, `after ${CONCURRENT_CLIENTS} clients on a cold ${megabytes(size)} blob`)
}

function checkWrk (what: string, result: WrkResult): WrkResult {
  if (result.errors > 0) throw new Error(`${what}: wrk saw ${result.errors} errors or non-2xx answers in ${result.requests} requests`)
  if (result.requests === 0) throw new Error(`${what}: wrk completed no request`)
  return result
}

/** 3. Eight connections fetching the cached 30 MB blob for 10 s; nginx with sendfile as the ceiling. */
async function warmThroughput (bench: Bench): Promise<void> {
  const img = image(bench, 'bench/warm')
  const blob = onlyLayer(img)
  const nginx = await NginxServer.start(join(bench.work, 'nginx'), layoutBlobDir(img))
  try {
    const targets: Array<{ name: string, url: string, key: Key | undefined }> = [
      ...KEYS.map(key => ({ name: bench.mirrors[key].label, url: blobUrl(bench.mirrors[key], img.repository, blob.digest), key })),
      { name: 'nginx', url: `${nginx.url}/${blob.digest.slice('sha256:'.length)}`, key: undefined }
    ]
    const runs = new Map<string, WrkResult[]>(targets.map(t => [t.name, []]))
    const mark = await bench.meter.mark()
    for (const target of targets) {
      checkWrk(`warm-up on ${target.name}`, await wrk({ url: target.url, connections: WARM_CONNECTIONS, seconds: WARMUP_SECONDS, workDir: bench.work }))
    }
    for (let round = 1; round <= WARM_ROUNDS; round++) {
      for (const target of targets) {
        log(`3. warm ${megabytes(blob.size)} blob, ${WARM_CONNECTIONS} connections, ${WARM_SECONDS} s, round ${round}: ${target.name}`)
        runs.get(target.name)?.push(checkWrk(`warm blob from ${target.name}`, await wrk({ url: target.url, connections: WARM_CONNECTIONS, seconds: WARM_SECONDS, workDir: bench.work })))
      }
    }
    const traffic = await bench.meter.since(mark)
    if (traffic.blobGets > 0) throw new Error(`the warm blob workload caused ${traffic.blobGets} upstream blob GETs: a mirror had not cached it`)
    const best = (name: string): WrkResult => {
      const list = runs.get(name) ?? []
      const top = [...list].sort((a, b) => b.bytesPerSecond - a.bytesPerSecond)[0]
      if (top === undefined) throw new Error(`no warm blob run for ${name}`)
      bench.details.push(`workload 3, ${name}: ${list.map(r => gigabytesPerSecond(r.bytesPerSecond)).join(', ')} (best counts); best run: ${top.requests} responses, p50 ${milliseconds(top.p50Ms)}, p99 ${milliseconds(top.p99Ms)}`)
      return top
    }
    const r: PerMirror<WrkResult> = { rm: best(bench.mirrors.rm.label), ref: best(bench.mirrors.ref.label) }
    bench.figures.warm = r.rm.bytesPerSecond
    const ceiling = best('nginx')
    const name = `3. warm ${megabytes(blob.size)} blob, ${WARM_CONNECTIONS} connections, ${WARM_SECONDS} s`
    const share = (x: WrkResult): string => `${Math.round(100 * x.bytesPerSecond / ceiling.bytesPerSecond)}%`
    bench.rows.push(
      { workload: `${name}: throughput`, mirror: gigabytesPerSecond(r.rm.bytesPerSecond), reference: gigabytesPerSecond(r.ref.bytesPerSecond), ratio: ratio(r.rm.bytesPerSecond, r.ref.bytesPerSecond), target: '≥ 1.0×', met: r.rm.bytesPerSecond >= r.ref.bytesPerSecond },
      { workload: `${name}: share of the ceiling (nginx sendfile, ${gigabytesPerSecond(ceiling.bytesPerSecond)})`, mirror: share(r.rm), reference: share(r.ref), ratio: '', target: '', met: undefined }
    )
  } finally {
    await nginx.stop()
  }
  await recordRss(bench, 'after the warm blob workload')
}

/** 4. Manifest by tag and by digest, 16 connections. */
async function manifests (bench: Bench): Promise<void> {
  const img = image(bench, 'bench/warm')
  for (const by of ['tag', 'digest'] as const) {
    const reference = by === 'tag' ? img.tag : img.manifestDigest
    const results: Partial<PerMirror<WrkResult>> = {}
    const traffic: Partial<PerMirror<UpstreamTraffic>> = {}
    for (const key of KEYS) {
      const mirror = bench.mirrors[key]
      const url = `${mirror.url}/v2/${img.repository}/manifests/${reference}`
      // The first request fills the cache; the measured ones are answered from it.
      const response = await fetch(url, { headers: { accept: ACCEPT } })
      await response.arrayBuffer()
      if (response.status !== 200 || response.headers.get('docker-content-digest') !== img.manifestDigest) {
        throw new Error(`GET ${url}: HTTP ${response.status}, digest ${String(response.headers.get('docker-content-digest'))}, expected ${img.manifestDigest}`)
      }
      log(`4. manifest by ${by}, ${MANIFEST_CONNECTIONS} connections, ${MANIFEST_SECONDS} s: ${mirror.label}`)
      const mark = await bench.meter.mark()
      checkWrk(`warm-up on ${mirror.label}`, await wrk({ url, connections: MANIFEST_CONNECTIONS, seconds: WARMUP_SECONDS, headers: { Accept: ACCEPT }, workDir: bench.work }))
      results[key] = checkWrk(`manifest by ${by} from ${mirror.label}`, await wrk({ url, connections: MANIFEST_CONNECTIONS, seconds: MANIFEST_SECONDS, headers: { Accept: ACCEPT }, workDir: bench.work }))
      await bench.meter.settle()
      traffic[key] = await bench.meter.since(mark)
    }
    const r = required(results)
    const t = required(traffic)
    const name = `4. manifest by ${by}, ${MANIFEST_CONNECTIONS} connections`
    const latency = (x: WrkResult): string => `${milliseconds(x.p50Ms)} / ${milliseconds(x.p99Ms)}`
    bench.rows.push(
      {
        workload: `${name}: requests/s`,
        mirror: perSecond(r.rm.requestsPerSecond),
        reference: perSecond(r.ref.requestsPerSecond),
        ratio: ratio(r.rm.requestsPerSecond, r.ref.requestsPerSecond),
        target: by === 'tag' ? '≥ 10×' : '',
        met: by === 'tag' ? r.rm.requestsPerSecond >= 10 * r.ref.requestsPerSecond : undefined
      },
      {
        workload: `${name}: latency p50 / p99`,
        mirror: latency(r.rm),
        reference: latency(r.ref),
        ratio: '',
        target: by === 'tag' ? 'p99 ≤ 20 ms' : '',
        met: by === 'tag' ? r.rm.p99Ms <= 20 : undefined
      }
    )
    for (const key of KEYS) {
      bench.details.push(`workload 4 by ${by}, ${bench.mirrors[key].label}: ${r[key].requests} responses in ${seconds(r[key].seconds)}; upstream requests during it: ${describeTraffic(t[key])}`)
    }
  }
  await recordRss(bench, 'after the manifest workload')
}

/** 5. A whole image pulled by skopeo, cold then warm. */
async function skopeoPulls (bench: Bench): Promise<void> {
  const cold: Partial<PerMirror<number>> = {}
  const warm: Partial<PerMirror<number>> = {}
  let sample: BenchImage | undefined
  for (const key of KEYS) {
    const mirror = bench.mirrors[key]
    const img = image(bench, `bench/app-${key}`)
    sample = img
    const reference = `${mirror.host}/${img.repository}:${img.tag}`
    for (const state of ['cold', 'warm'] as const) {
      log(`5. skopeo copy, ${state}: ${mirror.label}`)
      const dir = join(bench.work, `skopeo-${key}-${state}`)
      const mark = await bench.meter.mark()
      const elapsed = await timedSkopeoPull(bench.skopeo, reference, dir, img.manifestDigest)
      await removeTempDir(dir)
      await bench.meter.settle()
      const traffic = await bench.meter.since(mark)
      if (state === 'cold') cold[key] = elapsed
      else warm[key] = elapsed
      bench.details.push(`workload 5 ${state}, ${mirror.label}: upstream requests ${describeTraffic(traffic)}, ${megabytes(traffic.bytes)}`)
    }
  }
  if (sample === undefined) return
  const c = required(cold)
  const w = required(warm)
  const name = `5. skopeo copy, ${sample.layers.length}-layer ${megabytes(sample.totalBytes)} image`
  bench.rows.push(
    { workload: `${name}, cold`, mirror: seconds(c.rm), reference: seconds(c.ref), ratio: ratio(c.rm, c.ref), target: '', met: undefined },
    { workload: `${name}, warm`, mirror: seconds(w.rm), reference: seconds(w.ref), ratio: ratio(w.rm, w.ref), target: '', met: undefined }
  )
  await recordRss(bench, 'after the skopeo workload')
}

/** 7. 200 connections on a warm 1 MB blob: throughput, latency, and the peak RSS it costs. */
async function manyConnections (bench: Bench): Promise<void> {
  const img = image(bench, 'bench/small')
  const blob = onlyLayer(img)
  const results: Partial<PerMirror<WrkResult>> = {}
  const peaks: Partial<PerMirror<number>> = {}
  const mark = await bench.meter.mark()
  for (const key of KEYS) {
    const mirror = bench.mirrors[key]
    const url = blobUrl(mirror, img.repository, blob.digest)
    await pullBlob(url, blob.size) // cold: fills the cache
    await bench.meter.settle()
    const measuredFrom = await bench.meter.mark()
    checkWrk(`warm-up on ${mirror.label}`, await wrk({ url, connections: MANY_CONNECTIONS, seconds: WARMUP_SECONDS, workDir: bench.work }))
    await resetPeakRss(mirror.pid)
    log(`7. warm ${megabytes(blob.size)} blob, ${MANY_CONNECTIONS} connections, ${MANY_SECONDS} s: ${mirror.label}`)
    results[key] = checkWrk(`${MANY_CONNECTIONS} connections on ${mirror.label}`, await wrk({ url, connections: MANY_CONNECTIONS, seconds: MANY_SECONDS, workDir: bench.work }))
    peaks[key] = await peakRss(mirror.pid)
    const traffic = await bench.meter.since(measuredFrom)
    if (traffic.blobGets > 0) throw new Error(`workload 7 caused ${traffic.blobGets} upstream blob GETs on ${mirror.label}: it had not cached the blob`)
  }
  const r = required(results)
  const p = required(peaks)
  bench.details.push(`workload 7: upstream requests ${describeTraffic(await bench.meter.since(mark))} (the two cold fills)`)
  const name = `7. warm ${megabytes(blob.size)} blob, ${MANY_CONNECTIONS} connections`
  bench.rows.push(
    { workload: `${name}: throughput`, mirror: `${gigabytesPerSecond(r.rm.bytesPerSecond)}, ${perSecond(r.rm.requestsPerSecond)}`, reference: `${gigabytesPerSecond(r.ref.bytesPerSecond)}, ${perSecond(r.ref.requestsPerSecond)}`, ratio: ratio(r.rm.bytesPerSecond, r.ref.bytesPerSecond), target: '', met: undefined },
    { workload: `${name}: latency p50 / p99`, mirror: `${milliseconds(r.rm.p50Ms)} / ${milliseconds(r.rm.p99Ms)}`, reference: `${milliseconds(r.ref.p50Ms)} / ${milliseconds(r.ref.p99Ms)}`, ratio: '', target: '', met: undefined },
    { workload: `${name}: peak RSS during it`, mirror: megabytes(p.rm), reference: megabytes(p.ref), ratio: ratio(p.rm, p.ref), target: `≤ ${megabytes(MANY_RSS_LIMIT)}`, met: p.rm <= MANY_RSS_LIMIT }
  )
}

/** 8. 1,000 clients that stop reading the cached 30 MB blob: the memory they hold, and how others are served meanwhile. */
async function slowReaders (bench: Bench): Promise<void> {
  const img = image(bench, 'bench/warm')
  const blob = onlyLayer(img)
  const rss: Partial<PerMirror<number>> = {}
  const peaks: Partial<PerMirror<number>> = {}
  const others: Partial<PerMirror<WrkResult>> = {}
  const whole: Partial<PerMirror<number>> = {}
  for (const key of KEYS) {
    const mirror = bench.mirrors[key]
    const url = blobUrl(mirror, img.repository, blob.digest)
    await resetPeakRss(mirror.pid)
    log(`8. ${SLOW_READERS} slow readers of the cached ${megabytes(blob.size)} blob: ${mirror.label}`)
    const readers = await openSlowReaders(url, SLOW_READERS, mirror.pid)
    try {
      rss[key] = await currentRss(mirror.pid)
      const manifestUrl = `${mirror.url}/v2/${img.repository}/manifests/${img.manifestDigest}`
      others[key] = checkWrk(`manifests beside slow readers on ${mirror.label}`, await wrk({ url: manifestUrl, connections: 8, seconds: 5, headers: { Accept: ACCEPT }, workDir: bench.work }))
      whole[key] = (await pullBlob(url, blob.size)).seconds
      peaks[key] = await peakRss(mirror.pid)
    } finally {
      readers.close()
    }
    bench.details.push(`workload 8, ${mirror.label}: ${readers.answered} readers answered; manifest by digest meanwhile: ${others[key]?.requests ?? 0} responses`)
    await new Promise(resolve => setTimeout(resolve, 2000))
  }
  const r = required(rss)
  const p = required(peaks)
  const o = required(others)
  const w = required(whole)
  const name = `8. ${SLOW_READERS} slow readers of the cached ${megabytes(blob.size)} blob`
  bench.rows.push(
    { workload: `${name}: RSS with them held`, mirror: megabytes(r.rm), reference: megabytes(r.ref), ratio: ratio(r.rm, r.ref), target: `< ${megabytes(SLOW_READERS_RSS_LIMIT)}`, met: r.rm < SLOW_READERS_RSS_LIMIT },
    { workload: `${name}: peak RSS`, mirror: megabytes(p.rm), reference: megabytes(p.ref), ratio: ratio(p.rm, p.ref), target: '', met: undefined },
    { workload: `${name}: manifest by digest meanwhile, p50 / p99`, mirror: `${milliseconds(o.rm.p50Ms)} / ${milliseconds(o.rm.p99Ms)}`, reference: `${milliseconds(o.ref.p50Ms)} / ${milliseconds(o.ref.p99Ms)}`, ratio: '', target: '', met: undefined },
    { workload: `${name}: the whole blob meanwhile (curl)`, mirror: seconds(w.rm), reference: seconds(w.ref), ratio: ratio(w.rm, w.ref), target: '', met: undefined }
  )
}

/**
 * 9. A cold tag while 40 slow downloads run on the same upstream: a second pair of mirrors
 * behind a proxy that trickles bench/slow-* blobs, so the other workloads never see it.
 */
async function coldTagBesideSlowDownloads (bench: Bench, upstreamUrl: string, entryPoint: string | undefined): Promise<void> {
  const slow = await SlowUpstream.start(upstreamUrl, SLOW_RATE)
  const closers: Array<() => Promise<void>> = [async () => await slow.close()]
  try {
    const rmServer = await RegistryMirrorServer.start({ dir: join(bench.work, 'registry-mirror-slow'), upstreamUrl: slow.url, tagTtl: TAG_TTL, entryPoint })
    closers.push(async () => await rmServer.stop())
    const refServer = await ReferenceRegistry.start({ label: 'proxy-slow', proxyRemoteUrl: slow.url })
    closers.push(async () => await refServer.close())
    const urls: PerMirror<string> = { rm: rmServer.url, ref: refServer.url }
    const timings: Partial<PerMirror<number>> = {}
    for (const key of KEYS) {
      const layers = image(bench, `bench/slow-${key}`).layers
      const tagged = image(bench, `bench/tag-${key}`)
      const downloads = new AbortController()
      const started = layers.map(async layer => {
        const res = await fetch(`${urls[key]}/v2/bench/slow-${key}/blobs/${layer.digest}`, { signal: downloads.signal })
        await res.arrayBuffer()
      })
      for (const s of started) s.catch(() => {})
      try {
        // Until as many as the server lets run at once are under way (registry-mirror: its
        // maxConcurrentDownloads, the rest queued) and none more start for a second.
        let seen = -1
        for (let i = 0; i < 200 && (slow.slowInFlight === 0 || slow.slowInFlight !== seen); i++) {
          seen = slow.slowInFlight
          await new Promise(resolve => setTimeout(resolve, 1000))
        }
        if (slow.slowInFlight === 0) throw new Error(`workload 9: no slow download got under way through ${bench.mirrors[key].label}`)
        bench.details.push(`workload 9, ${bench.mirrors[key].label}: ${SLOW_DOWNLOADS} slow downloads asked for, ${slow.slowInFlight} under way at the upstream when the cold tag was asked`)
        log(`9. cold tag beside ${SLOW_DOWNLOADS} slow downloads: ${bench.mirrors[key].label}`)
        const begun = process.hrtime.bigint()
        const res = await fetch(`${urls[key]}/v2/${tagged.repository}/manifests/${tagged.tag}`, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(60_000) })
        await res.arrayBuffer()
        timings[key] = Number(process.hrtime.bigint() - begun) / 1e9
        if (res.status !== 200 || res.headers.get('docker-content-digest') !== tagged.manifestDigest) throw new Error(`workload 9: the cold tag through ${bench.mirrors[key].label} answered HTTP ${res.status}`)
      } finally {
        downloads.abort()
      }
    }
    const t = required(timings)
    bench.rows.push({ workload: `9. a cold tag while ${SLOW_DOWNLOADS} slow downloads run on its upstream`, mirror: seconds(t.rm), reference: seconds(t.ref), ratio: ratio(t.rm, t.ref), target: `≤ ${COLD_TAG_LIMIT_SECONDS} s`, met: t.rm <= COLD_TAG_LIMIT_SECONDS })
  } finally {
    for (const close of closers.reverse()) await close().catch((err: unknown) => log(`cleanup: ${String(err)}`))
  }
}

/** 6. Peak RSS of each server over the run, and whether a bigger blob raised it. */
/** Workload 10 (bench/big-cache.ts): opening a cache of BIG_CACHE_BLOBS blobs. */
async function manyCachedBlobs (bench: Bench, upstreamUrl: string, entryPoint: string | undefined): Promise<void> {
  const reference = await ReferenceRegistry.start({ label: 'big-cache', proxyRemoteUrl: upstreamUrl })
  try {
    const r = await bigCache({
      count: BIG_CACHE_BLOBS,
      mirror: { dir: join(bench.work, 'big-cache'), upstreamUrl, tagTtl: TAG_TTL, entryPoint },
      reference,
      entryPoint: entryPoint ?? MirrorProcess.entryPoint
    })
    bench.details.push(`workload 10: ${r.blobs} blobs written into both layouts in ${seconds(r.fillSeconds)}`)
    const name = `10. a cache of ${r.blobs.toLocaleString('en-US')} blobs`
    bench.rows.push(
      { workload: `${name}: serve ready (the reference: its start)`, mirror: seconds(r.serveSeconds), reference: seconds(r.referenceStartSeconds), ratio: ratio(r.serveSeconds, r.referenceStartSeconds), target: `≤ ${BIG_CACHE_LIMIT_SECONDS} s`, met: r.serveSeconds <= BIG_CACHE_LIMIT_SECONDS },
      { workload: `${name}: stats answered`, mirror: seconds(r.statsSeconds), reference: '— (no such command)', ratio: '', target: `≤ ${BIG_CACHE_LIMIT_SECONDS} s`, met: r.statsSeconds <= BIG_CACHE_LIMIT_SECONDS },
      { workload: `${name} in a bucket (radosgw): serve ready`, mirror: seconds(r.bucket.serveSeconds), reference: '—', ratio: '', target: `≤ ${BIG_CACHE_LIMIT_SECONDS} s`, met: r.bucket.serveSeconds <= BIG_CACHE_LIMIT_SECONDS },
      { workload: `${name} in a bucket (radosgw): stats answered`, mirror: seconds(r.bucket.statsSeconds), reference: '—', ratio: '', target: `≤ ${BIG_CACHE_LIMIT_SECONDS} s`, met: r.bucket.statsSeconds <= BIG_CACHE_LIMIT_SECONDS }
    )
  } finally {
    await reference.close()
  }
}

/** Workload 11 (bench/fleet.ts): a fleet of three on one bucket, against three reference proxies on another. */
async function fleetWorkload (bench: Bench, upstream: ReferenceRegistry, entryPoint: string | undefined): Promise<number> {
  const r = await fleetOnBucket({ upstream, meter: bench.meter, skopeo: bench.skopeo, workDir: bench.work, seed: freshSeed(), entryPoint, log })
  bench.details.push(...r.details)
  const { rm, ref } = r.sides
  const perBlob = (side: FleetSideResult): number => side.upstreamBlobGets / side.distinctBlobs
  const gets = (side: FleetSideResult): string => `${perBlob(side).toFixed(2)} (${side.upstreamBlobGets} GETs, at most ${side.mostGetsOfOneBlob} of one)`
  const most = (peaks: readonly number[]): number => Math.max(0, ...peaks)
  const name = '11. fleet of 3 behind nginx, one RGW bucket'
  const pull = `${name}, 3 skopeo clients at once, 3 images sharing layers (${rm.distinctBlobs} blobs, ${megabytes(rm.distinctBytes)})`
  const read = `${name}, cached ${megabytes(r.warmBlobBytes)} blob, 8 reads at once`
  bench.rows.push(
    { workload: `${pull}: upstream GETs per distinct blob`, mirror: gets(rm), reference: gets(ref), ratio: ratio(perBlob(rm), perBlob(ref)), target: 'exactly 1', met: rm.upstreamBlobGets === rm.distinctBlobs && rm.mostGetsOfOneBlob === 1 },
    { workload: `${pull}: wall time`, mirror: seconds(rm.pullSeconds), reference: seconds(ref.pullSeconds), ratio: ratio(rm.pullSeconds, ref.pullSeconds), target: '', met: undefined },
    { workload: `${read}, streamed by the nodes (redirect off): throughput`, mirror: gigabytesPerSecond(rm.streamed.bytesPerSecond), reference: gigabytesPerSecond(ref.streamed.bytesPerSecond), ratio: ratio(rm.streamed.bytesPerSecond, ref.streamed.bytesPerSecond), target: '', met: undefined },
    { workload: `${read}, 307 to a presigned URL (redirect on): throughput`, mirror: gigabytesPerSecond(rm.redirected.bytesPerSecond), reference: gigabytesPerSecond(ref.redirected.bytesPerSecond), ratio: ratio(rm.redirected.bytesPerSecond, ref.redirected.bytesPerSecond), target: '', met: undefined },
    { workload: `${name}: peak RSS per node, the most of 3 (pull and streamed reads)`, mirror: megabytes(most(rm.peakRss)), reference: megabytes(most(ref.peakRss)), ratio: ratio(most(rm.peakRss), most(ref.peakRss)), target: '', met: undefined }
  )
  return r.gatewayCpuTicks
}

/**
 * 12. The other way sites mirror today: nginx's proxy_cache in front of the same upstream, keyed by
 * digest, with proxy_cache_lock (bench/servers.ts NginxCacheServer). The same cold and warm blob
 * workloads as 1-3 on blobs of its own, set beside registry-mirror's figures from them.
 */
const STATUS_VIEWERS = 200
/** p99 of manifests by digest with the viewers, at most this many times the p99 without (on a quiet machine the two swing by about that much alone). */
const STATUS_P99_LIMIT = 1.5

/**
 * 13. 200 people with the status page open, each loading it every second: manifests by digest
 * measured without them and with them (registry-mirror only: the reference has no such page).
 */
async function statusPageViewers (bench: Bench): Promise<void> {
  const img = image(bench, 'bench/warm')
  const mirror = bench.mirrors.rm
  const url = `${mirror.url}/v2/${img.repository}/manifests/${img.manifestDigest}`
  const measure = async (what: string): Promise<WrkResult> => {
    checkWrk(`warm-up (${what})`, await wrk({ url, connections: MANIFEST_CONNECTIONS, seconds: WARMUP_SECONDS, headers: { Accept: ACCEPT }, workDir: bench.work }))
    return checkWrk(`manifest by digest ${what}`, await wrk({ url, connections: MANIFEST_CONNECTIONS, seconds: MANIFEST_SECONDS, headers: { Accept: ACCEPT }, workDir: bench.work }))
  }
  log(`13. manifest by digest, ${MANIFEST_CONNECTIONS} connections, ${MANIFEST_SECONDS} s, without status-page viewers: ${mirror.label}`)
  const without = await measure('without viewers')
  log(`13. the same with ${STATUS_VIEWERS} status-page viewers, each loading it every second`)
  const viewers = startStatusViewers(`${mirror.url}/status`, STATUS_VIEWERS)
  let beside: WrkResult | undefined
  try {
    beside = await measure('beside the viewers')
  } finally {
    const seen = await viewers.stop()
    bench.details.push(`workload 13: ${seen.pages} status pages served (${megabytes(seen.bytes)} of HTML), ${seen.errors} failed, while wrk made ${beside?.requests ?? 0} manifest requests`)
  }
  const name = `13. manifest by digest, ${MANIFEST_CONNECTIONS} connections, beside ${STATUS_VIEWERS} status-page viewers (reference column: registry-mirror without them)`
  bench.rows.push(
    { workload: `${name}: requests/s`, mirror: perSecond(beside.requestsPerSecond), reference: perSecond(without.requestsPerSecond), ratio: ratio(beside.requestsPerSecond, without.requestsPerSecond), target: '', met: undefined },
    {
      workload: `${name}: latency p50 / p99`,
      mirror: `${milliseconds(beside.p50Ms)} / ${milliseconds(beside.p99Ms)}`,
      reference: `${milliseconds(without.p50Ms)} / ${milliseconds(without.p99Ms)}`,
      ratio: ratio(beside.p99Ms, without.p99Ms),
      target: `p99 ≤ ${STATUS_P99_LIMIT}×`,
      met: beside.p99Ms <= STATUS_P99_LIMIT * without.p99Ms
    }
  )
}

async function nginxCacheWorkload (bench: Bench): Promise<void> {
  const nginx = await NginxCacheServer.start(join(bench.work, 'nginx-cache'), bench.upstreamUrl)
  const url = (repository: string, digest: string): string => `${nginx.url}/v2/${repository}/blobs/${digest}`
  const label = '12. nginx proxy_cache (reference column: nginx)'
  try {
    const one = onlyLayer(image(bench, 'bench/cold-one-nginx'))
    log(`12. cold ${megabytes(one.size)} blob, one client: nginx proxy_cache`)
    let mark = await bench.meter.mark()
    const cold = (await pullBlob(url('bench/cold-one-nginx', one.digest), one.size)).seconds
    await bench.meter.settle()
    const coldGets = blobGetsOf(await bench.meter.since(mark), one.digest)

    const eight = onlyLayer(image(bench, 'bench/cold-eight-nginx'))
    log(`12. cold ${megabytes(eight.size)} blob, ${CONCURRENT_CLIENTS} clients at once: nginx proxy_cache`)
    mark = await bench.meter.mark()
    const started = process.hrtime.bigint()
    await Promise.all(Array.from({ length: CONCURRENT_CLIENTS }, async () => await pullBlob(url('bench/cold-eight-nginx', eight.digest), eight.size)))
    const concurrent = Number(process.hrtime.bigint() - started) / 1e9
    await bench.meter.settle()
    const concurrentGets = blobGetsOf(await bench.meter.since(mark), eight.digest)

    const warmImage = image(bench, 'bench/warm')
    const warm = onlyLayer(warmImage)
    const warmUrl = url(warmImage.repository, warm.digest)
    await pullBlob(warmUrl, warm.size) // cached by nginx now
    checkWrk('warm-up on nginx proxy_cache', await wrk({ url: warmUrl, connections: WARM_CONNECTIONS, seconds: WARMUP_SECONDS, workDir: bench.work }))
    const runs: WrkResult[] = []
    for (let round = 1; round <= WARM_ROUNDS; round++) {
      log(`12. warm ${megabytes(warm.size)} blob, ${WARM_CONNECTIONS} connections, ${WARM_SECONDS} s, round ${round}: nginx proxy_cache`)
      runs.push(checkWrk('warm blob from nginx proxy_cache', await wrk({ url: warmUrl, connections: WARM_CONNECTIONS, seconds: WARM_SECONDS, workDir: bench.work })))
    }
    const best = Math.max(...runs.map(r => r.bytesPerSecond))
    const f = bench.figures
    const beside = (mine: number | undefined, show: (n: number) => string): string => mine === undefined ? '— (its workload not run)' : show(mine)
    bench.rows.push(
      { workload: `${label}: cold ${megabytes(one.size)} blob, 1 client: time`, mirror: beside(f.cold, seconds), reference: seconds(cold), ratio: f.cold === undefined ? '' : ratio(f.cold, cold), target: '', met: undefined },
      { workload: `${label}: cold ${megabytes(one.size)} blob, 1 client: upstream GETs of the blob`, mirror: beside(f.coldGets, String), reference: String(coldGets), ratio: '—', target: '', met: undefined },
      { workload: `${label}: same cold blob, ${CONCURRENT_CLIENTS} clients at once: wall time`, mirror: beside(f.coldConcurrent, seconds), reference: seconds(concurrent), ratio: f.coldConcurrent === undefined ? '' : ratio(f.coldConcurrent, concurrent), target: '', met: undefined },
      { workload: `${label}: same cold blob, ${CONCURRENT_CLIENTS} clients at once: upstream GETs of the blob`, mirror: beside(f.coldConcurrentGets, String), reference: String(concurrentGets), ratio: '—', target: '', met: undefined },
      { workload: `${label}: warm ${megabytes(warm.size)} blob, ${WARM_CONNECTIONS} connections: throughput`, mirror: beside(f.warm, gigabytesPerSecond), reference: gigabytesPerSecond(best), ratio: f.warm === undefined ? '' : ratio(f.warm, best), target: '', met: undefined }
    )
    bench.details.push(`workload 12, nginx proxy_cache: warm runs ${runs.map(r => gigabytesPerSecond(r.bytesPerSecond)).join(', ')} (best counts); peak RSS of nginx and its workers ${megabytes(await peakRss(nginx.pid))}`)
  } finally {
    await nginx.stop()
  }
}

function rssRows (bench: Bench): void {
  const last = bench.rss[bench.rss.length - 1]
  if (last === undefined) return
  const start = bench.rss.find(s => s.stage === 'after start')
  if (start !== undefined) {
    bench.rows.push({
      workload: '6. RSS after start (VmHWM)',
      mirror: megabytes(start.bytes.rm),
      reference: megabytes(start.bytes.ref),
      ratio: ratio(start.bytes.rm, start.bytes.ref),
      target: `≤ ${megabytes(START_RSS_LIMIT)}`,
      met: start.bytes.rm <= START_RSS_LIMIT
    })
  }
  bench.rows.push({
    workload: '6. peak RSS over the run (VmHWM)',
    mirror: megabytes(last.bytes.rm),
    reference: megabytes(last.bytes.ref),
    ratio: ratio(last.bytes.rm, last.bytes.ref),
    target: `≤ ${megabytes(RSS_LIMIT)}`,
    met: last.bytes.rm <= RSS_LIMIT
  })
  const small = bench.rss.find(s => s.stage === `after a cold ${megabytes(WARM_BLOB)} blob`)
  const big = bench.rss.find(s => s.stage === `after a cold ${megabytes(COLD_BLOB)} blob`)
  if (small !== undefined && big !== undefined) {
    const growth = (key: Key): number => big.bytes[key] - small.bytes[key]
    bench.rows.push({
      workload: `6. peak RSS growth, cold ${megabytes(WARM_BLOB)} → cold ${megabytes(COLD_BLOB)} blob`,
      mirror: `+${megabytes(growth('rm'))}`,
      reference: `+${megabytes(growth('ref'))}`,
      ratio: '',
      target: `≤ +${megabytes(RSS_GROWTH_LIMIT)}`,
      met: growth('rm') <= RSS_GROWTH_LIMIT
    })
  }
}

function required<T> (partial: Partial<PerMirror<T>>): PerMirror<T> {
  const { rm, ref } = partial
  if (rm === undefined || ref === undefined) throw new Error('a workload did not measure both mirrors')
  return { rm, ref }
}

const WORKLOADS = ['1', '2', '3', '4', '5', '7', '8', '9', '10', '11', '12', '13'] as const
type Workload = typeof WORKLOADS[number]

function imagePlans (selected: ReadonlySet<Workload>): ImagePlan[] {
  const plans: ImagePlan[] = [{ repository: 'bench/warm', layerSizes: [WARM_BLOB], keepLayout: true }]
  for (const key of KEYS) {
    if (selected.has('1')) plans.push({ repository: `bench/cold-one-${key}`, layerSizes: [COLD_BLOB] })
    if (selected.has('2')) plans.push({ repository: `bench/cold-eight-${key}`, layerSizes: [COLD_BLOB] })
    if (selected.has('5')) plans.push({ repository: `bench/app-${key}`, layerSizes: APP_LAYERS })
  }
  if (selected.has('12')) {
    plans.push({ repository: 'bench/cold-one-nginx', layerSizes: [COLD_BLOB] })
    plans.push({ repository: 'bench/cold-eight-nginx', layerSizes: [COLD_BLOB] })
  }
  if (selected.has('7')) plans.push({ repository: 'bench/small', layerSizes: [SMALL_BLOB] })
  if (selected.has('9')) {
    for (const key of KEYS) {
      plans.push({ repository: `bench/slow-${key}`, layerSizes: Array.from({ length: SLOW_DOWNLOADS }, () => SLOW_LAYER) })
      plans.push({ repository: `bench/tag-${key}`, layerSizes: [100 * 1000] })
    }
  }
  return plans
}

async function main (): Promise<number> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      'cpu-prof': { type: 'boolean' },
      'no-write': { type: 'boolean' },
      mirror: { type: 'string' }
    }
  })
  const selected = new Set<Workload>(WORKLOADS)
  if (values.only !== undefined) {
    selected.clear()
    for (const item of values.only.split(',')) {
      const w = WORKLOADS.find(x => x === item.trim())
      if (w === undefined) throw new Error(`--only takes workload numbers ${WORKLOADS.join(', ')} separated by commas, got "${values.only}"`)
      selected.add(w)
    }
  }
  const profiling = values['cpu-prof'] === true
  const entryPoint = values.mirror === undefined ? undefined : resolve(values.mirror)
  const complete = selected.size === WORKLOADS.length && !profiling && entryPoint === undefined
  const write = complete && values['no-write'] !== true

  const missing = missingTools()
  if (missing.length > 0) {
    process.stderr.write(`npm run bench needs these programs, which are not on the PATH:\n${missing.join('\n')}\n`)
    return 1
  }
  try {
    await access(entryPoint ?? MirrorProcess.entryPoint)
  } catch {
    process.stderr.write(`${entryPoint ?? MirrorProcess.entryPoint} does not exist: build first (npm run build; npm run bench does both)\n`)
    return 1
  }

  const env = describeEnvironment(ROOT)
  const idleBefore = await cpuSample()
  await new Promise(resolve => setTimeout(resolve, 2000))
  const busyAtStart = foreignShare(idleBefore, await cpuSample())
  if (busyAtStart > FOREIGN_CPU_LIMIT) {
    log(`WARNING: before starting, other processes were using ${Math.round(100 * busyAtStart)}% of this machine's CPU; the results will be noisy (see the per-workload figures at the end)`)
  }
  const work = await makeTempDir('bench')
  const profileDir = join(ROOT, 'bench', 'tmp', `profile-${Date.now()}`)
  const closers: Array<() => Promise<void>> = [async () => await removeTempDir(work)]
  const closeAll = async (): Promise<void> => {
    for (const close of closers.splice(0).reverse()) await close().catch((err: unknown) => log(`cleanup: ${String(err)}`))
  }
  try {
    const started = Date.now()
    const upstream = await ReferenceRegistry.start({ label: 'upstream' })
    closers.push(async () => await upstream.close())
    const meter = new UpstreamMeter(upstream, await findProcess(['docker-registry', 'serve', upstream.configPath]))
    const skopeo = new Skopeo(work)
    const plans = imagePlans(selected)
    const totalBytes = plans.reduce((sum, p) => sum + p.layerSizes.reduce((a, b) => a + b, 0), 0)
    log(`generating and pushing ${plans.length} images (${megabytes(totalBytes)}) to the upstream at ${upstream.url}`)
    const images = await pushImages(plans, { upstream, skopeo, workDir: work, seed: freshSeed() })
    log(`images ready after ${seconds((Date.now() - started) / 1000)}`)

    if (profiling) await mkdir(profileDir, { recursive: true })
    const rmServer = await RegistryMirrorServer.start({ dir: join(work, 'registry-mirror'), upstreamUrl: upstream.url, tagTtl: TAG_TTL, cpuProfDir: profiling ? profileDir : undefined, entryPoint })
    closers.push(async () => await rmServer.stop())
    const proxy = await ReferenceRegistry.start({ label: 'proxy', proxyRemoteUrl: upstream.url })
    closers.push(async () => await proxy.close())
    const mirrors: PerMirror<MirrorUnderTest> = {
      rm: { key: 'rm', label: 'registry-mirror', url: rmServer.url, host: rmServer.host, pid: rmServer.pid },
      ref: { key: 'ref', label: 'reference', url: proxy.url, host: proxy.host, pid: await findProcess(['docker-registry', 'serve', proxy.configPath]) }
    }
    log(`registry-mirror at ${mirrors.rm.url} (pid ${mirrors.rm.pid}), reference proxy at ${mirrors.ref.url} (pid ${mirrors.ref.pid})`)
    const bench: Bench = { work, upstreamUrl: upstream.url, figures: {}, mirrors, meter, skopeo, images, rows: [], details: [], rss: [], foreign: [] }
    await recordRss(bench, 'after start')

    // A workload may return the CPU ticks its daemons outside this process's tree spent (radosgw and its cluster).
    const measured = async (workload: string, fn: (bench: Bench) => Promise<number | void>): Promise<void> => {
      const before = await cpuSample()
      const elsewhere = await fn(bench)
      const share = foreignShare(before, await cpuSample(), typeof elsewhere === 'number' ? elsewhere : 0)
      bench.foreign.push({ workload, share })
      if (share > FOREIGN_CPU_LIMIT) log(`WARNING: other processes took ${Math.round(100 * share)}% of the machine's CPU during workload ${workload}: its numbers are disturbed`)
    }
    try {
      await primeWarmBlob(bench)
      if (selected.has('1')) await measured('1', coldSingle)
      if (selected.has('2')) await measured('2', coldConcurrent)
      if (selected.has('3')) await measured('3', warmThroughput)
      if (selected.has('4')) await measured('4', manifests)
      if (selected.has('5')) await measured('5', skopeoPulls)
      // Workload 6 is the peak over 1-5; the flood workloads after it reset the peak and measure their own.
      await recordRss(bench, 'after workloads 1-5')
      rssRows(bench)
      if (selected.has('7')) await measured('7', manyConnections)
      if (selected.has('8')) await measured('8', slowReaders)
      if (selected.has('9')) await measured('9', async b => await coldTagBesideSlowDownloads(b, upstream.url, entryPoint))
      if (selected.has('10')) await measured('10', async b => await manyCachedBlobs(b, upstream.url, entryPoint))
      if (selected.has('11')) await measured('11', async b => await fleetWorkload(b, upstream, entryPoint))
      if (selected.has('12')) await measured('12', nginxCacheWorkload)
      if (selected.has('13')) await measured('13', statusPageViewers)
    } catch (err) {
      if (err instanceof Error) err.message += `\n${rmServer.tail()}\n${proxy.tail()}`
      throw err
    }

    const table = renderTable(bench.rows)
    const quiet = `CPU taken by other processes: ${Math.round(100 * busyAtStart)}% before the start; ${bench.foreign.map(f => `workload ${f.workload}: ${Math.round(100 * f.share)}%`).join(', ')}` +
      (bench.foreign.some(f => f.share > FOREIGN_CPU_LIMIT) ? ` (above ${Math.round(100 * FOREIGN_CPU_LIMIT)}%: those numbers are disturbed)` : ' (a quiet machine)')
    const rss = bench.rss.map(s => `${s.stage}: registry-mirror ${megabytes(s.bytes.rm)}, reference ${megabytes(s.bytes.ref)}`)
    process.stdout.write(`\n${table}\n\n${renderEnvironment(env)}\n- ${quiet}\n`)
    log(`finished in ${seconds((Date.now() - started) / 1000)}`)
    if (write) {
      await writeFile(join(ROOT, 'bench', 'RESULTS.md'), resultsMarkdown(table, env, quiet, bench.details, rss))
      log('wrote bench/RESULTS.md')
    } else {
      log('bench/RESULTS.md left as it was (only a complete run of this build, without --cpu-prof or --no-write, writes it)')
    }
    if (profiling) {
      await rmServer.stop() // the profile is written as the process exits
      const profiles = (await readdir(profileDir)).filter(f => f.endsWith('.cpuprofile'))
      for (const file of profiles) log(`cpu profile: ${join(profileDir, file)} (summary: node dist/bench/profile-top.js FILE)`)
    }
    return 0
  } finally {
    await closeAll()
  }
}

function resultsMarkdown (table: string, env: ReturnType<typeof describeEnvironment>, quiet: string, details: readonly string[], rss: readonly string[]): string {
  return [
    '# Benchmark results',
    '',
    'Written by `npm run bench` (bench/run.ts; what each workload does: bench/README.md).',
    'registry-mirror and distribution\'s registry in proxy mode ("reference") in front of the same upstream',
    '(a hosted distribution registry), on loopback, in one run, with the same clients. Ratio = registry-mirror ÷ reference.',
    `Load generator: wrk, ${WRK_THREADS} threads, after a ${WARMUP_SECONDS} s unmeasured warm-up; the warm blob is measured ${WARM_ROUNDS} times per server, interleaved, best run counted.`,
    'Cold pulls: curl. Upstream requests and bytes are counted in the upstream\'s access log.',
    '',
    table,
    '',
    renderEnvironment(env),
    `- ${quiet}`,
    '',
    '## Details',
    '',
    ...details.map(line => `- ${line}`),
    '',
    '### Peak RSS (VmHWM) after each stage',
    '',
    ...rss.map(line => `- ${line}`),
    ''
  ].join('\n')
}

main().then(code => { process.exitCode = code }, (err: unknown) => {
  process.stderr.write(`npm run bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exitCode = 1
})
