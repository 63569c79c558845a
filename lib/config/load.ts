// Reads mirror.config.yml once at start-up and turns it into the frozen
// MirrorConfig the rest of the mirror trusts. Every problem in the file, the
// environment and the flags is collected and thrown as one ConfigError, each
// line prefixed with the YAML path it concerns:
//
//   mirror.config.yml: upstreams.ghcr.io.url: expected an http(s) URL, got "ghcr.io"
//
// Precedence, highest first: overrides (CLI flags), environment
// (MIRROR_LISTEN, MIRROR_STORAGE_PATH, MIRROR_LOG_LEVEL), the file, defaults.
// The file is validated in full even where a flag or variable overrides it, so
// a mistake in it cannot hide until the day the override is removed.

import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { parseDocument, type YAMLError } from 'yaml'
import { defaultLoginPrefix, isUserName, parseLoginPrefix, patternProblem } from './access-grammar.js'
import { ConfigError } from '../errors.js'
import { parseAuthHost, parseBucketName, parseEnvName, parseKeyPrefix, parseListen, parseNetwork, parseRegion, parseRegistryHost, parseUpstreamUrl, type ListenAddress } from './addresses.js'
import {
  Problems, describe, duration, entriesOf, flag, integer, isMapping, join, keyName, list, nonEmptyString, oneOf, parsed, size,
  required, secret, section, withDefault, type Field
} from './fields.js'
import { deepFreeze } from './freeze.js'
import type { AccessRuleConfig, AuthConfig, MirrorConfig, S3StorageConfig, TlsConfig, UpstreamConfig } from './types.js'

export type LogLevel = MirrorConfig['log']['level']
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/** Values from the command line; undefined means the flag was not given. */
export interface ConfigOverrides {
  readonly listen?: string | undefined
  readonly storagePath?: string | undefined
  /** `--offline`: true turns offline mode on whatever the file says; false or undefined leaves the file's choice. */
  readonly offline?: boolean | undefined
}

export interface LoadConfigOptions {
  readonly file: string
  /** Defaults to process.env. */
  readonly env?: NodeJS.ProcessEnv | undefined
  readonly overrides?: ConfigOverrides | undefined
}

/** Characters of a shared token key, at least: 32 random bytes in base64 are 44. */
const MIN_TOKEN_KEY = 32
const SECOND = 1000
const MINUTE = 60 * SECOND

export const DEFAULTS = Object.freeze({
  listen: Object.freeze({ host: '0.0.0.0', port: 5000 }),
  /** Relative to the config file's directory. */
  storagePath: './data',
  tagTtl: 5 * MINUTE,
  hotEntries: 10_000,
  connectTimeout: 10 * SECOND,
  headersTimeout: 30 * SECOND,
  bodyTimeout: 60 * SECOND,
  logLevel: 'info' as LogLevel,
  highWatermark: 0.9,
  lowWatermark: 0.8,
  evictionInterval: 10 * MINUTE,
  /** Bytes per second the background scrub re-hashes: a 50 GiB cache in about 7 hours. */
  scrubRate: 2 * 1024 * 1024,
  scrubInterval: 60 * MINUTE,
  /** A request to the blob bucket that has not answered in this long is given up (the client gets a 503). */
  s3Timeout: 30 * SECOND,
  /** A client connection's time to send its request headers. */
  clientHeadersTimeout: 20 * SECOND,
  idleTimeout: 30 * SECOND,
  maxConnections: 4096,
  /**
   * Connections one address may hold open. A busy Kubernetes node's runtime
   * pulls a few layers per image at once (dockerd 3, containerd a handful)
   * over keep-alive connections: well under 100 even when 50 pods start. 256
   * leaves an address that floods the mirror 6% of maxConnections.
   */
  maxConnectionsPerClient: 256,
  maxRequestsPerClient: 128,
  /**
   * Requests per client past maxRequestsPerClient that wait for a turn. 128
   * under way and 256 waiting: a node starting 50 pods (about 200 requests
   * at once) is served in full, and an address that is not a trusted proxy,
   * holding 256 connections at most, never meets this 429.
   */
  maxQueuedPerClient: 256,
  /** A burst waits this long for a turn; sustained overload then gets 429 and backs off. */
  queueTimeout: 10 * SECOND,
  maxConcurrentDownloads: 16,
  /** How often the TLS files are checked for a renewal. */
  tlsReloadInterval: 10 * SECOND,
  /** How long verified client credentials are trusted without another bcrypt check. */
  authRemember: 5 * MINUTE,
  /** How long the mirror's bearer tokens are valid: a pull asks for one per repository. */
  authTokenTtl: 5 * MINUTE,
  authReloadInterval: 10 * SECOND,
  authMaxFailures: 10,
  authFailureWindow: MINUTE,
  /** How long a passthrough upstream's yes (per login and repository) is trusted without asking again. */
  clientAccessTtl: MINUTE,
  /**
   * Login checks a passthrough upstream is asked, per second and at once: a flood of
   * guesses at the mirror reaches it no faster (a site's pulls share one login per
   * pull secret, checked once per auth.remember).
   */
  clientLoginRate: 5,
  clientLoginConcurrency: 4
})

