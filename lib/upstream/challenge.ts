// Parsing of WWW-Authenticate challenges (RFC 7235) as registries send them:
// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"`.

export interface Challenge {
  readonly scheme: string
  readonly params: Readonly<Record<string, string>>
}

/** Parses every challenge in a header value; unknown or malformed parts are skipped. */
export function parseChallenges (header: string): Challenge[] {
  const challenges: Challenge[] = []
  let current: { scheme: string, params: Record<string, string> } | undefined
  let i = 0
  const s = header
  const skipSpace = (): void => { while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++ }
  while (i < s.length) {
    skipSpace()
    if (s[i] === ',') { i++; continue }
    const tokenMatch = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/.exec(s.slice(i))
    if (tokenMatch === null) { i++; continue }
    const token = tokenMatch[0]
    i += token.length
    skipSpace()
    if (s[i] === '=') {
      // auth-param of the current challenge
      i++
      skipSpace()
      let value = ''
      if (s[i] === '"') {
        i++
        while (i < s.length && s[i] !== '"') {
          if (s[i] === '\\' && i + 1 < s.length) i++
          value += s[i]
          i++
        }
        i++
      } else {
        const m = /^[^,\s]*/.exec(s.slice(i))
        value = m?.[0] ?? ''
        i += value.length
      }
      if (current !== undefined) current.params[token.toLowerCase()] = value
    } else {
      current = { scheme: token.toLowerCase(), params: {} }
      challenges.push(current)
    }
  }
  return challenges
}
