// No request of the mirror's ever reaches a link-local address (169.254.0.0/16,
// fe80::/10): that is where cloud metadata services answer, with the
// instance's credentials. A redirect or a token realm naming one is refused
// before anything is sent, and a host name that resolves to one fails to
// connect (the lookup every upstream connection makes).

import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions, type LookupOneOptions } from 'node:dns'
import { isIP } from 'node:net'

export function isLinkLocal (address: string): boolean {
  const plain = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address
  const version = isIP(plain)
  if (version === 4) {
    const [a, b] = plain.split('.').map(Number)
    return a === 169 && b === 254
  }
  if (version === 6) {
    const lower = plain.toLowerCase()
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(lower)
    if (mapped?.[1] !== undefined) return isLinkLocal(mapped[1])
    const first = Number.parseInt(lower.split(':')[0] ?? '', 16)
    return Number.isInteger(first) && (first & 0xffc0) === 0xfe80
  }
  return false
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void

function refused (hostname: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${hostname} resolves to a link-local address only; the mirror never connects there`), { code: 'ELINKLOCAL' })
}

/** dns.lookup, with link-local addresses left out (none left: an ELINKLOCAL error). For undici's `connect.lookup`. */
export function guardedLookup (hostname: string, options: LookupOneOptions | LookupAllOptions, callback: LookupCallback): void {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err !== null) {
      callback(err, [])
      return
    }
    const kept = addresses.filter(a => !isLinkLocal(a.address))
    if (kept.length === 0) {
      callback(refused(hostname), [])
      return
    }
    if (options.all === true) callback(null, kept)
    else callback(null, kept[0]?.address ?? '', kept[0]?.family)
  })
}
