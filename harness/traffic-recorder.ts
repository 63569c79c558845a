// A byte-for-byte TCP relay in front of the mirror that notes every HTTP
// request line going through. Clients talk to the mirror exactly as they
// would directly (TLS probes, keep-alive and all reach it untouched); the
// tests learn what the clients asked for, e.g. that a second pull really
// fetched its blobs from the mirror.

import { createServer, connect, type Server, type Socket } from 'node:net'
import { Transform, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream/promises'

export interface SeenRequest {
  readonly method: string
  readonly uri: string
  /** Without the query string. */
  readonly path: string
}

const requestLine = /^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP\/1\.[01]$/
const maxLine = 64 * 1024

/** Passes bytes on unchanged; calls onLine for each CRLF-terminated line. */
class LineSniffer extends Transform {
  #partial = ''
  readonly #onLine: (line: string) => void

  constructor (onLine: (line: string) => void) {
    super()
    this.#onLine = onLine
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    const lines = (this.#partial + chunk.toString('latin1')).split('\r\n')
    const rest = lines.pop() ?? ''
    // A TLS hello or a request body has no line breaks worth keeping.
    this.#partial = rest.length > maxLine ? '' : rest
    for (const line of lines) this.#onLine(line)
    callback(null, chunk)
  }
}

export class TrafficRecorder {
  readonly #server: Server
  readonly #sockets = new Set<Socket>()
  readonly #seen: SeenRequest[] = []
  #port = 0

  private constructor (target: URL) {
    this.#server = createServer(client => this.#relay(client, target.hostname, Number(target.port)))
  }

  /** Relays 127.0.0.1:<new port> to target (host:port). */
  static async start (target: string): Promise<TrafficRecorder> {
    const recorder = new TrafficRecorder(new URL(`http://${target}`))
    const server = recorder.#server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(0, '127.0.0.1', resolve)
    })
    const address = server.address()
    if (address === null || typeof address === 'string') throw new Error('no TCP address from listen(0)')
    recorder.#port = address.port
    return recorder
  }

  get port (): number { return this.#port }
  get host (): string { return `127.0.0.1:${this.#port}` }

  #relay (client: Socket, host: string, port: number): void {
    const upstream = connect(port, host)
    for (const socket of [client, upstream]) {
      this.#sockets.add(socket)
      socket.once('close', () => this.#sockets.delete(socket))
    }
    const sniffer = new LineSniffer(line => {
      const match = requestLine.exec(line)
      if (match === null) return
      const [, method = '', uri = ''] = match
      const query = uri.indexOf('?')
      this.#seen.push({ method, uri, path: query === -1 ? uri : uri.slice(0, query) })
    })
    // Either side closing or failing ends both.
    pipeline(client, sniffer, upstream).catch(() => {}).finally(() => client.destroy())
    pipeline(upstream, client).catch(() => {}).finally(() => upstream.destroy())
  }

  requests (): SeenRequest[] {
    return [...this.#seen]
  }

  async close (): Promise<void> {
    for (const socket of this.#sockets) socket.destroy()
    await new Promise(resolve => this.#server.close(resolve))
  }
}
