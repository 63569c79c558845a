// What the access rules' words may be, as the config checks them at start:
// user names (as htpasswd and the Basic scheme allow them) and repository
// patterns (`docker.io/library/*`, `ghcr.io/acme/**`). The rules themselves
// live in lib/auth/access-rules.ts, which compiles the patterns checked here.

/** A user name as htpasswd and the Basic scheme allow it: no colon, no white space or control characters. */
export function isUserName (name: string): boolean {
  return /^[^:\s\p{Cc}]{1,256}$/u.test(name)
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
