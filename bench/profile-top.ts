// Reads a V8 .cpuprofile (node --cpu-prof; npm run bench -- --cpu-prof) and
// prints where the time went: the functions with the most self time, and the
// same grouped by package or file, so a profile can be read without DevTools.
//
//   node dist/bench/profile-top.js FILE.cpuprofile [N]

import { readFile } from 'node:fs/promises'

interface CallFrame {
  readonly functionName: string
  readonly url: string
  readonly lineNumber: number
}

interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
  readonly children?: readonly number[]
}

interface Profile {
  readonly nodes: readonly ProfileNode[]
  readonly samples: readonly number[]
  readonly timeDeltas: readonly number[]
}

function isProfile (value: unknown): value is Profile {
  if (typeof value !== 'object' || value === null) return false
  const v = value as Record<string, unknown>
  return Array.isArray(v.nodes) && Array.isArray(v.samples) && Array.isArray(v.timeDeltas)
}

/** Where a frame lives: node:internal/..., a package under node_modules, or a file of ours. */
function where (frame: CallFrame): string {
  const url = frame.url
  if (url === '') return '(native/V8)'
  if (url.startsWith('node:')) return url.replace(/^node:internal\/(.+)$/, 'node:$1')
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (pkg?.[1] !== undefined) return pkg[1]
  return url.replace(/^file:\/\/.*?\/dist\//, '')
}

async function main (): Promise<void> {
  const [file, n = '25'] = process.argv.slice(2)
  if (file === undefined) {
    process.stderr.write('usage: node dist/bench/profile-top.js FILE.cpuprofile [N]\n')
    process.exitCode = 2
    return
  }
  const parsed: unknown = JSON.parse(await readFile(file, 'utf8'))
  if (!isProfile(parsed)) throw new Error(`${file} is not a V8 CPU profile`)
  const byId = new Map(parsed.nodes.map(node => [node.id, node]))
  const self = new Map<number, number>()
  let total = 0
  parsed.samples.forEach((id, i) => {
    const dt = parsed.timeDeltas[i] ?? 0
    self.set(id, (self.get(id) ?? 0) + dt)
    total += dt
  })

  const byFunction = new Map<string, number>()
  const byPlace = new Map<string, number>()
  for (const [id, us] of self) {
    const frame = byId.get(id)?.callFrame
    if (frame === undefined) continue
    const name = `${frame.functionName === '' ? '(anonymous)' : frame.functionName}  ${where(frame)}${frame.url === '' ? '' : `:${frame.lineNumber + 1}`}`
    byFunction.set(name, (byFunction.get(name) ?? 0) + us)
    byPlace.set(where(frame), (byPlace.get(where(frame)) ?? 0) + us)
  }
  const print = (title: string, entries: Map<string, number>, limit: number): void => {
    process.stdout.write(`\n${title}\n`)
    for (const [name, us] of [...entries].sort((a, b) => b[1] - a[1]).slice(0, limit)) {
      process.stdout.write(`${(100 * us / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(7)} ms  ${name}\n`)
    }
  }
  process.stdout.write(`${file}: ${(total / 1e6).toFixed(1)} s sampled\n`)
  print('self time by function', byFunction, Number(n))
  print('self time by package or file', byPlace, 15)
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`)
  process.exitCode = 1
})
