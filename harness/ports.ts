import { createServer } from 'node:net'
import { networkInterfaces } from 'node:os'

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const address = server.address()
  await new Promise(resolve => server.close(resolve))
  if (address === null || typeof address === 'string') throw new Error('no TCP address from listen(0)')
  return address.port
}

/**
 * An IPv4 address of this machine outside 127.0.0.0/8 (eth0's, say), or
 * undefined on a machine with loopback only. dockerd treats every registry
 * and mirror in 127.0.0.0/8 as insecure: it skips certificate checks there.
 */
export function nonLoopbackAddress (): string | undefined {
  for (const addresses of Object.values(networkInterfaces())) {
    const found = addresses?.find(a => a.family === 'IPv4' && !a.internal && !a.address.startsWith('127.'))
    if (found !== undefined) return found.address
  }
  return undefined
}
