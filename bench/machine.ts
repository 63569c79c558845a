// What the benchmark needs from the machine, and what the results were
// measured on: the machine and the version of every part.

import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { cpus, release, totalmem } from 'node:os'
import { join } from 'node:path'
import { findOnPath } from '../harness/tools.js'

/** Each tool and the Debian package that provides it. */
const TOOLS: ReadonlyArray<readonly [tool: string, pkg: string, why: string]> = [
  ['docker-registry', 'docker-registry', 'the upstream and the reference mirror (distribution 2.8)'],
  ['skopeo', 'skopeo', 'pushes the generated images, and is the client of workload 5'],
  ['nginx', 'nginx', 'serves the warm blob with sendfile: the ceiling of workload 3'],
  ['wrk', 'wrk', 'the load generator of workloads 3 and 4'],
  ['curl', 'curl', 'the client of the cold pulls (workloads 1 and 2)'],
  ['radosgw', 'radosgw', 'the S3 buckets of workloads 10 and 11 (with ceph-mon, ceph-osd, ceph-common)'],
  ['ceph-mon', 'ceph-mon', 'the S3 bucket\'s cluster (workloads 10 and 11)'],
  ['ceph-osd', 'ceph-osd', 'the S3 bucket\'s cluster (workloads 10 and 11)'],
  ['ceph', 'ceph-common', 'the S3 bucket\'s cluster (workloads 10 and 11)'],
  ['radosgw-admin', 'ceph-common', 'the S3 bucket\'s user and keys (workloads 10 and 11)'],
  ['monmaptool', 'ceph-base', 'the S3 bucket\'s cluster (workloads 10 and 11)']
]

/** What is missing, as lines a person can act on; empty when all is there. */
export function missingTools (): string[] {
  return TOOLS
    .filter(([tool]) => findOnPath(tool) === undefined)
    .map(([tool, pkg, why]) => `  ${tool}: ${why} (apt-get install -y ${pkg})`)
}

export interface Environment {
  readonly date: string
  readonly cpu: string
  readonly cores: number
  readonly memory: string
  readonly kernel: string
  readonly versions: ReadonlyArray<readonly [string, string]>
}

function firstLine (command: string, args: readonly string[]): string {
  const result = spawnSync(command, [...args], { encoding: 'utf8' })
  const text = `${result.stdout ?? ''}\n${result.stderr ?? ''}`
  return text.split('\n').map(line => line.trim()).find(line => line !== '') ?? 'unknown'
}

function cpuModel (): string {
  try {
    const match = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))
    if (match?.[1] !== undefined) return match[1].trim()
  } catch {}
  return cpus()[0]?.model ?? 'unknown'
}

export function describeEnvironment (root: string): Environment {
  const pkg: unknown = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const version = typeof pkg === 'object' && pkg !== null && 'version' in pkg && typeof pkg.version === 'string' ? pkg.version : 'unknown'
  const commit = firstLine('git', ['-C', root, 'describe', '--always', '--dirty'])
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    cpu: cpuModel(),
    cores: cpus().length,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: `Linux ${release()}`,
    versions: [
      ['registry-mirror', `${version} (${commit})`],
      ['node', process.version],
      ['distribution (docker-registry)', firstLine('docker-registry', ['--version']).replace(/^docker-registry\s+github.com\/docker\/distribution\s+/, '')],
      ['nginx', firstLine('nginx', ['-v']).replace(/^nginx version:\s*nginx\//, '')],
      ['wrk', firstLine('wrk', ['-v']).replace(/^wrk\s+/, '').replace(/\s+Copyright.*$/, '')],
      ['skopeo', firstLine('skopeo', ['--version']).replace(/^skopeo version\s+/, '')],
      ['curl', firstLine('curl', ['--version']).split(' ')[1] ?? 'unknown'],
      ['radosgw', firstLine('radosgw', ['--version']).replace(/^ceph version\s+/, '').replace(/\s+\(.*$/, '')]
    ]
  }
}
