// What the access rules' words may be, as the config checks them at start:
// user names (as htpasswd and the Basic scheme allow them) and repository
// patterns (`docker.io/library/*`, `ghcr.io/acme/**`). The rules themselves
// live in lib/auth/access-rules.ts, which compiles the patterns checked here.

/** A user name as htpasswd and the Basic scheme allow it: no colon, no white space or control characters. */
export function isUserName (name: string): boolean {
  return /^[^:\s\p{Cc}]{1,256}$/u.test(name)
}

/**
 * What a passthrough upstream's login form begins with (`ghcr.io/`): a user
 * name's start, so no colon, white space or control characters (a Basic user
 * name ends at its first colon).
 */
export function parseLoginPrefix (text: string): string {
  if (!/^[^:\s\p{Cc}]{1,64}$/u.test(text)) throw new Error(`expected the start of a user name (1 to 64 characters, no colon or white space), got ${JSON.stringify(text.slice(0, 80))}`)
  return text
}

/** The login prefix of an upstream that sets none: its host without the port, and a slash (`ghcr.io/`). */
export function defaultLoginPrefix (upstream: string): string {
  const host = upstream.startsWith('[') ? upstream.slice(0, upstream.indexOf(']') + 1) : upstream.replace(/:\d+$/, '')
  return `${host}/`
}

/** Why a pattern cannot be one, or undefined when it is fine. */
export function patternProblem (pattern: string): string | undefined {
  if (pattern === '') return 'an empty pattern'
  for (const segment of pattern.split('/')) {
    if (segment === '') return `"${pattern}" has an empty path segment`
    if (segment.includes('**') && segment !== '**') return `"${pattern}": ** must be a whole path segment`
  }
  if (/[^a-z0-9._\-/*:]/.test(pattern)) return `"${pattern}" has characters no repository has (lower-case letters, digits, . _ - : / and * only)`
  return undefined
}
