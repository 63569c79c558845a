// Asks the mirror whether it answers, from where the node's runtime would ask:
// GET /v2/ on a fresh connection, bounded as a whole by one timeout. 200 (open)
// and 401 (asks for a login) both mean a registry is there; everything else, a
// refused connection, a reset or the timeout, means the node must not be
// pointed at it (containerd would wait for it on every request).

import { request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'

export interface ProbeResult {
  readonly answering: boolean
  /** The HTTP status, when one came back. */
  readonly status: number | undefined
  /** Why it does not count as answering: the error, the timeout or the status. */
  readonly problem: string | undefined
  readonly ms: number
}

export type Probe = (mirror: string, timeoutMs: number) => Promise<ProbeResult>

/** GET <mirror>/v2/ with a timeout covering connect, TLS and the response head. */
export const probeMirror: Probe = async (mirror, timeoutMs) => {
  const started = performance.now()
  const url = new URL('/v2/', mirror)
  const send = url.protocol === 'https:' ? httpsRequest : httpRequest
  const outcome = await new Promise<{ status: number } | { problem: string }>(resolve => {
    // agent: false, so each probe dials anew, as containerd would after the mirror restarted.
    const req = send(url, { method: 'GET', agent: false, headers: { 'user-agent': 'registry-mirror-node-config' } })
    const timer = setTimeout(() => {
      req.destroy(new Error(`no answer within ${timeoutMs} ms`))
    }, timeoutMs)
    req.once('response', (res: IncomingMessage) => {
      clearTimeout(timer)
      // The body is not needed, and one that never ends must not keep a socket reading: the
      // connection (agent: false) is closed once the status is known.
      res.once('error', () => {})
      res.destroy()
      resolve({ status: res.statusCode ?? 0 })
    })
    req.once('error', err => {
      clearTimeout(timer)
      resolve({ problem: err.message })
    })
    req.end()
  })
  const ms = Math.round(performance.now() - started)
  if ('problem' in outcome) return { answering: false, status: undefined, problem: outcome.problem, ms }
  const answering = outcome.status === 200 || outcome.status === 401
  return { answering, status: outcome.status, problem: answering ? undefined : `GET /v2/ answered ${outcome.status}`, ms }
}
