// Who may pull what: rules from the config, evaluated in order; the first
// whose repositories match the one asked for and whose users include the
// caller decides, and the default decides when none does. Repositories are
// named as the cache names them, upstream first: docker.io/library/alpine.
// In patterns `*` matches within one path segment and `**` one or more whole
// segments. Users are names from the htpasswd file, `anonymous` (no
// credentials) and `*` (any authenticated user).

export const ANONYMOUS = 'anonymous'
export const ANY_USER = '*'

export interface AccessRule {
  readonly repositories: readonly string[]
  readonly users: readonly string[]
  readonly pull: boolean
}

export interface AccessPolicy {
  readonly rules: readonly AccessRule[]
  /** What happens when no rule matches. */
  readonly defaultPull: boolean
}

/** The caller: a user name, or undefined for anonymous. */
export type Caller = string | undefined

function compile (pattern: string): RegExp {
  const segments = pattern.split('/').map(segment => segment === '**'
    ? '[^/]+(?:/[^/]+)*'
    : segment.split('*').map(part => part.replace(/[.\\+?^${}()|[\]]/g, '\\$&')).join('[^/]*'))
  return new RegExp(`^${segments.join('/')}$`)
}

export class AccessRules {
  readonly #rules: ReadonlyArray<{ readonly patterns: readonly RegExp[], readonly users: ReadonlySet<string>, readonly pull: boolean }>
  readonly #defaultPull: boolean

  constructor (policy: AccessPolicy) {
    this.#rules = policy.rules.map(rule => ({ patterns: rule.repositories.map(compile), users: new Set(rule.users), pull: rule.pull }))
    this.#defaultPull = policy.defaultPull
  }

  mayPull (caller: Caller, repository: string): boolean {
    for (const rule of this.#rules) {
      const user = caller === undefined ? rule.users.has(ANONYMOUS) : rule.users.has(caller) || rule.users.has(ANY_USER)
      if (user && rule.patterns.some(p => p.test(repository))) return rule.pull
    }
    return this.#defaultPull
  }
}
