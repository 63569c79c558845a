// The results table (the same Markdown on the terminal and in RESULTS.md) and
// the units it speaks in.

import type { Environment } from './machine.js'

export interface Row {
  readonly workload: string
  readonly mirror: string
  readonly reference: string
  /** registry-mirror ÷ reference, when a ratio means something. */
  readonly ratio: string
  readonly target: string
  /** undefined: no target for this row. */
  readonly met: boolean | undefined
}

export const MB = 1000 * 1000

export function megabytes (bytes: number): string {
  return `${(bytes / MB).toFixed(Math.abs(bytes) >= 10 * MB ? 0 : 1)} MB`
}

export function gigabytesPerSecond (bytesPerSecond: number): string {
  return `${(bytesPerSecond / 1e9).toFixed(2)} GB/s`
}

export function seconds (s: number): string {
  return `${s.toFixed(s >= 10 ? 1 : 2)} s`
}

export function milliseconds (ms: number): string {
  return `${ms.toFixed(ms >= 10 ? 1 : 2)} ms`
}

export function perSecond (n: number): string {
  return `${Math.round(n).toLocaleString('en-US')}/s`
}

export function ratio (mirror: number, reference: number): string {
  if (reference === 0) return '—'
  const r = mirror / reference
  return `${r.toFixed(r >= 10 ? 1 : 2)}×`
}

export function renderTable (rows: readonly Row[]): string {
  const header = ['workload', 'registry-mirror', 'reference', 'ratio', 'target', 'met?']
  const cells = rows.map(row => [row.workload, row.mirror, row.reference, row.ratio, row.target, row.met === undefined ? '—' : row.met ? 'yes' : '**no**'])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map(c => (c[i] ?? '').length)))
  const line = (c: readonly string[]): string => `| ${c.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join(' | ')} |`
  return [line(header), line(widths.map(w => '-'.repeat(w))), ...cells.map(line)].join('\n')
}

export function renderEnvironment (env: Environment): string {
  return [
    `- date: ${env.date}`,
    `- machine: ${env.cpu}, ${env.cores} cores, ${env.memory} memory, ${env.kernel}`,
    `- versions: ${env.versions.map(([name, version]) => `${name} ${version}`).join('; ')}`
  ].join('\n')
}