// ---- schema -------------------------------------------------------------
// One line per key. Adding one, e.g. storage.maxSize: declare it in types.ts
// and in FileConfig, read it here with `maxSize: size({ min: 1 })` (size() and
// friends are in fields.ts), and copy it into the result in parseConfig. An
// override such as --offline is one more layered() call there.

interface UpstreamEntry {
  url: string
  default: boolean | undefined
  username: string | undefined
  password: string | undefined
  passwordEnv: string | undefined
  authHosts: string[]
  maxConcurrentDownloads: number
  clientCredentials: 'mirror' | 'passthrough'
  clientAccessTtl: number
  clientLoginPrefix: string | undefined
  clientLoginRate: number
  clientLoginConcurrency: number
  timeouts: { connect: number, headers: number, body: number }
}

const upstreamEntry = section<UpstreamEntry>({
  url: required(parsed(parseUpstreamUrl, 'an http(s) URL'), '', 'the registry\'s base URL, e.g. "https://ghcr.io"'),
  default: flag(),
  username: nonEmptyString(),
  password: secret(),
  passwordEnv: parsed(parseEnvName, 'an environment variable name like "HUB_TOKEN"'),
  authHosts: withDefault(list(parsed(parseAuthHost, 'a host like "auth.docker.io"')), []),
  maxConcurrentDownloads: withDefault(integer({ min: 1 }), DEFAULTS.maxConcurrentDownloads),
  clientCredentials: withDefault(oneOf(['mirror', 'passthrough'] as const), 'mirror'),
  clientAccessTtl: withDefault(duration({ min: 1000 }), DEFAULTS.clientAccessTtl),
  clientLoginPrefix: parsed(parseLoginPrefix, 'the start of a user name, like "ghcr.io/"'),
  clientLoginRate: withDefault(integer({ min: 1 }), DEFAULTS.clientLoginRate),
  clientLoginConcurrency: withDefault(integer({ min: 1 }), DEFAULTS.clientLoginConcurrency),
  timeouts: section({
    connect: withDefault(duration({ min: 1 }), DEFAULTS.connectTimeout),
    headers: withDefault(duration({ min: 1 }), DEFAULTS.headersTimeout),
    body: withDefault(duration({ min: 1 }), DEFAULTS.bodyTimeout)
  })
})

interface S3Entry {
  endpoint: string | undefined
  bucket: string | undefined
  region: string
  prefix: string
  forcePathStyle: boolean
  redirect: boolean
  publicEndpoint: string | undefined
  timeout: number
  localCache: number | undefined
}

