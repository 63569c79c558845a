// Clients that stop reading: each sends one GET for a blob, takes the first
// bytes of the answer, and then reads nothing more, holding its connection
// open. What they cost a server is what it keeps in memory for each.

import { connect, type Socket } from 'node:net'
import { currentRss } from './proc.js'

export interface SlowReaders {
  /** Readers that got the start of their answer. */
  readonly answered: number
  close: () => void
}

/** Opens `count` readers of `url`, `batch` at a time, until each got its first bytes; then waits for the server's RSS to settle. */
export async function openSlowReaders (url: string, count: number, serverPid: number, batch = 100): Promise<SlowReaders> {
  const target = new URL(url)
  const sockets: Socket[] = []
  let answered = 0
  const close = (): void => { for (const s of sockets) s.destroy() }
  try {
    for (let opened = 0; opened < count; opened += batch) {
      await Promise.all(Array.from({ length: Math.min(batch, count - opened) }, async () => {
        const socket = connect({ host: target.hostname, port: Number(target.port) })
        sockets.push(socket)
        socket.on('error', () => {})
        await new Promise<void>((resolve, reject) => {
          socket.once('connect', () => socket.write(`GET ${target.pathname} HTTP/1.1\r\nHost: ${target.host}\r\n\r\n`))
          socket.once('data', () => {
            socket.pause()
            answered++
            resolve()
          })
          socket.once('close', () => reject(new Error(`a slow reader of ${url} was closed before any answer`)))
          setTimeout(() => reject(new Error(`a slow reader of ${url} got no answer in 60 s`)), 60_000).unref()
        })
      }))
    }
    // Until the server has written what the kernel takes for every reader and holds the rest.
    let last = -Infinity
    for (let i = 0; i < 60; i++) {
      await new Promise(resolve => setTimeout(resolve, 1000))
      const now = await currentRss(serverPid)
      if (Math.abs(now - last) < 2 * 1024 * 1024) break
      last = now
    }
  } catch (err) {
    close()
    throw err
  }
  return { answered, close }
}
