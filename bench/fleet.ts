// Workload 11 (issue 17): a fleet on a shared bucket. Three registry-mirror
// nodes with storage.s3 on one radosgw bucket (harness/ceph-rgw.ts), behind
// the shipped deploy/nginx/registry-mirror.conf (harness/fleet.ts), beside
// three reference registries in proxy mode with distribution's s3 driver on
// another bucket of the same gateway, behind the same config. Each side
// pulls images of its own (three sharing layers, one of them for two
// platforms), so neither profits from the other's fetch, and runs alone
// while it is measured. Per side:
//
// - three skopeo clients copying the three images at once through the
//   balancer: the wall time, and the upstream GETs per distinct blob,
//   counted in the upstream's access log once it has gone quiet;
// - a cached blob of a few MiB read through the balancer, PARALLEL at a time
//   by curl, streamed by the nodes from the bucket (redirect off), then by a
//   second trio on the same bucket that answers with a 307 to a presigned URL
//   curl follows to the gateway (redirect on): bytes per second;
// - each node's peak RSS (VmHWM) over the pull and the streamed reads.
//
// The gateway keeps its objects in the osd's memory: the images come to a few
// tens of MiB for both sides.

import { join } from 'node:path'
import { run } from '../harness/process.js'
import { CephRgw } from '../harness/ceph-rgw.js'
import { Fleet, startBalancer, type Balancer } from '../harness/fleet.js'
import { writeOciLayout, amd64, arm64 } from '../harness/oci-layout.js'
import { ReferenceRegistry, type ReferenceS3 } from '../harness/reference-registry.js'
import { getManifest } from '../harness/registry-api.js'
import type { Skopeo } from '../harness/skopeo.js'
import { removeTempDir } from '../harness/temp.js'
import { isBlobGet } from '../harness/access-log.js'
import { timedSkopeoPull } from './clients.js'
import { cpuTicks, peakRss } from './proc.js'
import { findProcess } from './servers.js'
import type { UpstreamMeter } from './upstream-meter.js'

const KiB = 1024
const MiB = 1024 * KiB
const NODES = 3
const CLIENTS = 3
/** Reads of the warm blob at once, and in all, per measurement (after as many unmeasured). */
const PARALLEL = 8
const READS = 48
const WARMUP_READS = 8

/** From one seed, layer i of one size is one blob in every image: all three share the first, alpha and beta the second. */
const PLANS = [
  { name: 'alpha', platforms: [amd64], layerSizes: [6 * MiB, 2 * MiB] },
  { name: 'beta', platforms: [amd64, arm64], layerSizes: [6 * MiB, 2 * MiB, 512 * KiB] },
  { name: 'gamma', platforms: [amd64], layerSizes: [6 * MiB, 1 * MiB] }
] as const

export type Side = 'rm' | 'ref'

export interface FleetImage {
  readonly repository: string
  readonly digest: string
  /** Configs and layers. */
  readonly blobs: readonly string[]
}

export interface Throughput {
  readonly bytesPerSecond: number
  readonly seconds: number
  readonly reads: number
  /** Redirects curl followed, in all. */
  readonly redirects: number
}

export interface FleetSideResult {
  readonly distinctBlobs: number
  readonly distinctBytes: number
  readonly upstreamBlobGets: number
  /** The most GETs one blob took. */
  readonly mostGetsOfOneBlob: number
  readonly pullSeconds: number
  readonly streamed: Throughput
  readonly redirected: Throughput
  /** VmHWM of each node of the streaming trio, over the pull and the streamed reads. */
  readonly peakRss: readonly number[]
  /** VmHWM of each node of the redirecting trio, over the redirected reads. */
  readonly redirectingPeakRss: readonly number[]
}

export interface FleetBenchResult {
  readonly sides: Readonly<Record<Side, FleetSideResult>>
  /** The blob read in the throughput measurements. */
  readonly warmBlobBytes: number
  /** CPU ticks the gateway's cluster spent over its whole life (it daemonizes, out of the bench's process tree). */
  readonly gatewayCpuTicks: number
  readonly details: readonly string[]
}