interface FileConfig {
  listen: ListenAddress
  storage: { path: string, maxSize: number | undefined, maxAge: number | undefined, highWatermark: number, lowWatermark: number, evictionInterval: number, scrubRate: number, scrubInterval: number, s3: S3Entry }
  upstreams: Map<string, UpstreamConfig>
  cache: { tagTtl: number, hotEntries: number }
  log: { level: LogLevel }
  metrics: { enabled: boolean, listen: ListenAddress | undefined, token: string | undefined, tokenEnv: string | undefined }
  limits: { headersTimeout: number, idleTimeout: number, maxConnections: number, maxConnectionsPerClient: number, maxRequestsPerClient: number, maxQueuedPerClient: number, queueTimeout: number, trustedProxies: string[] }
  tls: { cert: string | undefined, key: string | undefined, clientCA: string | undefined, reloadInterval: number }
  auth: { htpasswd: string | undefined, realm: string, remember: number, tokenTtl: number, tokenKeyEnv: string | undefined, reloadInterval: number, anonymousNetworks: string[] | undefined, maxFailures: number, failureWindow: number }
  access: { default: 'deny' | 'pull' | undefined, rules: AccessRuleConfig[] | undefined }
  offline: boolean
}

function fileSchema (env: NodeJS.ProcessEnv): Field<FileConfig> {
  return section<FileConfig>({
    listen: withDefault(parsed(parseListen, '"host:port", "[ipv6]:port" or ":port" (quote IPv6 addresses)'), DEFAULTS.listen),
    storage: section({
      path: withDefault(nonEmptyString(), DEFAULTS.storagePath),
      maxSize: size({ min: 1 }),
      maxAge: duration({ min: 1 }),
      highWatermark: withDefault(parsed(parseFraction, 'a fraction of maxSize like 0.9 or "90%"'), DEFAULTS.highWatermark),
      lowWatermark: withDefault(parsed(parseFraction, 'a fraction of maxSize like 0.8 or "80%"'), DEFAULTS.lowWatermark),
      evictionInterval: withDefault(duration({ min: 1000 }), DEFAULTS.evictionInterval),
      scrubRate: withDefault(size(), DEFAULTS.scrubRate),
      scrubInterval: withDefault(duration({ min: 1000 }), DEFAULTS.scrubInterval),
      s3: section<S3Entry>({
        endpoint: parsed(parseUpstreamUrl, 'an http(s) URL like "https://s3.example.com"'),
        bucket: parsed(parseBucketName, 'an S3 bucket name like "registry-mirror"'),
        region: withDefault(parsed(parseRegion, 'a region like "us-east-1"'), 'us-east-1'),
        prefix: withDefault(parsed(parseKeyPrefix, 'a key prefix like "mirror/"'), ''),
        forcePathStyle: withDefault(flag(), false),
        redirect: withDefault(flag(), false),
        publicEndpoint: parsed(parseUpstreamUrl, 'an http(s) URL like "https://s3.example.com"'),
        timeout: withDefault(duration({ min: 100 }), DEFAULTS.s3Timeout),
        localCache: size({ min: 1 })
      })
    }),
    upstreams: upstreams(env),
    cache: section({
      tagTtl: withDefault(duration(), DEFAULTS.tagTtl),
      hotEntries: withDefault(integer({ min: 1 }), DEFAULTS.hotEntries)
    }),
    log: section({
      level: withDefault(oneOf(LOG_LEVELS), DEFAULTS.logLevel)
    }),
    metrics: section({
      enabled: withDefault(flag(), true),
      listen: parsed(parseListen, '"host:port", "[ipv6]:port" or ":port"'),
      token: secret(),
      tokenEnv: parsed(parseEnvName, 'an environment variable name like "METRICS_TOKEN"')
    }),
    limits: section({
      headersTimeout: withDefault(duration({ min: 1000 }), DEFAULTS.clientHeadersTimeout),
      idleTimeout: withDefault(duration({ min: 1000 }), DEFAULTS.idleTimeout),
      maxConnections: withDefault(integer({ min: 1 }), DEFAULTS.maxConnections),
      maxConnectionsPerClient: withDefault(integer({ min: 1 }), DEFAULTS.maxConnectionsPerClient),
      maxRequestsPerClient: withDefault(integer({ min: 1 }), DEFAULTS.maxRequestsPerClient),
      maxQueuedPerClient: withDefault(integer({ min: 0 }), DEFAULTS.maxQueuedPerClient),
      queueTimeout: withDefault(duration({ min: 1 }), DEFAULTS.queueTimeout),
      trustedProxies: withDefault(list(parsed(parseNetwork, 'a CIDR network like "10.0.0.0/8" or "fd00::/8"')), [])
    }),
    tls: section({
      cert: nonEmptyString(),
      key: nonEmptyString(),
      clientCA: nonEmptyString(),
      reloadInterval: withDefault(duration({ min: 100 }), DEFAULTS.tlsReloadInterval)
    }),
    auth: section({
      htpasswd: nonEmptyString(),
      realm: withDefault(parsed(parseRealm, 'a realm name of printable characters without quotes'), 'registry-mirror'),
      remember: withDefault(duration({ min: 1000 }), DEFAULTS.authRemember),
      tokenTtl: withDefault(duration({ min: 10_000 }), DEFAULTS.authTokenTtl),
      tokenKeyEnv: parsed(parseEnvName, 'an environment variable name like "MIRROR_TOKEN_KEY"'),
      reloadInterval: withDefault(duration({ min: 100 }), DEFAULTS.authReloadInterval),
      anonymousNetworks: list(parsed(parseNetwork, 'a CIDR network like "10.0.0.0/8" or "fd00::/8"')),
      maxFailures: withDefault(integer({ min: 1 }), DEFAULTS.authMaxFailures),
      failureWindow: withDefault(duration({ min: 1000 }), DEFAULTS.authFailureWindow)
    }),
    access: section({
      default: oneOf(['deny', 'pull'] as const),
      rules: list(accessRule())
    }),
    offline: withDefault(flag(), false)
  })
}

