// What /proc says about a server: its peak resident set (VmHWM, the kernel's
// own high-water mark, so no sample can miss a peak) and how many bytes it
// has moved through read/write/sendfile calls, to tell when it has gone quiet.

import { readFile, readdir, writeFile } from 'node:fs/promises'

/** pid and every process below it. */
export async function processTree (pid: number): Promise<number[]> {
  const parents = new Map<number, number>()
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '')
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ")".
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    if (Number.isInteger(ppid)) parents.set(Number(entry), ppid)
  }
  const tree = [pid]
  for (let i = 0; i < tree.length; i++) {
    for (const [child, parent] of parents) if (parent === tree[i]) tree.push(child)
  }
  return tree
}

async function statusField (pid: number, field: string): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)
  if (match === null) throw new Error(`/proc/${pid}/status has no ${field}`)
  return Number(match[1]) * 1024
}

/** Peak resident bytes of pid and its children (each one's VmHWM, added up). */
export async function peakRss (pid: number): Promise<number> {
  let total = 0
  for (const member of await processTree(pid)) total += await statusField(member, 'VmHWM').catch(() => 0)
  return total
}

/** Bytes pid has read and written through system calls so far (sockets and sendfile included). */
export async function ioBytes (pid: number): Promise<number> {
  const io = await readFile(`/proc/${pid}/io`, 'utf8')
  let total = 0
  for (const field of ['rchar', 'wchar']) {
    const match = new RegExp(`^${field}: (\\d+)$`, 'm').exec(io)
    if (match === null) throw new Error(`/proc/${pid}/io has no ${field}`)
    total += Number(match[1])
  }
  return total
}

/** CPU ticks (USER_HZ) spent by the whole machine, and by this process and everything it started. */
export interface CpuSample {
  readonly machineTotal: number
  readonly machineBusy: number
  readonly ours: number
}

async function ticksOf (pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  // After "(comm) ": state is field 3, so utime, stime, cutime, cstime (fields 14-17) are at 11-14.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return [11, 12, 13, 14].reduce((sum, i) => sum + (Number(fields[i]) || 0), 0)
}

/**
 * A live child's time is its own; a child that exited and was reaped is in
 * its parent's cutime/cstime, so adding both over the tree counts each once.
 */
export async function cpuSample (): Promise<CpuSample> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? ''
  const [, user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line.trim().split(/\s+/).map(Number)
  let ours = 0
  for (const pid of await processTree(process.pid)) ours += await ticksOf(pid)
  return {
    machineTotal: user + nice + system + idle + iowait + irq + softirq + steal,
    machineBusy: user + nice + system + irq + softirq + steal,
    ours
  }
}

/** CPU ticks the processes have spent so far, each its own and its reaped children's. */
export async function cpuTicks (pids: readonly number[]): Promise<number> {
  let total = 0
  for (const pid of pids) total += await ticksOf(pid)
  return total
}

/**
 * The share of the machine's CPU (0-1) that went to other processes between two samples.
 * oursElsewhere: ticks the workload's own daemons spent outside this process's tree meanwhile
 * (the Ceph daemons daemonize: their parent is init, not the bench).
 */
export function foreignShare (before: CpuSample, after: CpuSample, oursElsewhere = 0): number {
  const total = after.machineTotal - before.machineTotal
  if (total <= 0) return 0
  const foreign = (after.machineBusy - before.machineBusy) - (after.ours - before.ours) - oursElsewhere
  return Math.max(0, foreign / total)
}

/** Resident bytes of pid and its children now (VmRSS, added up). */
export async function currentRss (pid: number): Promise<number> {
  let total = 0
  for (const member of await processTree(pid)) total += await statusField(member, 'VmRSS').catch(() => 0)
  return total
}

/** Starts the kernel's peak (VmHWM) over from the current RSS for pid and its children, so a workload measures its own peak (needs root or the same user). */
export async function resetPeakRss (pid: number): Promise<void> {
  for (const member of await processTree(pid)) await writeFile(`/proc/${member}/clear_refs`, '5').catch(() => {})
}
