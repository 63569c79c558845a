// What /proc says about a server: its peak resident set (VmHWM, the kernel's
// own high-water mark, so no sample can miss a peak) and how many bytes it
// has moved through read/write/sendfile calls, to tell when it has gone quiet.

import { readFile, readdir } from 'node:fs/promises'

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