function accessRule (): Field<AccessRuleConfig | undefined> {
  const fields = section({
    repositories: required(list(parsed(parsePattern, 'a repository pattern like "docker.io/library/*"')), []),
    users: required(list(parsed(parseRuleUser, 'a user name, "anonymous" or "*"')), []),
    pull: required(flag(), false, 'true lets the users pull, false refuses them')
  })
  return (value, path, problems) => {
    const rule = fields(value, path, problems)
    // An empty list, not one whose items were all refused (those are named already).
    const named = (key: string): boolean => problems.list.some(p => p.startsWith(join(path, key)))
    if (rule.repositories.length === 0 && !named('repositories')) problems.add(join(path, 'repositories'), 'lists no pattern')
    if (rule.users.length === 0 && !named('users')) problems.add(join(path, 'users'), 'lists no user')
    return rule
  }
}

/**
 * The `upstreams` mapping, keyed by registry host, in file order. Which one
 * is the default (for requests that name no registry):
 * 1. the one with `default: true` (more than one is a problem);
 * 2. else `docker.io`, if configured, since dockerd's registry-mirrors only mirror Docker Hub;
 * 3. else the only upstream, if there is just one;
 * 4. else none, and such requests are refused at request time.
 * An upstream with an explicit `default: false` is never picked by 2 or 3.
 */
