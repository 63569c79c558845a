// A client's own login for an upstream in passthrough mode
// (`clientCredentials: passthrough`): the user name and password a client
// gave the mirror, handed to that upstream only, and held in memory only.
// `key` names the login in caches (tokens, access decisions): an HMAC of the
// pair keyed by a secret made at start, never the secret itself.

export interface ClientLogin {
  readonly username: string
  readonly password: string
  /** HMAC of username and password under the mirror's start-up secret: what caches are keyed by. */
  readonly key: string
}

/**
 * Who asks an upstream in passthrough mode: a client with its own login, or
 * an anonymous one (no login). The mirror's own configured credentials are
 * never used for such a request.
 */
export interface PassthroughCaller {
  readonly login: ClientLogin | undefined
}

/** The caches' name for a caller: the login's key, or anonymous. */
export function callerKey (caller: PassthroughCaller): string {
  return caller.login === undefined ? 'anonymous' : `login:${caller.login.key}`
}