export interface FleetBenchOptions {
  readonly upstream: ReferenceRegistry
  readonly meter: UpstreamMeter
  readonly skopeo: Skopeo
  readonly workDir: string
  readonly seed: string
  /** registry-mirror's entry point (another build's, with --mirror); default this checkout's. */
  readonly entryPoint?: string | undefined
  readonly log: (line: string) => void
}

/** A fleet under test: where clients go, and the pids whose peak RSS counts. */
interface RunningFleet {
  readonly url: string
  readonly host: string
  readonly pids: readonly number[]
  close: () => Promise<void>
}

async function pushSide (side: Side, options: FleetBenchOptions): Promise<{ images: FleetImage[], sizes: Map<string, number> }> {
  const images: FleetImage[] = []
  const sizes = new Map<string, number>()
  for (const plan of PLANS) {
    const repository = `fleet-${side}/${plan.name}`
    const dir = join(options.workDir, `fleet-${side}-${plan.name}`)
    const layout = await writeOciLayout(dir, { tag: 'v1', seed: `${options.seed}/fleet-${side}`, platforms: plan.platforms, layerSizes: plan.layerSizes })
    await options.skopeo.push(dir, 'v1', `${options.upstream.host}/${repository}:v1`)
    await removeTempDir(dir)
    for (const image of layout.images) {
      sizes.set(image.config.digest, image.config.size)
      for (const layer of image.layers) sizes.set(layer.digest, layer.size)
    }
    const top = await getManifest(options.upstream.url, repository, 'v1')
    images.push({ repository, digest: top.digest, blobs: layout.images.flatMap(image => [image.config.digest, ...image.layers.map(layer => layer.digest)]) })
  }
  return { images, sizes }
}

/** curl reads url `reads` times, PARALLEL at once, following redirects; every read must be 200 with the whole blob. */
async function readLoop (url: string, size: number, reads: number): Promise<Throughput> {
  const args = ['-sS', '-L', '--parallel', '--parallel-max', String(PARALLEL), '-w', '%{http_code} %{size_download} %{num_redirects}\\n']
  for (let i = 0; i < reads; i++) args.push('-o', '/dev/null', url)
  const started = process.hrtime.bigint()
  const { stdout } = await run('curl', args, { timeoutMs: 300_000 })
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const lines = stdout.split('\n').filter(line => line !== '')
  const bad = lines.filter(line => line.split(' ')[0] !== '200' || Number(line.split(' ')[1]) !== size)
  if (lines.length !== reads || bad.length > 0) throw new Error(`curl ${url}: ${lines.length} of ${reads} reads, ${bad.length} not 200 with ${size} bytes: ${bad.slice(0, 3).join('; ')}`)
  const redirects = lines.reduce((sum, line) => sum + Number(line.split(' ')[2] ?? 0), 0)
  return { bytesPerSecond: size * reads / seconds, seconds, reads, redirects }
}

async function startRegistryMirrors (rgw: CephRgw, bucket: string, upstreamUrl: string, redirect: boolean, entryPoint: string | undefined): Promise<RunningFleet> {
  const fleet = await Fleet.start({
    balancer: 'nginx',
    nodes: NODES,
    upstreams: [{ name: 'docker.io', url: upstreamUrl, default: true }],
    tagTtl: '1h',
    s3: { endpoint: rgw.endpoint, bucket, region: rgw.region, forcePathStyle: true, redirect, credentials: rgw.credentials },
    // As `npm start` and the image run it (README, Memory).
    env: { MALLOC_MMAP_THRESHOLD_: '131072' },
    entryPoint
  })
  const pids = fleet.nodes.map(node => node.mirror.pid).filter((pid): pid is number => pid !== undefined)
  return { url: fleet.url, host: fleet.host, pids, close: async () => await fleet.close() }
}