function upstreams (env: NodeJS.ProcessEnv): Field<Map<string, UpstreamConfig>> {
  return (value, path, problems) => {
    const result = new Map<string, UpstreamConfig>()
    const needOne = 'at least one upstream is required, e.g. docker.io with url https://registry-1.docker.io'
    if (value === undefined || value === null) {
      problems.add(path, needOne)
      return result
    }
    if (!isMapping(value)) {
      problems.add(path, `expected a mapping of registry hosts to upstreams, got ${describe(value)}`)
      return result
    }
    const entries = entriesOf(value)
    if (entries.length === 0) problems.add(path, needOne)

    const drafts: Array<{ name: string, entry: UpstreamEntry, credentials: Credentials }> = []
    for (const [key, raw] of entries) {
      const name = keyName(key)
      const entryPath = join(path, name)
      if (typeof key !== 'string') {
        problems.add(entryPath, `expected a registry host like "docker.io" or "localhost:5001", got ${describe(key)}`)
      } else {
        try {
          parseRegistryHost(key)
        } catch (err) {
          problems.add(entryPath, messageOf(err))
        }
      }
      const entry = upstreamEntry(raw, entryPath, problems)
      const written = new Set(isMapping(raw) ? entriesOf(raw).map(([field]) => field) : [])
      if (entry.clientCredentials !== 'passthrough') {
        for (const field of ['clientLoginPrefix', 'clientLoginRate', 'clientLoginConcurrency']) {
          if (written.has(field)) problems.add(join(entryPath, field), 'only with clientCredentials: passthrough')
        }
      }
      drafts.push({ name, entry, credentials: credentials(entry, written, entryPath, env, problems) })
    }

    const passthrough = drafts.filter(draft => draft.entry.clientCredentials === 'passthrough').map(draft => draft.name)
    if (passthrough.length > 1) {
      // A client has one login for the mirror's host: sent to two registries, one would learn the other's password.
      problems.add(path, `at most one upstream may set clientCredentials: passthrough (a client's login for the mirror must reach one registry only), got ${passthrough.join(', ')}`)
    }
    const explicit = drafts.filter(draft => draft.entry.default === true).map(draft => draft.name)
    if (explicit.length > 1) {
      problems.add(path, `at most one upstream may set default: true, got ${explicit.join(', ')}`)
    }
    const eligible = drafts.filter(draft => draft.entry.default !== false).map(draft => draft.name)
    let defaultName: string | undefined
    if (explicit.length > 0) defaultName = explicit[0]
    else if (eligible.includes('docker.io')) defaultName = 'docker.io'
    else if (drafts.length === 1) defaultName = eligible[0]

    for (const { name, entry } of drafts) {
      if (entry.clientCredentials === 'passthrough' && entry.clientLoginPrefix === undefined && defaultLoginPrefix(name).includes(':')) {
        problems.add(join(join(path, name), 'clientLoginPrefix'), `needed: ${name} holds a colon even without its port, and a user name cannot (e.g. clientLoginPrefix: "upstream/")`)
      }
    }
    for (const { name, entry, credentials } of drafts) {
      result.set(name, {
        name,
        url: entry.url,
        default: name === defaultName,
        username: credentials.username,
        password: credentials.password,
        authHosts: entry.authHosts,
        maxConcurrentDownloads: entry.maxConcurrentDownloads,
        passthrough: entry.clientCredentials === 'passthrough'
          ? {
              ttl: entry.clientAccessTtl,
              loginPrefix: entry.clientLoginPrefix ?? defaultLoginPrefix(name),
              loginRate: entry.clientLoginRate,
              loginConcurrency: entry.clientLoginConcurrency
            }
          : undefined,
        connectTimeout: entry.timeouts.connect,
        headersTimeout: entry.timeouts.headers,
        bodyTimeout: entry.timeouts.body
      })
    }
    return result
  }
}

interface Credentials { username: string | undefined, password: string | undefined }

/**
 * Pairs username with password or passwordEnv. `written` holds the keys
 * present in the file, valid or not, so that a bad password is reported once
 * and not again as a missing one. Messages name variables, never a password.
 */
function credentials (entry: UpstreamEntry, written: ReadonlySet<unknown>, path: string, env: NodeJS.ProcessEnv, problems: Problems): Credentials {
  const { username, password, passwordEnv } = entry
  if (written.has('password') && written.has('passwordEnv')) {
    problems.add(join(path, 'passwordEnv'), 'give either password or passwordEnv, not both')
  }
  let secretValue = password
  if (passwordEnv !== undefined) {
    const fromEnv = env[passwordEnv]
    if (fromEnv === undefined || fromEnv === '') {
      problems.add(join(path, 'passwordEnv'), `environment variable ${passwordEnv} is ${fromEnv === undefined ? 'not set' : 'empty'}`)
    } else {
      secretValue ??= fromEnv
    }
  }
  const hasUser = written.has('username')
  const hasSecret = written.has('password') || written.has('passwordEnv')
  if (hasUser && !hasSecret) {
    problems.add(join(path, 'username'), 'needs password or passwordEnv as well')
  } else if (!hasUser && hasSecret) {
    problems.add(join(path, written.has('password') ? 'password' : 'passwordEnv'), 'needs username as well')
  }
  return { username, password: secretValue }
}

// ---- entry points -------------------------------------------------------

