// A forwarding proxy in front of the upstream registry that serves the blobs
// of repositories named bench/slow-* at a trickle, and everything else at full
// speed: slow downloads on the same upstream as a cold tag, for workload 9.

import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'

/** Passes bytes on at `bytesPerSecond`, in slices of a tenth of a second. */
class Throttle extends Transform {
  readonly #rate: number
  constructor (bytesPerSecond: number) {
    super()
    this.#rate = bytesPerSecond
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const slice = Math.max(1, Math.floor(this.#rate / 10))
    const send = (offset: number): void => {
      if (this.destroyed) return
      if (offset >= chunk.length) {
        callback()
        return
      }
      this.push(chunk.subarray(offset, offset + slice))
      setTimeout(() => send(offset + slice), 100)
    }
    send(0)
  }
}

export class SlowUpstream {
  readonly url: string
  readonly #server: Server
  /** Throttled blob answers under way. */
  slowInFlight = 0

  private constructor (server: Server) {
    this.#server = server
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  }

  static async start (upstreamUrl: string, bytesPerSecond: number): Promise<SlowUpstream> {
    const target = new URL(upstreamUrl)
    let proxy: SlowUpstream | undefined
    const server = createServer((req, res) => {
      const slow = /\/bench\/slow-[^/]+\/blobs\//.test(req.url ?? '') && req.method === 'GET'
      const forwarded = httpRequest({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: { ...req.headers, host: target.host } }, (answer: IncomingMessage) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers)
        if (slow && proxy !== undefined) proxy.slowInFlight++
        const done = (): void => { if (slow && proxy !== undefined) proxy.slowInFlight-- }
        const stages = slow ? pipeline(answer, new Throttle(bytesPerSecond), res) : pipeline(answer, res)
        stages.then(done, done)
      })
      forwarded.on('error', () => res.destroy())
      pipeline(req, forwarded).catch(() => res.destroy())
    })
    server.listen(0, '127.0.0.1')
    await new Promise<void>((resolve, reject) => { server.once('listening', resolve); server.once('error', reject) })
    proxy = new SlowUpstream(server)
    return proxy
  }

  async close (): Promise<void> {
    this.#server.closeAllConnections()
    await new Promise<void>(resolve => this.#server.close(() => resolve()))
  }
}
