// metrics.token, checked for /metrics and the status page alike: compared in
// constant time, and every wrong token counted against the client's address
// (and its /64, auth/failure-counter.ts), so that it cannot be guessed at the
// speed of the network.

import { timingSafeEqual } from 'node:crypto'
import type { Context } from 'koa'
import { FailureCounter } from '../auth/failure-counter.js'
import { plainAddress } from '../ip-address.js'

/** Wrong metrics tokens one address may send within TOKEN_WINDOW_MS before it is refused (429) for the rest of it. */
export const TOKEN_FAILURES = 10
export const TOKEN_WINDOW_MS = 10 * 60_000

/**
 * Whether a token given for /metrics or the status page is metrics.token. Each wrong one is
 * counted against the client's address (and its /64): past TOKEN_FAILURES it throws a 429
 * before comparing, so the token cannot be guessed at the speed of the network.
 */
export type TokenCheck = (ctx: Context, given: string) => boolean

/** The token of an `Authorization: Bearer` header; undefined for none or another scheme. */
export function bearerOf (header: string): string | undefined {
  const m = /^Bearer\s+(.+)$/i.exec(header)
  return m?.[1]
}

/** The check of a configured token, or undefined when there is none (the endpoints are open). */
export function tokenCheck (token: string | undefined): TokenCheck | undefined {
  if (token === undefined) return undefined
  const failures = new FailureCounter({ maxFailures: TOKEN_FAILURES, window: TOKEN_WINDOW_MS })
  const wanted = Buffer.from(token)
  return (ctx, given) => {
    // The address app.ts settled (trusted proxies); on the metrics listener, the TCP peer.
    const address = (ctx.state as { client?: string }).client ?? plainAddress(ctx.socket.remoteAddress ?? '')
    failures.check(address)
    const offered = Buffer.from(given)
    if (offered.length === wanted.length && timingSafeEqual(offered, wanted)) return true
    failures.record(address)
    return false
  }
}