/**
 * Reads and validates the config file. A missing or unreadable file, like
 * every other problem, is a ConfigError naming the file.
 */
export async function loadConfig (options: LoadConfigOptions): Promise<MirrorConfig> {
  let text: string
  try {
    text = await readFile(options.file, 'utf8')
  } catch (err) {
    throw new ConfigError(options.file, [`cannot read the config file: ${messageOf(err)}`])
  }
  return parseConfig(text, options.file, options.env, options.overrides)
}

/**
 * Validates config text. `source` names the file in messages and anchors
 * relative paths in it (storage.path resolves against its directory);
 * relative paths from the environment or flags resolve against the working
 * directory, as paths typed in a shell do. An empty environment variable
 * counts as unset.
 *
 * The result is deep-frozen; `upstreams` is a ReadOnlyMap (a Map whose
 * set/delete/clear throw) of frozen UpstreamConfigs.
 */
export function parseConfig (
  text: string,
  source: string,
  env: NodeJS.ProcessEnv = process.env,
  overrides: ConfigOverrides = {}
): MirrorConfig {
  const document = readYaml(text, source)
  const problems = new Problems()
  const file = fileSchema(env)(document, '', problems)

  const listen = layered(problems, parseListen, [
    ['listen (from --listen)', overrides.listen],
    ['listen (from MIRROR_LISTEN)', fromEnv(env, 'MIRROR_LISTEN')]
  ]) ?? file.listen

  const storagePathOverride = layered(problems, nonEmptyPath, [
    ['storage.path (from --storage-path)', overrides.storagePath],
    ['storage.path (from MIRROR_STORAGE_PATH)', fromEnv(env, 'MIRROR_STORAGE_PATH')]
  ])
  const storagePath = storagePathOverride !== undefined
    ? resolve(storagePathOverride)
    : resolve(dirname(resolve(source)), file.storage.path)

  const level = layered(problems, logLevel, [
    ['log.level (from MIRROR_LOG_LEVEL)', fromEnv(env, 'MIRROR_LOG_LEVEL')]
  ]) ?? file.log.level

  const perClient = file.limits.maxConnectionsPerClient
  if (perClient > file.limits.maxConnections && written(document, 'limits', 'maxConnectionsPerClient')) {
    problems.add('limits.maxConnectionsPerClient', `must be at most limits.maxConnections (${file.limits.maxConnections}), got ${perClient}: it is one address's share of them`)
  }

  const s3 = s3Config(file.storage.s3, written(document, 'storage', 's3'), problems)

  if (file.storage.lowWatermark >= file.storage.highWatermark) {
    problems.add('storage.lowWatermark', `must be below storage.highWatermark (${file.storage.highWatermark}), got ${file.storage.lowWatermark}`)
  }

  let metricsToken = file.metrics.token
  if (file.metrics.tokenEnv !== undefined) {
    if (metricsToken !== undefined) problems.add('metrics.tokenEnv', 'give either token or tokenEnv, not both')
    const fromVariable = fromEnv(env, file.metrics.tokenEnv)
    if (fromVariable === undefined) problems.add('metrics.tokenEnv', `environment variable ${file.metrics.tokenEnv} is not set or empty`)
    metricsToken ??= fromVariable
  }

  const tls = tlsConfig(file.tls, dirname(resolve(source)), problems)
  const passthrough = [...file.upstreams.values()].some(u => u.passthrough !== undefined)
  const auth = authConfig(file, dirname(resolve(source)), passthrough, env, problems)
  if (auth !== undefined && file.metrics.enabled && file.metrics.listen === undefined && metricsToken === undefined) {
    problems.add('metrics.token', 'with auth set, /metrics on the main listener needs a token (or give metrics.listen an address of its own, or set metrics.enabled: false)')
  }

  if (problems.list.length > 0) throw new ConfigError(source, problems.list)

  const config: MirrorConfig = {
    source,
    listen: { host: listen.host, port: listen.port },
    storage: {
      path: storagePath,
      maxSize: file.storage.maxSize,
      maxAge: file.storage.maxAge,
      highWatermark: file.storage.highWatermark,
      lowWatermark: file.storage.lowWatermark,
      evictionInterval: file.storage.evictionInterval,
      scrubRate: file.storage.scrubRate,
      scrubInterval: file.storage.scrubInterval,
      s3
    },
    upstreams: file.upstreams,
    cache: { tagTtl: file.cache.tagTtl, hotEntries: file.cache.hotEntries },
    log: { level },
    metrics: {
      enabled: file.metrics.enabled,
      listen: file.metrics.listen === undefined ? undefined : { host: file.metrics.listen.host, port: file.metrics.listen.port },
      token: metricsToken
    },
    limits: { ...file.limits },
    tls,
    auth,
    offline: overrides.offline === true || file.offline
  }
  return deepFreeze(config)
}

