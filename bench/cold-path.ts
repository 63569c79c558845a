// The cold path up close (issue 18): N cold blobs pulled one at a time
// through registry-mirror and the reference proxy, in alternating order,
// with curl straight from the upstream beside each, and the CPU each server
// spent on each pull, registry-mirror's split by thread (main, V8's helpers,
// libuv's pool, the hashing worker). For trying a change quickly; the figures
// that count are npm run bench's.
//
//   npm run build && node dist/bench/cold-path.js [--count 4] [--size 200] [--mirror PATH/bin/registry-mirror.js]

import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { ReferenceRegistry } from '../harness/reference-registry.js'
import { Skopeo } from '../harness/skopeo.js'
import { makeTempDir, removeTempDir } from '../harness/temp.js'
import { pullBlob } from './clients.js'
import { pushImages, type ImagePlan } from './images.js'
import { peakRss } from './proc.js'
import { MB, megabytes, seconds } from './report.js'
import { findProcess, RegistryMirrorServer } from './servers.js'

/** Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ, 100 on Linux). */
const TICK_MS = 10

/** CPU milliseconds by thread id, read from /proc/PID/task/TID/stat. */
async function threadCpu (pid: number): Promise<Map<number, number>> {
  const out = new Map<number, number>()
  for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [])) {
    const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    out.set(Number(tid), (Number(fields[11]) + Number(fields[12])) * TICK_MS)
  }
  return out
}

async function processCpu (pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS
}

/**
 * Node's threads in the order it starts them: the main thread (tid = pid), V8's platform
 * workers (GC and JIT), then libuv's pool (file I/O), then, later, the hashing worker.
 */
function threadGroups (pid: number, spent: Map<number, number>): string {
  const tids = [...spent.keys()].sort((a, b) => a - b)
  const others = tids.filter(t => t !== pid)
  const group = (name: string, members: number[]): string => `${name} ${members.reduce((n, t) => n + (spent.get(t) ?? 0), 0)} ms`
  return [
    group('main', [pid]),
    group('V8 helpers', others.slice(0, 4)),
    group('libuv pool', others.slice(4, 8)),
    group('later threads (hashing worker)', others.slice(8))
  ].join(', ')
}

async function main (): Promise<void> {
  const { values } = parseArgs({ options: { count: { type: 'string' }, size: { type: 'string' }, mirror: { type: 'string' } } })
  const count = Number(values.count ?? 4)
  const size = Number(values.size ?? 200) * MB
  const work = await makeTempDir('cold-path')
  const closers: Array<() => Promise<void>> = [async () => await removeTempDir(work)]
  try {
    const upstream = await ReferenceRegistry.start({ label: 'upstream' })
    closers.push(async () => await upstream.close())
    const plans: ImagePlan[] = []
    for (let i = 0; i < count; i++) for (const who of ['rm', 'ref']) plans.push({ repository: `cold/${who}-${i}`, layerSizes: [size] })
    const images = await pushImages(plans, { upstream, skopeo: new Skopeo(work), workDir: work, seed: `cold-path-${Date.now()}` })
    const mirror = await RegistryMirrorServer.start({ dir: join(work, 'registry-mirror'), upstreamUrl: upstream.url, tagTtl: '1h', entryPoint: values.mirror })
    closers.push(async () => await mirror.stop())
    const reference = await ReferenceRegistry.start({ label: 'reference', proxyRemoteUrl: upstream.url })
    closers.push(async () => await reference.close())
    const referencePid = await findProcess(['docker-registry', 'serve', reference.configPath])
    const upstreamPid = await findProcess(['docker-registry', 'serve', upstream.configPath])
    process.stdout.write(`registry-mirror after start: peak RSS ${megabytes(await peakRss(mirror.pid))}\n`)
    const totals = { rm: 0, ref: 0, direct: 0 }
    for (let i = 0; i < count; i++) {
      const line: string[] = []
      for (const who of i % 2 === 0 ? ['rm', 'ref'] as const : ['ref', 'rm'] as const) {
        const repository = `cold/${who}-${i}`
        const layer = images.get(repository)?.layers[0]
        if (layer === undefined) throw new Error(`no layer for ${repository}`)
        const pid = who === 'rm' ? mirror.pid : referencePid
        const [threadsBefore, cpuBefore, upstreamBefore] = [await threadCpu(pid), await processCpu(pid), await processCpu(upstreamPid)]
        const pull = await pullBlob(`${who === 'rm' ? mirror.url : reference.url}/v2/${repository}/blobs/${layer.digest}`, layer.size)
        const spent = new Map([...(await threadCpu(pid))].map(([tid, ms]) => [tid, ms - (threadsBefore.get(tid) ?? 0)]))
        totals[who] += pull.seconds
        line.push(`${who === 'rm' ? 'registry-mirror' : 'reference'} ${seconds(pull.seconds)}, CPU ${await processCpu(pid) - cpuBefore} ms (upstream's ${await processCpu(upstreamPid) - upstreamBefore} ms)` +
          (who === 'rm' ? ` [${threadGroups(pid, spent)}]` : ''))
        await new Promise(resolve => setTimeout(resolve, 1000)) // the reference stores its copy after the client's pull
      }
      const ref = images.get(`cold/ref-${i}`)?.layers[0]
      if (ref === undefined) throw new Error('no reference layer')
      const direct = await pullBlob(`${upstream.url}/v2/cold/ref-${i}/blobs/${ref.digest}`, ref.size)
      totals.direct += direct.seconds
      process.stdout.write(`#${i}: ${line.join('; ')}; curl straight from the upstream ${seconds(direct.seconds)}\n`)
    }
    process.stdout.write(`mean of ${count} ${megabytes(size)} blobs: registry-mirror ${seconds(totals.rm / count)}, reference ${seconds(totals.ref / count)} ` +
      `(${(totals.rm / totals.ref).toFixed(2)}×), curl direct ${seconds(totals.direct / count)}; registry-mirror's peak RSS ${megabytes(await peakRss(mirror.pid))}\n`)
  } finally {
    for (const close of closers.reverse()) await close().catch(() => {})
  }
}

main().then(() => process.exit(0), (err: unknown) => {
  process.stderr.write(`cold-path: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exit(1)
})
