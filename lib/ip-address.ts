// Client addresses as the mirror keys them: one written form per address
// (IPv4 dotted, IPv6 canonical, a dual-stack socket's ::ffff: form as IPv4),
// the networks the config names, and an IPv6 address's /64. Used by the HTTP
// layer (who a request comes from) and by auth (anonymous networks, failed
// logins), which both sit above it.

import { BlockList, isIP, isIPv4 } from 'node:net'

/** The forms an address arrives in, reduced to one: IPv4 dotted, IPv6 canonical (RFC 5952, lowercase). */
export function plainAddress (address: string): string {
  if (isIPv4(address)) return address
  if (isIP(address) !== 6) return address
  let canonical: string
  try {
    // WHATWG URL serialises IPv6 the RFC 5952 way: "2001:DB8:0::1" and "2001:db8::1" are one client.
    canonical = new URL(`http://[${address}]/`).hostname.slice(1, -1)
  } catch {
    // A zone index ("fe80::1%eth0") has no URL form; it is one address as written.
    return address.toLowerCase()
  }
  // An IPv4 client on a dual-stack socket appears as ::ffff:a.b.c.d (canonical: ::ffff:XXXX:XXXX);
  // networks and limits name it as a.b.c.d.
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical)
  if (mapped === null) return canonical
  const high = parseInt(mapped[1] ?? '0', 16)
  const low = parseInt(mapped[2] ?? '0', 16)
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}`
}

/** CIDR networks ("10.0.0.0/8", "fd00::/8") as a BlockList; the loader checked them. */
export function networkList (networks: readonly string[]): BlockList {
  const list = new BlockList()
  for (const network of networks) {
    const [address = '', bits] = network.split('/')
    const family = isIPv4(address) ? 'ipv4' : 'ipv6'
    list.addSubnet(address, Number(bits ?? (family === 'ipv4' ? 32 : 128)), family)
  }
  return list
}

/** The /64 an IPv6 address is in, written as its first four groups (`2001:db8:0:1`). */
export function prefix64 (address: string): string | undefined {
  const bare = address.replace(/%.*$/, '')
  const halves = bare.split('::')
  if (halves.length > 2) return undefined
  const groups = (part: string | undefined): string[] => {
    if (part === undefined || part === '') return []
    // An IPv4 tail (::ffff:1.2.3.4, 64:ff9b::1.2.3.4) stands for two groups.
    return part.split(':').flatMap(g => g.includes('.') ? ['0', '0'] : [g])
  }
  const head = groups(halves[0])
  const tail = groups(halves[1])
  const missing = 8 - head.length - tail.length
  if (missing < 0 || (halves.length === 1 && missing !== 0)) return undefined
  const all = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail]
  return all.slice(0, 4).map(g => parseInt(g, 16).toString(16)).join(':')
}