// ---- helpers ------------------------------------------------------------

/**
 * auth needs its htpasswd file, unless an upstream is in passthrough mode (whose
 * logins are that upstream's); access rules need the file. Without an access
 * section, users pull everything and anonymous callers nothing; with passthrough
 * and no users, everyone pulls from the other upstreams, as without auth.
 */
function authConfig (file: FileConfig, base: string, passthrough: boolean, env: NodeJS.ProcessEnv, problems: Problems): AuthConfig | undefined {
  const { auth, access } = file
  const accessGiven = access.default !== undefined || access.rules !== undefined
  if (auth.htpasswd === undefined) {
    if (accessGiven) problems.add('access', 'needs auth.htpasswd: rules name users, and users log in')
    if (!passthrough) {
      if (auth.anonymousNetworks !== undefined) problems.add('auth.htpasswd', 'missing: auth.anonymousNetworks is set, and auth needs its users')
      return undefined
    }
  }
  if (access.rules !== undefined && access.default === undefined) problems.add('access.default', 'is required with rules: "deny" or "pull", for a repository no rule matches')
  let tokenKey: string | undefined
  if (auth.tokenKeyEnv !== undefined) {
    // Shared by every mirror behind one balancer, so that a token one issued is good at all of them.
    tokenKey = fromEnv(env, auth.tokenKeyEnv)
    if (tokenKey === undefined) problems.add('auth.tokenKeyEnv', `environment variable ${auth.tokenKeyEnv} is not set or empty`)
    else if (tokenKey.length < MIN_TOKEN_KEY) problems.add('auth.tokenKeyEnv', `environment variable ${auth.tokenKeyEnv} holds ${tokenKey.length} characters; a token key needs at least ${MIN_TOKEN_KEY} (openssl rand -base64 32)`)
  }
  const everyone = { repositories: ['**'], users: ['anonymous', '*'], pull: true }
  return {
    htpasswd: auth.htpasswd === undefined ? undefined : resolve(base, auth.htpasswd),
    realm: auth.realm,
    remember: auth.remember,
    tokenTtl: auth.tokenTtl,
    tokenKey,
    reloadInterval: auth.reloadInterval,
    anonymousNetworks: auth.anonymousNetworks,
    maxFailures: auth.maxFailures,
    failureWindow: auth.failureWindow,
    rules: access.rules ?? (auth.htpasswd === undefined ? [everyone] : [{ repositories: ['**'], users: ['*'], pull: true }]),
    defaultPull: access.default === 'pull'
  }
}

/** cert and key go together; clientCA needs them. Paths resolve against the config file's directory. */
function tlsConfig (tls: FileConfig['tls'], base: string, problems: Problems): TlsConfig | undefined {
  if (tls.cert === undefined && tls.key === undefined) {
    if (tls.clientCA !== undefined) problems.add('tls.clientCA', 'needs tls.cert and tls.key: client certificates are checked only over TLS')
    return undefined
  }
  if (tls.cert === undefined) problems.add('tls.cert', 'missing: tls.key is set, and TLS needs both')
  if (tls.key === undefined) problems.add('tls.key', 'missing: tls.cert is set, and TLS needs both')
  if (tls.cert === undefined || tls.key === undefined) return undefined
  return {
    cert: resolve(base, tls.cert),
    key: resolve(base, tls.key),
    clientCA: tls.clientCA === undefined ? undefined : resolve(base, tls.clientCA),
    reloadInterval: tls.reloadInterval
  }
}

