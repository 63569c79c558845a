// Who a request comes from. Without a balancer, the TCP peer. Behind one
// (nginx, HAProxy, a cloud load balancer), the peer is the balancer, which
// names the client in X-Forwarded-For; that header is believed only from the
// peers `limits.trustedProxies` lists, because anyone else can write it. The
// per-client limits, auth.anonymousNetworks, the failed-login counters and the
// logs all take the address this module settles on.
//
// The PROXY protocol is not read: nginx, and HAProxy in HTTP mode with
// `option forwardfor`, set X-Forwarded-For, which is all the mirror needs. A
// balancer that forwards TCP only either keeps the client's address on the
// socket (Kubernetes' externalTrafficPolicy: Local, a network load balancer's
// client IP preservation), and then nothing is needed, or hides it, and then
// it has to be put in HTTP mode.

import { type BlockList, isIP, isIPv4 } from 'node:net'
import { networkList, plainAddress } from '../ip-address.js'

/**
 * One X-Forwarded-For entry as an address, or undefined when it is not one
 * ("unknown", an obfuscated RFC 7239 name, garbage). Balancers write
 * `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or
 * `[2001:db8::1]:443`; each is taken, the port dropped.
 */
export function forwardedAddress (entry: string): string | undefined {
  const text = entry.trim()
  if (text.startsWith('[')) {
    const close = text.indexOf(']')
    const host = text.slice(1, close)
    const rest = text.slice(close + 1)
    if (close < 0 || isIP(host) !== 6 || !(rest === '' || /^:\d{1,5}$/.test(rest))) return undefined
    return plainAddress(host)
  }
  if (isIP(text) !== 0) return plainAddress(text)
  const m = /^([\d.]+):\d{1,5}$/.exec(text)
  return m?.[1] !== undefined && isIPv4(m[1]) ? m[1] : undefined
}

/** X-Forwarded-For entries past this many are not walked: no real chain of proxies is that long. */
const MAX_HOPS = 32

/** The balancers `limits.trustedProxies` names, and what a request's headers say once they are believed. */
export class TrustedProxies {
  readonly #list: BlockList | undefined

  constructor (networks: readonly string[]) {
    this.#list = networks.length === 0 ? undefined : networkList(networks)
  }

  /** Whether `address` (plain form) is one of the trusted proxies. */
  includes (address: string): boolean {
    if (this.#list === undefined || isIP(address) === 0) return false
    return this.#list.check(address, isIPv4(address) ? 'ipv4' : 'ipv6')
  }

  /**
   * The client of a request from `peer` (the socket's remote address). From a
   * trusted proxy, X-Forwarded-For (every such header, in order, as one list)
   * is walked from the right: each proxy appends the address it got the
   * request from, so the rightmost entry is the one the nearest proxy vouches
   * for; trusted proxies are skipped, and the first address that is not one is
   * the client. Entries to its left were written by the client or by proxies
   * no one vouches for, so they are never believed. When every hop is trusted,
   * the leftmost is the client; an entry that is not an address ends the walk
   * at the last one believed.
   */
  clientOf (peer: string | undefined, forwardedFor: string | readonly string[] | undefined): string {
    const address = plainAddress(peer ?? '')
    if (forwardedFor === undefined || !this.includes(address)) return address
    const entries = (typeof forwardedFor === 'string' ? [forwardedFor] : forwardedFor).join(',').split(',')
    let believed = address
    for (let i = entries.length - 1, hops = 0; i >= 0 && hops < MAX_HOPS; i--, hops++) {
      const next = forwardedAddress(entries[i] ?? '')
      if (next === undefined) return believed
      believed = next
      if (!this.includes(next)) return next
    }
    return believed
  }

  /**
   * The scheme the client used, from a trusted proxy's X-Forwarded-Proto (its
   * first value: the proxy at the edge sets it), so that the token realm a 401
   * names is one the client can reach when the balancer ends TLS. Undefined
   * from anyone else, or for a value that is not http or https.
   */
  protocolOf (peer: string | undefined, forwardedProto: string | readonly string[] | undefined): 'http' | 'https' | undefined {
    if (forwardedProto === undefined || !this.includes(plainAddress(peer ?? ''))) return undefined
    const first = (typeof forwardedProto === 'string' ? forwardedProto : forwardedProto[0] ?? '').split(',')[0]?.trim().toLowerCase()
    return first === 'http' || first === 'https' ? first : undefined
  }
}