async function startReferences (rgw: CephRgw, bucket: string, upstreamUrl: string, redirect: boolean, trio: string): Promise<RunningFleet> {
  const s3: ReferenceS3 = { endpoint: rgw.endpoint, bucket, region: rgw.region, accessKeyId: rgw.accessKeyId, secretAccessKey: rgw.secretAccessKey, rootDirectory: '/reference', redirect }
  const registries: ReferenceRegistry[] = []
  let balancer: Balancer | undefined
  const close = async (): Promise<void> => {
    await balancer?.close()
    await Promise.all(registries.map(async registry => await registry.close()))
  }
  try {
    for (let i = 1; i <= NODES; i++) registries.push(await ReferenceRegistry.start({ label: `fleet-${trio}-${i}`, proxyRemoteUrl: upstreamUrl, s3 }))
    balancer = await startBalancer('nginx', registries.map(registry => registry.host))
    const pids = await Promise.all(registries.map(async registry => await findProcess(['docker-registry', 'serve', registry.configPath])))
    const url = balancer.url
    return { url, host: url.replace(/^http:\/\//, ''), pids, close }
  } catch (err) {
    await close()
    throw err
  }
}

async function measureSide (side: Side, rgw: CephRgw, options: FleetBenchOptions, details: string[]): Promise<{ result: FleetSideResult, warmBlobBytes: number }> {
  const label = side === 'rm' ? 'registry-mirror' : 'reference'
  const bucket = await rgw.createBucket(`fleet-${side}`)
  const { images, sizes } = await pushSide(side, options)
  const distinct = [...new Set(images.flatMap(image => image.blobs))]
  const distinctBytes = distinct.reduce((sum, digest) => sum + (sizes.get(digest) ?? 0), 0)
  const start = async (redirect: boolean, trio: string): Promise<RunningFleet> => side === 'rm'
    ? await startRegistryMirrors(rgw, bucket, options.upstream.url, redirect, options.entryPoint)
    : await startReferences(rgw, bucket, options.upstream.url, redirect, trio)

  const streaming = await start(false, 'streaming')
  let pullSeconds: number
  let upstreamBlobGets: number
  let mostGetsOfOneBlob: number
  let streamed: Throughput
  let peaks: number[]
  const warm = images[0]?.blobs.find(digest => (sizes.get(digest) ?? 0) >= 6 * MiB)
  const warmBytes = warm === undefined ? 0 : sizes.get(warm) ?? 0
  if (warm === undefined) throw new Error('workload 11: no layer of 6 MiB in the first image')
  const warmUrl = (fleet: RunningFleet): string => `${fleet.url}/v2/${images[0]?.repository ?? ''}/blobs/${warm}`
  try {
    options.log(`11. ${CLIENTS} skopeo clients at once through a fleet of ${NODES}: ${label}`)
    const mark = await options.meter.mark()
    const started = process.hrtime.bigint()
    await Promise.all(Array.from({ length: CLIENTS }, async (_, client) => {
      const order = [...images.slice(client), ...images.slice(0, client)]
      for (const image of order) {
        const dir = join(options.workDir, `fleet-${side}-copy-${client}-${image.repository.replace('/', '-')}`)
        await timedSkopeoPull(options.skopeo, `${streaming.host}/${image.repository}:v1`, dir, image.digest)
        await removeTempDir(dir)
      }
    }))
    pullSeconds = Number(process.hrtime.bigint() - started) / 1e9
    await options.meter.settle()
    const gets = (await options.meter.since(mark)).requests.filter(isBlobGet)
    const perBlob = new Map<string, number>()
    for (const request of gets) {
      const digest = request.path.slice(request.path.lastIndexOf('/') + 1)
      perBlob.set(digest, (perBlob.get(digest) ?? 0) + 1)
    }
    const unfetched = distinct.filter(digest => !perBlob.has(digest))
    if (unfetched.length > 0) throw new Error(`workload 11, ${label}: ${unfetched.length} blobs never reached upstream, yet the pulls succeeded: was something cached before?`)
    upstreamBlobGets = gets.length
    mostGetsOfOneBlob = Math.max(...perBlob.values())
    details.push(`workload 11, ${label}: ${CLIENTS} clients x ${images.length} images (${distinct.length} distinct blobs, ${(distinctBytes / MiB).toFixed(1)} MiB) in ${pullSeconds.toFixed(2)} s; upstream blob GETs per blob: ${[...perBlob.values()].sort((a, b) => b - a).join(', ')}`)

    options.log(`11. cached ${(warmBytes / MiB).toFixed(0)} MiB blob through the fleet, ${PARALLEL} at once, streamed (redirect off): ${label}`)
    await readLoop(warmUrl(streaming), warmBytes, WARMUP_READS)
    streamed = await readLoop(warmUrl(streaming), warmBytes, READS)
    if (streamed.redirects !== 0) throw new Error(`workload 11, ${label}: ${streamed.redirects} redirects with redirect off`)
    peaks = await Promise.all(streaming.pids.map(async pid => await peakRss(pid)))
  } finally {
    await streaming.close()
  }

  const redirecting = await start(true, 'redirecting')
  let redirected: Throughput
  let redirectingPeaks: number[]
  try {
    options.log(`11. the same blob, ${PARALLEL} at once, by redirect to the gateway (redirect on): ${label}`)
    const mark = await options.meter.mark()
    await readLoop(warmUrl(redirecting), warmBytes, WARMUP_READS)
    redirected = await readLoop(warmUrl(redirecting), warmBytes, READS)
    if (redirected.redirects !== READS) throw new Error(`workload 11, ${label}: ${redirected.redirects} redirects for ${READS} reads with redirect on`)
    const traffic = await options.meter.since(mark)
    if (traffic.blobGets > 0) throw new Error(`workload 11, ${label}: the redirecting trio fetched the cached blob from upstream (${traffic.blobGets} GETs): it did not find it in the bucket`)
    redirectingPeaks = await Promise.all(redirecting.pids.map(async pid => await peakRss(pid)))
  } finally {
    await redirecting.close()
  }
  details.push(`workload 11, ${label}: warm blob ${(warmBytes / MiB).toFixed(1)} MiB x ${READS}, streamed ${streamed.seconds.toFixed(2)} s, redirected ${redirected.seconds.toFixed(2)} s; peak RSS per node: streaming trio ${peaks.map(mb).join(', ')}, redirecting trio ${redirectingPeaks.map(mb).join(', ')}`)
  return {
    result: { distinctBlobs: distinct.length, distinctBytes, upstreamBlobGets, mostGetsOfOneBlob, pullSeconds, streamed, redirected, peakRss: peaks, redirectingPeakRss: redirectingPeaks },
    warmBlobBytes: warmBytes
  }
}

function mb (bytes: number): string {
  return `${(bytes / 1e6).toFixed(0)} MB`
}

export async function fleetOnBucket (options: FleetBenchOptions): Promise<FleetBenchResult> {
  const rgw = await CephRgw.start({ label: 'bench-fleet' })
  const details: string[] = []
  try {
    const rm = await measureSide('rm', rgw, options, details)
    const ref = await measureSide('ref', rgw, options, details)
    const daemons = rgw.daemons()
    const gatewayCpuTicks = await cpuTicks(daemons.map(daemon => daemon.pid))
    details.push(`workload 11: the gateway's daemons at the end: ${daemons.map(daemon => `${daemon.name} ${mb(daemon.rssBytes)}`).join(', ')}; ${gatewayCpuTicks} CPU ticks in all`)
    return { sides: { rm: rm.result, ref: ref.result }, warmBlobBytes: rm.warmBlobBytes, gatewayCpuTicks, details }
  } finally {
    await rgw.close()
  }
}