/** 0.9 or "90%": a fraction in (0, 1]. */
function parseRealm (text: string): string {
  if (!/^[\x20-\x7e]{1,100}$/.test(text) || text.includes('"') || text.includes('\\')) throw new Error(`expected a realm name of printable characters without quotes, got "${text}"`)
  return text
}

function parsePattern (text: string): string {
  const problem = patternProblem(text)
  if (problem !== undefined) throw new Error(problem)
  return text
}

function parseRuleUser (text: string): string {
  if (!isUserName(text)) throw new Error(`expected a user name, "anonymous" or "*", got "${text}"`)
  return text
}

function parseFraction (text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$/.exec(text)
  if (m === null) throw new Error(`expected a fraction like 0.9 or "90%", got "${text}"`)
  const value = Number(m[1]) / (m[2] === '%' ? 100 : 1)
  if (!(value > 0 && value <= 1)) throw new Error(`expected a fraction above 0 and at most 1 (or 100%), got "${text}"`)
  return value
}

function readYaml (text: string, source: string): unknown {
  const document = parseDocument(text, { prettyErrors: true, uniqueKeys: true })
  const problems = [...document.errors, ...document.warnings].map(formatYamlError)
  if (problems.length > 0) throw new ConfigError(source, problems)
  if (document.contents === null) {
    throw new ConfigError(source, ['the file is empty; it needs at least an "upstreams" mapping (see mirror.config.yml)'])
  }
  try {
    return document.toJS({ mapAsMap: true })
  } catch (err) {
    // e.g. an alias bomb exceeding maxAliasCount
    throw new ConfigError(source, [messageOf(err)])
  }
}

/** `line 3, column 5: Map keys must be unique` — the first line of yaml's message, without its snippet. */
function formatYamlError (error: YAMLError): string {
  const first = (error.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '')
  const position = error.linePos?.[0]
  return position === undefined ? first : `line ${position.line}, column ${position.col}: ${first}`
}

/** The first layer that is present wins; a present but invalid layer is a problem, not a fall-through. */
function layered<T> (problems: Problems, parse: (text: string) => T, layers: Array<[label: string, value: string | undefined]>): T | undefined {
  for (const [label, value] of layers) {
    if (value === undefined) continue
    try {
      return parse(value)
    } catch (err) {
      problems.add(label, messageOf(err))
      return undefined
    }
  }
  return undefined
}

/** storage.s3, when the file has it: a bucket is required, and redirects need nothing else. */
function s3Config (entry: S3Entry, present: boolean, problems: Problems): S3StorageConfig | undefined {
  if (!present) return undefined
  if (entry.bucket === undefined) {
    if (!problems.list.some(p => p.startsWith('storage.s3.bucket'))) problems.add('storage.s3.bucket', 'is required with storage.s3 (the bucket blobs go to; credentials come from the environment, e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)')
    return undefined
  }
  if (entry.publicEndpoint !== undefined && !entry.redirect) problems.add('storage.s3.publicEndpoint', 'is used only with redirect: true')
  return { ...entry, bucket: entry.bucket }
}

/** Whether the file itself sets `section.key` (a default may exceed a bound the file lowered). */
function written (document: unknown, section: string, key: string): boolean {
  if (!isMapping(document)) return false
  const inner = new Map(entriesOf(document)).get(section)
  return isMapping(inner) && new Map(entriesOf(inner)).has(key)
}

function fromEnv (env: NodeJS.ProcessEnv, key: string): string | undefined {
  const value = env[key]
  return value === undefined || value === '' ? undefined : value
}

function nonEmptyPath (value: string): string {
  if (value.trim() === '') throw new Error('expected a directory path, got ""')
  return value
}

function logLevel (value: string): LogLevel {
  const level = LOG_LEVELS.find(candidate => candidate === value)
  if (level === undefined) throw new Error(`expected one of ${LOG_LEVELS.join(', ')}; got ${JSON.stringify(value)}`)
  return level
}

function messageOf (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
