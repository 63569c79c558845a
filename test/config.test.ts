import t from 'tap'
import { readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ConfigError } from '../lib/errors.js'
import { loadConfig, parseConfig, type ConfigOverrides } from '../lib/config/load.js'
import type { MirrorConfig } from '../lib/config/types.js'

const SOURCE = '/srv/mirror/mirror.config.yml'

const HUB = `upstreams:
  docker.io:
    url: https://registry-1.docker.io
`

function parse (yaml: string, env: NodeJS.ProcessEnv = {}, overrides?: ConfigOverrides): MirrorConfig {
  return parseConfig(yaml, SOURCE, env, overrides)
}

/** The problems of the ConfigError that parsing `yaml` throws. */
function problemsOf (yaml: string, env: NodeJS.ProcessEnv = {}, overrides?: ConfigOverrides): readonly string[] {
  try {
    parse(yaml, env, overrides)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  throw new Error('expected a ConfigError, but the config was accepted')
}

function upstream (config: MirrorConfig, name: string): NonNullable<ReturnType<MirrorConfig['upstreams']['get']>> {
  const found = config.upstreams.get(name)
  if (found === undefined) throw new Error(`no upstream ${name}`)
  return found
}

t.test('the shipped mirror.config.yml is valid as it is', async t => {
  const file = fileURLToPath(new URL('../mirror.config.yml', import.meta.url))
  const config = parseConfig(await readFile(file, 'utf8'), file, {})
  t.same(config.listen, { host: '0.0.0.0', port: 5000 })
  t.equal(config.storage.path, resolve(file, '..', 'data'))
  t.same([...config.upstreams.keys()], ['docker.io', 'ghcr.io', 'quay.io'])
  t.same(
    [...config.upstreams.values()].map(u => [u.url, u.default]),
    [['https://registry-1.docker.io', true], ['https://ghcr.io', false], ['https://quay.io', false]]
  )
  t.equal(config.cache.tagTtl, 5 * 60_000)
  t.equal(config.log.level, 'info')
})

t.test('a minimal file gets every default', async t => {
  const config = parse(HUB)
  t.same(config, {
    source: SOURCE,
    listen: { host: '0.0.0.0', port: 5000 },
    storage: { path: '/srv/mirror/data', maxSize: undefined, maxAge: undefined, highWatermark: 0.9, lowWatermark: 0.8, evictionInterval: 600_000, scrubRate: 2 * 1024 * 1024, scrubInterval: 3_600_000 },
    upstreams: new Map([['docker.io', {
      name: 'docker.io',
      url: 'https://registry-1.docker.io',
      default: true,
      username: undefined,
      password: undefined,
      authHosts: [],
      maxConcurrentDownloads: 16,
      connectTimeout: 10_000,
      headersTimeout: 30_000,
      bodyTimeout: 60_000
    }]]),
    cache: { tagTtl: 300_000, hotEntries: 10_000 },
    log: { level: 'info' },
    metrics: { enabled: true, listen: undefined, token: undefined },
    limits: { headersTimeout: 20_000, idleTimeout: 30_000, maxConnections: 4096, maxConnectionsPerClient: 256, maxRequestsPerClient: 128, maxQueuedPerClient: 256, queueTimeout: 10_000, trustedProxies: [] },
    offline: false
  })
})

t.test('metrics: a separate listener and a bearer token, from the file or the environment', async t => {
  const config = parse(`${HUB}metrics:
  listen: 127.0.0.1:9090
  tokenEnv: METRICS_TOKEN
`, { METRICS_TOKEN: 's3cret' })
  t.same(config.metrics, { enabled: true, listen: { host: '127.0.0.1', port: 9090 }, token: 's3cret' })
  t.same(problemsOf(`${HUB}metrics: { tokenEnv: METRICS_TOKEN }`), ['metrics.tokenEnv: environment variable METRICS_TOKEN is not set or empty'])
  t.same(problemsOf(`${HUB}metrics: { listen: nowhere }`).length, 1)
})

t.test('eviction bounds take human units and watermarks as fractions or percentages', async t => {
  const config = parse(`${HUB}storage:
  path: ./data
  maxSize: 50GiB
  maxAge: 30d
  highWatermark: 95%
  lowWatermark: 0.75
  evictionInterval: 5m
`)
  t.equal(config.storage.maxSize, 50 * 1024 ** 3)
  t.equal(config.storage.maxAge, 30 * 24 * 3600 * 1000)
  t.equal(config.storage.highWatermark, 0.95)
  t.equal(config.storage.lowWatermark, 0.75)
  t.equal(config.storage.evictionInterval, 300_000)
  t.same(problemsOf(`${HUB}storage: { maxSize: lots, maxAge: 30, highWatermark: 150%, lowWatermark: 0 }`), [
    'storage.maxSize: expected a size like "50GiB" or "500MB", got "lots"',
    'storage.maxAge: expected a duration like "5m" or "1h30m", got "30" (a bare number is ambiguous; add a unit, e.g. "30s")',
    'storage.highWatermark: expected a fraction above 0 and at most 1 (or 100%), got "150%"',
    'storage.lowWatermark: expected a fraction above 0 and at most 1 (or 100%), got "0"'
  ])
  t.same(problemsOf(`${HUB}storage: { highWatermark: 0.5, lowWatermark: 0.6 }`), [
    'storage.lowWatermark: must be below storage.highWatermark (0.5), got 0.6'
  ])
})

t.test('a full file maps onto MirrorConfig', async t => {
  const config = parse(`
listen: 127.0.0.1:6000
storage:
  path: /var/cache/mirror
upstreams:
  quay.io:
    url: https://quay.io/
  docker.io:
    url: https://registry-1.docker.io
    username: someone
    password: secret
    authHosts: [auth.docker.io]
    timeouts: { connect: 2s, headers: 1m, body: 1m30s }
  localhost:5001:
    url: HTTP://LocalHost:5001//
  ghcr.io:
    url: https://ghcr.io:443/
cache:
  tagTtl: 1h30m
  hotEntries: 50
log:
  level: debug
`)
  t.same(config.listen, { host: '127.0.0.1', port: 6000 })
  t.equal(config.storage.path, '/var/cache/mirror')
  t.same([...config.upstreams.keys()], ['quay.io', 'docker.io', 'localhost:5001', 'ghcr.io'], 'file order is kept')
  t.equal(upstream(config, 'quay.io').url, 'https://quay.io', 'trailing slash stripped')
  t.equal(upstream(config, 'localhost:5001').url, 'http://localhost:5001', 'scheme and host lowercased')
  t.equal(upstream(config, 'ghcr.io').url, 'https://ghcr.io', 'default port dropped')
  t.same(upstream(config, 'docker.io'), {
    name: 'docker.io',
    url: 'https://registry-1.docker.io',
    default: true,
    username: 'someone',
    password: 'secret',
    authHosts: ['auth.docker.io'],
    maxConcurrentDownloads: 16,
    connectTimeout: 2000,
    headersTimeout: 60_000,
    bodyTimeout: 90_000
  })
  t.same(config.cache, { tagTtl: 5_400_000, hotEntries: 50 })
  t.equal(config.log.level, 'debug')
})

t.test('an upstream URL may carry a path', async t => {
  const config = parse('upstreams:\n  docker.io:\n    url: https://harbor.example/v2-proxy/hub/\n')
  t.equal(upstream(config, 'docker.io').url, 'https://harbor.example/v2-proxy/hub')
})

t.test('listen accepts host:port, :port and [ipv6]:port', async t => {
  const cases: Array<[string, { host: string, port: number }]> = [
    ['0.0.0.0:5000', { host: '0.0.0.0', port: 5000 }],
    ['localhost:8080', { host: 'localhost', port: 8080 }],
    ['mirror.internal:443', { host: 'mirror.internal', port: 443 }],
    [':5000', { host: '0.0.0.0', port: 5000 }],
    ['"[::]:5000"', { host: '::', port: 5000 }],
    ['"[::1]:65535"', { host: '::1', port: 65535 }],
    ['127.0.0.1:0', { host: '127.0.0.1', port: 0 }]
  ]
  for (const [yaml, expected] of cases) t.same(parse(`listen: ${yaml}\n${HUB}`).listen, expected, yaml)
})

t.test('listen rejects anything else, naming the value', async t => {
  const expected = (value: string): string => `listen: expected "host:port", "[ipv6]:port" or ":port", got ${value}`
  t.same(problemsOf(`listen: 5000\n${HUB}`), [expected('"5000"')])
  t.same(problemsOf(`listen: localhost\n${HUB}`), [expected('"localhost"')])
  t.same(problemsOf(`listen: "localhost:"\n${HUB}`), [`${expected('"localhost:"')} (the port must be a number from 0 to 65535)`])
  t.same(problemsOf(`listen: 0.0.0.0:65536\n${HUB}`), [`${expected('"0.0.0.0:65536"')} (the port must be a number from 0 to 65535)`])
  t.same(problemsOf(`listen: 0.0.0.0:http\n${HUB}`), [`${expected('"0.0.0.0:http"')} (the port must be a number from 0 to 65535)`])
  t.same(problemsOf(`listen: "::1:5000"\n${HUB}`), [`${expected('"::1:5000"')} (put IPv6 addresses in brackets, e.g. "[::]:5000")`])
  t.same(problemsOf(`listen: "[nope]:5000"\n${HUB}`), [`${expected('"[nope]:5000"')} ("nope" is not an IPv6 address)`])
  t.same(problemsOf(`listen: 999.1.1.1:5000\n${HUB}`), [`${expected('"999.1.1.1:5000"')} ("999.1.1.1" is not a hostname or IPv4 address)`])
  t.same(problemsOf(`listen: under_score:5000\n${HUB}`), [`${expected('"under_score:5000"')} ("under_score" is not a hostname or IPv4 address)`])
  t.same(problemsOf(`listen: { port: 5000 }\n${HUB}`), [
    'listen: expected "host:port", "[ipv6]:port" or ":port" (quote IPv6 addresses), got a mapping'
  ])
})

t.test('storage.path', async t => {
  t.test('relative paths resolve against the config file directory', async t => {
    t.equal(parse(`storage: { path: ./cache }\n${HUB}`).storage.path, '/srv/mirror/cache')
    t.equal(parse(`storage: { path: ../shared/blobs }\n${HUB}`).storage.path, '/srv/shared/blobs')
    t.equal(parseConfig(HUB, 'conf/mirror.yml', {}).storage.path, resolve('conf', 'data'), 'against a relative source too')
  })
  t.test('absolute paths are kept', async t => {
    t.equal(parse(`storage: { path: /data/mirror }\n${HUB}`).storage.path, '/data/mirror')
  })
  t.test('an empty storage section means defaults', async t => {
    t.equal(parse(`storage:\n${HUB}`).storage.path, '/srv/mirror/data')
  })
  t.test('must be a non-empty string', async t => {
    t.same(problemsOf(`storage: { path: "" }\n${HUB}`), ['storage.path: expected a non-empty string, got ""'])
    t.same(problemsOf(`storage: { path: 42 }\n${HUB}`), ['storage.path: expected a string, got 42 (quote it: "42")'])
    t.same(problemsOf(`storage: ./data\n${HUB}`), ['storage: expected a mapping, got "./data"'])
  })
})

t.test('storage.s3: a bucket, its endpoint and addressing, checked; credentials never from the file', async t => {
  t.equal(parse(HUB).storage.s3, undefined, 'blobs on local disk unless storage.s3 is written')
  t.same(parse(`storage:\n  s3: { bucket: registry-mirror }\n${HUB}`).storage.s3, {
    endpoint: undefined, bucket: 'registry-mirror', region: 'us-east-1', prefix: '', forcePathStyle: false, redirect: false, publicEndpoint: undefined, timeout: 30_000, localCache: undefined
  }, 'AWS defaults')
  t.equal(parse(`storage:\n  s3: { bucket: blobs, localCache: 20GiB }\n${HUB}`).storage.s3?.localCache, 20 * 1024 ** 3, 'a local disk in front, by size')
  t.same(parse(`storage:\n  s3: { endpoint: "http://rgw.local:7480/", bucket: blobs, region: eu-1, prefix: /fleet/a, forcePathStyle: true, redirect: true, publicEndpoint: "https://s3.example.com", timeout: 5s }\n${HUB}`).storage.s3, {
    endpoint: 'http://rgw.local:7480', bucket: 'blobs', region: 'eu-1', prefix: 'fleet/a/', forcePathStyle: true, redirect: true, publicEndpoint: 'https://s3.example.com', timeout: 5000
  }, 'a prefix is a folder: no leading slash, one trailing')
  t.same(problemsOf(`storage:\n  s3: { endpoint: "http://rgw.local" }\n${HUB}`), [
    'storage.s3.bucket: is required with storage.s3 (the bucket blobs go to; credentials come from the environment, e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)'
  ])
  t.same(problemsOf(`storage:\n  s3: { bucket: Blobs_1, endpoint: "ftp://x", region: "us east", prefix: "../up", publicEndpoint: "https://s3.example.com", accessKey: AKIA }\n${HUB}`), [
    'storage.s3.endpoint: expected an http(s) URL, got "ftp://x"',
    'storage.s3.bucket: expected an S3 bucket name (3-63 lowercase letters, digits, "." and "-"), got "Blobs_1"',
    'storage.s3.region: expected a region name like "us-east-1", got "us east"',
    'storage.s3.prefix: expected a key prefix of letters, digits and !_.*\'()/- like "mirror/", got "../up"',
    'storage.s3.accessKey: unknown key (expected one of endpoint, bucket, region, prefix, forcePathStyle, redirect, publicEndpoint, timeout, localCache)'
  ])
  t.same(problemsOf(`storage:\n  s3: { bucket: blobs, publicEndpoint: "https://s3.example.com" }\n${HUB}`), ['storage.s3.publicEndpoint: is used only with redirect: true'])
})

t.test('precedence: flags > environment > file > defaults', async t => {
  const file = `listen: 10.0.0.1:5000\nstorage: { path: ./file-data }\nlog: { level: warn }\n${HUB}`
  const env = { MIRROR_LISTEN: '10.0.0.2:6000', MIRROR_STORAGE_PATH: '/env/data', MIRROR_LOG_LEVEL: 'debug' }
  const flags = { listen: '10.0.0.3:7000', storagePath: '/flag/data' }

  t.test('defaults when nothing says otherwise', async t => {
    const config = parse(HUB)
    t.same(config.listen, { host: '0.0.0.0', port: 5000 })
    t.equal(config.storage.path, '/srv/mirror/data')
    t.equal(config.log.level, 'info')
  })
  t.test('the file beats defaults', async t => {
    const config = parse(file)
    t.same(config.listen, { host: '10.0.0.1', port: 5000 })
    t.equal(config.storage.path, '/srv/mirror/file-data')
    t.equal(config.log.level, 'warn')
  })
  t.test('the environment beats the file', async t => {
    const config = parse(file, env)
    t.same(config.listen, { host: '10.0.0.2', port: 6000 })
    t.equal(config.storage.path, '/env/data')
    t.equal(config.log.level, 'debug')
  })
  t.test('flags beat the environment', async t => {
    const config = parse(file, env, flags)
    t.same(config.listen, { host: '10.0.0.3', port: 7000 })
    t.equal(config.storage.path, '/flag/data')
    t.equal(config.log.level, 'debug', 'no flag for the log level')
  })
  t.test('undefined overrides and empty variables count as not given', async t => {
    const config = parse(file, { MIRROR_LISTEN: '', MIRROR_STORAGE_PATH: '', MIRROR_LOG_LEVEL: '' }, { listen: undefined, storagePath: undefined })
    t.same(config.listen, { host: '10.0.0.1', port: 5000 })
    t.equal(config.storage.path, '/srv/mirror/file-data')
    t.equal(config.log.level, 'warn')
  })
  t.test('relative paths from the environment or flags resolve against the working directory', async t => {
    t.equal(parse(HUB, { MIRROR_STORAGE_PATH: 'env-data' }).storage.path, resolve('env-data'))
    t.equal(parse(HUB, {}, { storagePath: 'flag-data' }).storage.path, resolve('flag-data'))
  })
  t.test('a bad override is a problem labelled with where it came from', async t => {
    t.same(problemsOf(HUB, { MIRROR_LISTEN: 'nowhere', MIRROR_LOG_LEVEL: 'loud' }), [
      'listen (from MIRROR_LISTEN): expected "host:port", "[ipv6]:port" or ":port", got "nowhere"',
      'log.level (from MIRROR_LOG_LEVEL): expected one of fatal, error, warn, info, debug, trace, silent; got "loud"'
    ])
    t.same(problemsOf(HUB, {}, { listen: ':99999', storagePath: '' }), [
      'listen (from --listen): expected "host:port", "[ipv6]:port" or ":port", got ":99999" (the port must be a number from 0 to 65535)',
      'storage.path (from --storage-path): expected a directory path, got ""'
    ])
  })
  t.test('a valid flag hides a bad variable it overrides', async t => {
    t.same(parse(HUB, { MIRROR_LISTEN: 'nowhere' }, { listen: ':5001' }).listen, { host: '0.0.0.0', port: 5001 })
  })
  t.test('the file is checked even where an override replaces its value', async t => {
    t.same(problemsOf(`listen: nowhere\n${HUB}`, { MIRROR_LISTEN: ':5000' }), [
      'listen: expected "host:port", "[ipv6]:port" or ":port", got "nowhere"'
    ])
  })
  t.test('offline: true in the file or --offline turns offline mode on; --offline cannot turn it off', async t => {
    t.equal(parse(HUB).offline, false)
    t.equal(parse(`${HUB}offline: true\n`).offline, true)
    t.equal(parse(HUB, {}, { offline: true }).offline, true)
    t.equal(parse(`${HUB}offline: true\n`, {}, { offline: false }).offline, true)
    t.same(problemsOf(`${HUB}offline: yes please\n`), ['offline: expected true or false, got "yes please"'])
  })
})

t.test('the default upstream', async t => {
  const defaults = (yaml: string): string[] =>
    [...parse(yaml).upstreams.values()].filter(u => u.default).map(u => u.name)

  t.same(defaults(`upstreams:
  ghcr.io: { url: "https://ghcr.io", default: true }
  docker.io: { url: "https://registry-1.docker.io" }
`), ['ghcr.io'], 'the one that says default: true')
  t.same(defaults(`upstreams:
  ghcr.io: { url: "https://ghcr.io" }
  docker.io: { url: "https://registry-1.docker.io" }
`), ['docker.io'], 'else docker.io when it is configured')
  t.same(defaults(`upstreams:
  quay.io: { url: "https://quay.io" }
`), ['quay.io'], 'else the only upstream')
  t.same(defaults(`upstreams:
  ghcr.io: { url: "https://ghcr.io" }
  quay.io: { url: "https://quay.io" }
`), [], 'else none')
  t.same(defaults(`upstreams:
  docker.io: { url: "https://registry-1.docker.io", default: false }
  ghcr.io: { url: "https://ghcr.io" }
`), [], 'default: false keeps docker.io from being picked')
  t.same(defaults(`upstreams:
  quay.io: { url: "https://quay.io", default: false }
`), [], 'default: false keeps the only upstream from being picked')
  t.same(problemsOf(`upstreams:
  docker.io: { url: "https://registry-1.docker.io", default: true }
  ghcr.io: { url: "https://ghcr.io", default: true }
  quay.io: { url: "https://quay.io", default: true }
`), ['upstreams: at most one upstream may set default: true, got docker.io, ghcr.io, quay.io'])
  t.same(problemsOf(`upstreams:
  ghcr.io: { url: "https://ghcr.io", default: "yes" }
`), ['upstreams.ghcr.io.default: expected true or false, got "yes"'])
})

t.test('upstream URLs', async t => {
  t.test('a bad URL is named with its full path, dots in the key as they are', async t => {
    const yaml = 'upstreams:\n  ghcr.io:\n    url: ghcr.io\n'
    t.same(problemsOf(yaml), ['upstreams.ghcr.io.url: expected an http(s) URL, got "ghcr.io"'])
    t.throws(() => parse(yaml), {
      name: 'ConfigError',
      code: 'CONFIG_INVALID',
      message: '/srv/mirror/mirror.config.yml: upstreams.ghcr.io.url: expected an http(s) URL, got "ghcr.io"'
    })
  })
  t.test('other bad URLs', async t => {
    const urlProblem = (url: string): readonly string[] => problemsOf(`upstreams:\n  ghcr.io:\n    url: "${url}"\n`)
    t.same(urlProblem('ftp://ghcr.io'), ['upstreams.ghcr.io.url: expected an http(s) URL, got "ftp://ghcr.io"'])
    t.same(urlProblem('https:ghcr.io'), ['upstreams.ghcr.io.url: expected an http(s) URL, got "https:ghcr.io"'])
    t.same(urlProblem('https://'), ['upstreams.ghcr.io.url: expected an http(s) URL, got "https://"'])
    t.same(urlProblem('https://ghcr.io?x=1'), ['upstreams.ghcr.io.url: expected an http(s) URL, got "https://ghcr.io?x=1" (no query or fragment)'])
    t.same(urlProblem('https://ghcr.io/?'), ['upstreams.ghcr.io.url: expected an http(s) URL, got "https://ghcr.io/?" (no query or fragment)'])
    t.same(urlProblem('https://ghcr.io#top'), ['upstreams.ghcr.io.url: expected an http(s) URL, got "https://ghcr.io#top" (no query or fragment)'])
    t.same(urlProblem('https://me:s3cret@ghcr.io'), [
      'upstreams.ghcr.io.url: expected an http(s) URL, got "https://***@ghcr.io" (put credentials in "username" and "password", not in the URL)'
    ], 'credentials in a URL are refused, and never printed')
    for (const url of ['https://me:s3cret@', 'https://me:s3cret@ghcr.io?x=1', 'ftp://me:s3cret@ghcr.io', 'https://:s3cret@ghcr.io/v2']) {
      const problems = urlProblem(url)
      t.equal(problems.length, 1, `${url} is refused`)
      t.notMatch(problems.join('\n'), /s3cret/, `the password of ${url} is not in the message`)
    }
    t.same(problemsOf('upstreams:\n  ghcr.io: {}\n'), ['upstreams.ghcr.io.url: is required (the registry\'s base URL, e.g. "https://ghcr.io")'])
    t.same(problemsOf('upstreams:\n  ghcr.io:\n'), ['upstreams.ghcr.io.url: is required (the registry\'s base URL, e.g. "https://ghcr.io")'])
    t.same(problemsOf('upstreams:\n  ghcr.io: { url: [a] }\n'), ['upstreams.ghcr.io.url: expected an http(s) URL, got a list'])
    t.same(problemsOf('upstreams:\n  ghcr.io: { url: "https://ghcr.io", authHosts: auth.ghcr.io }\n'), ['upstreams.ghcr.io.authHosts: expected a list, got "auth.ghcr.io"'])
    t.same(problemsOf('upstreams:\n  ghcr.io: { url: "https://ghcr.io", authHosts: [ok.example, "https://x.example", 5] }\n'), [
      'upstreams.ghcr.io.authHosts[1]: expected a host like "auth.docker.io" or "auth.example:8443", got "https://x.example" (the host alone, not a URL)',
      'upstreams.ghcr.io.authHosts[2]: expected a host like "auth.docker.io" or "auth.example:8443", got "5"'
    ], 'each authHost is a host, named by its index')
  })
})

t.test('upstream keys are registry hosts', async t => {
  const config = parse(`upstreams:
  docker.io: { url: "https://registry-1.docker.io" }
  localhost:5001: { url: "http://localhost:5001" }
  10.0.0.7:5000: { url: "http://10.0.0.7:5000" }
  "[fd00::7]:5000": { url: "http://[fd00::7]:5000" }
  registry.k8s.io: { url: "https://registry.k8s.io" }
`)
  t.same([...config.upstreams.keys()], ['docker.io', 'localhost:5001', '10.0.0.7:5000', '[fd00::7]:5000', 'registry.k8s.io'])
  t.equal(upstream(config, '[fd00::7]:5000').url, 'http://[fd00::7]:5000')

  const hostProblem = 'expected a registry host like "docker.io" or "localhost:5001"'
  t.same(problemsOf(`upstreams:
  Docker.io: { url: "https://registry-1.docker.io" }
  https://ghcr.io: { url: "https://ghcr.io" }
  bad_host: { url: "https://quay.io" }
  localhost:0: { url: "http://localhost:5001" }
  5000: { url: "http://localhost:5000" }
`), [
    `upstreams.Docker.io: ${hostProblem}, got "Docker.io" (registry hosts are written in lowercase)`,
    `upstreams.https://ghcr.io: ${hostProblem}, got "https://ghcr.io" (the key is the host alone; the URL goes in "url")`,
    `upstreams.bad_host: ${hostProblem}, got "bad_host"`,
    `upstreams.localhost:0: ${hostProblem}, got "localhost:0" (the port must be a number from 1 to 65535)`,
    `upstreams.5000: ${hostProblem}, got 5000`
  ])
})

t.test('an upstream written as a bare URL is a mapping problem, reported once', async t => {
  t.same(problemsOf('upstreams:\n  docker.io: https://registry-1.docker.io\n'), [
    'upstreams.docker.io: expected a mapping, got "https://registry-1.docker.io"'
  ])
})

t.test('upstreams must list at least one registry', async t => {
  const needOne = 'upstreams: at least one upstream is required, e.g. docker.io with url https://registry-1.docker.io'
  t.same(problemsOf('log: { level: info }\n'), [needOne])
  t.same(problemsOf('upstreams:\n'), [needOne])
  t.same(problemsOf('upstreams: {}\n'), [needOne])
  t.same(problemsOf('upstreams: [docker.io]\n'), ['upstreams: expected a mapping of registry hosts to upstreams, got a list'])
})

t.test('credentials', async t => {
  const withAuth = (auth: string): string => `upstreams:\n  docker.io:\n    url: https://registry-1.docker.io\n${auth}`

  t.test('username and password', async t => {
    const hub = upstream(parse(withAuth('    username: someone\n    password: " s3cret "\n')), 'docker.io')
    t.equal(hub.username, 'someone')
    t.equal(hub.password, ' s3cret ', 'kept exactly as written')
  })
  t.test('passwordEnv takes the password from the environment', async t => {
    const hub = upstream(parse(withAuth('    username: someone\n    passwordEnv: HUB_TOKEN\n'), { HUB_TOKEN: 'from-env' }), 'docker.io')
    t.equal(hub.password, 'from-env')
  })
  t.test('no credentials, no fields', async t => {
    const hub = upstream(parse(HUB), 'docker.io')
    t.equal(hub.username, undefined)
    t.equal(hub.password, undefined)
  })
  t.test('passwordEnv that is unset or empty', async t => {
    t.same(problemsOf(withAuth('    username: someone\n    passwordEnv: HUB_TOKEN\n')), [
      'upstreams.docker.io.passwordEnv: environment variable HUB_TOKEN is not set'
    ])
    t.same(problemsOf(withAuth('    username: someone\n    passwordEnv: HUB_TOKEN\n'), { HUB_TOKEN: '' }), [
      'upstreams.docker.io.passwordEnv: environment variable HUB_TOKEN is empty'
    ])
    t.same(problemsOf(withAuth('    username: someone\n    passwordEnv: "HUB-TOKEN"\n')), [
      'upstreams.docker.io.passwordEnv: expected an environment variable name like "HUB_TOKEN", got "HUB-TOKEN"'
    ])
  })
  t.test('username and password must come together', async t => {
    t.same(problemsOf(withAuth('    username: someone\n')), ['upstreams.docker.io.username: needs password or passwordEnv as well'])
    t.same(problemsOf(withAuth('    password: s3cret\n')), ['upstreams.docker.io.password: needs username as well'])
    t.same(problemsOf(withAuth('    passwordEnv: HUB_TOKEN\n'), { HUB_TOKEN: 'x' }), ['upstreams.docker.io.passwordEnv: needs username as well'])
  })
  t.test('password or passwordEnv, not both', async t => {
    t.same(problemsOf(withAuth('    username: someone\n    password: s3cret\n    passwordEnv: HUB_TOKEN\n'), { HUB_TOKEN: 'x' }), [
      'upstreams.docker.io.passwordEnv: give either password or passwordEnv, not both'
    ])
  })
  t.test('no message repeats a password', async t => {
    const problems = problemsOf(withAuth('    username: 1234\n    password: 987654321\n'))
    t.same(problems, [
      'upstreams.docker.io.username: expected a string, got 1234 (quote it: "1234")',
      'upstreams.docker.io.password: expected a string, got a number (quote it)'
    ])
    t.notMatch(problems.join('\n'), /987654321/)
  })
})

t.test('durations and counts', async t => {
  t.equal(parse(`cache: { tagTtl: 0 }\n${HUB}`).cache.tagTtl, 0, 'tagTtl 0 means always revalidate')
  t.equal(parse(`cache: { tagTtl: 0s }\n${HUB}`).cache.tagTtl, 0)
  t.equal(parse(`cache: { tagTtl: 90s }\n${HUB}`).cache.tagTtl, 90_000)
  t.same(problemsOf(`cache: { tagTtl: 300 }\n${HUB}`), [
    'cache.tagTtl: expected a duration like "5m" or "1h30m", got "300" (a bare number is ambiguous; add a unit, e.g. "300s")'
  ])
  t.same(problemsOf(`cache: { tagTtl: 5 minutes }\n${HUB}`), ['cache.tagTtl: expected a duration like "5m" or "1h30m", got "5 minutes"'])
  t.same(problemsOf(`cache: { tagTtl: -5m }\n${HUB}`), ['cache.tagTtl: expected a duration like "5m" or "1h30m", got "-5m" (durations cannot be negative)'])
  t.same(problemsOf(`cache:\n  tagTtl:\n${HUB}`), ['cache.tagTtl: expected a duration like "5m" or "1h30m", got an empty value'])
  t.same(problemsOf(`cache: { hotEntries: 0 }\n${HUB}`), ['cache.hotEntries: expected a positive integer, got 0'])
  t.same(problemsOf(`cache: { hotEntries: -1 }\n${HUB}`), ['cache.hotEntries: expected a positive integer, got -1'])
  t.same(problemsOf(`cache: { hotEntries: 1.5 }\n${HUB}`), ['cache.hotEntries: expected a positive integer, got 1.5'])
  t.same(problemsOf(`cache: { hotEntries: "100" }\n${HUB}`), ['cache.hotEntries: expected a positive integer, got "100"'])
  t.same(problemsOf(`upstreams:
  docker.io:
    url: https://registry-1.docker.io
    timeouts: { connect: 0s, headers: 0, body: 10 }
`), [
    'upstreams.docker.io.timeouts.connect: expected a duration of at least 1ms, got "0s"',
    'upstreams.docker.io.timeouts.headers: expected a duration of at least 1ms, got 0',
    'upstreams.docker.io.timeouts.body: expected a duration like "5m" or "1h30m", got "10" (a bare number is ambiguous; add a unit, e.g. "10s")'
  ])
})

t.test('log.level', async t => {
  for (const level of ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) {
    t.equal(parse(`log: { level: ${level} }\n${HUB}`).log.level, level)
  }
  t.same(problemsOf(`log: { level: INFO }\n${HUB}`), ['log.level: expected one of fatal, error, warn, info, debug, trace, silent; got "INFO"'])
})

t.test('unknown keys are problems at every level, with a suggestion when one is close', async t => {
  t.same(problemsOf(`
lisen: 0.0.0.0:5000
storage: { path: ./data, maxSise: 10GiB }
upstreams:
  docker.io:
    url: https://registry-1.docker.io
    usrname: someone
    timeouts: { conect: 1s, total: 5m }
cache: { tagTTL: 5m }
log: { level: info, format: json }
ofline: true
1: one
~: nothing
`), [
    'storage.maxSise: unknown key, did you mean "maxSize"?',
    'upstreams.docker.io.timeouts.conect: unknown key, did you mean "connect"?',
    'upstreams.docker.io.timeouts.total: unknown key (expected one of connect, headers, body)',
    'upstreams.docker.io.usrname: unknown key, did you mean "username"?',
    'cache.tagTTL: unknown key, did you mean "tagTtl"?',
    'log.format: unknown key (expected level)',
    'lisen: unknown key, did you mean "listen"?',
    'ofline: unknown key, did you mean "offline"?',
    '1: unknown key (expected one of listen, storage, upstreams, cache, log, metrics, limits, tls, auth, access, offline)',
    '~: unknown key (expected one of listen, storage, upstreams, cache, log, metrics, limits, tls, auth, access, offline)'
  ])
})

t.test('every problem is reported at once', async t => {
  let error: unknown
  try {
    parse(`
listen: 5000
upstreams:
  ghcr.io:
    url: ghcr.io
  quay.io:
    url: https://quay.io
    username: someone
cache:
  tagTtl: 5 minutes
log:
  level: loud
`)
  } catch (err) {
    error = err
  }
  t.ok(error instanceof ConfigError)
  if (!(error instanceof ConfigError)) return
  t.same(error.problems, [
    'listen: expected "host:port", "[ipv6]:port" or ":port", got "5000"',
    'upstreams.ghcr.io.url: expected an http(s) URL, got "ghcr.io"',
    'upstreams.quay.io.username: needs password or passwordEnv as well',
    'cache.tagTtl: expected a duration like "5m" or "1h30m", got "5 minutes"',
    'log.level: expected one of fatal, error, warn, info, debug, trace, silent; got "loud"'
  ])
  t.equal(error.message, error.problems.map(p => `${SOURCE}: ${p}`).join('\n'), 'one line per problem, each naming the file')
})

t.test('files that are not a config at all', async t => {
  t.same(problemsOf(''), ['the file is empty; it needs at least an "upstreams" mapping (see mirror.config.yml)'])
  t.same(problemsOf('# nothing but a comment\n\n'), ['the file is empty; it needs at least an "upstreams" mapping (see mirror.config.yml)'])
  t.same(problemsOf('- docker.io\n- ghcr.io\n'), ['expected a mapping at the top level, got a list'])
  t.same(problemsOf('just words\n'), ['expected a mapping at the top level, got "just words"'])
  t.same(problemsOf('upstreams:\n  docker.io:\n    url: "https://registry-1.docker.io\n'), [
    'line 4, column 1: Missing closing "quote'
  ])
  t.same(problemsOf(`${HUB}log:\n  level: info\nlog:\n  level: debug\n`), ['line 6, column 1: Map keys must be unique'])
  t.same(problemsOf(`${HUB}---\n${HUB}`), [
    'line 4, column 1: Source contains multiple documents; please use YAML.parseAllDocuments()'
  ])
  const syntax = problemsOf('upstreams:\n  docker.io:\n   url: https://registry-1.docker.io\n  - oops\n')
  t.ok(syntax.length > 0)
  t.match(syntax[0], /^line \d+, column \d+: /, 'syntax errors carry their line and column')
})

t.test('the result is deeply frozen', async t => {
  const config = parse(`${HUB}  ghcr.io:\n    url: https://ghcr.io\n`)
  t.ok(Object.isFrozen(config))
  for (const part of [config.listen, config.storage, config.cache, config.log, config.upstreams]) t.ok(Object.isFrozen(part))
  for (const entry of config.upstreams.values()) t.ok(Object.isFrozen(entry))
  t.ok(config.upstreams instanceof Map, 'still a Map for readers')

  const mutable = config as unknown as { listen: { port: number }, cache: Record<string, unknown> }
  t.throws(() => { mutable.listen.port = 1 }, TypeError)
  t.throws(() => { mutable.cache.extra = 1 }, TypeError)
  const map = config.upstreams as Map<string, unknown>
  t.throws(() => map.set('evil.io', {}), TypeError)
  t.throws(() => map.delete('docker.io'), TypeError)
  t.throws(() => { map.clear() }, TypeError)
  t.same([...config.upstreams.keys()], ['docker.io', 'ghcr.io'], 'unchanged')
  const hub = upstream(config, 'docker.io') as unknown as { url: string }
  t.throws(() => { hub.url = 'https://evil.example' }, TypeError)
})

t.test('loadConfig', async t => {
  t.test('reads the file and resolves storage.path against its directory', async t => {
    const dir = t.testdir({ 'mirror.config.yml': `storage: { path: ./blobs }\n${HUB}` })
    const config = await loadConfig({ file: join(dir, 'mirror.config.yml'), env: {} })
    t.equal(config.source, join(dir, 'mirror.config.yml'))
    t.equal(config.storage.path, join(dir, 'blobs'))
    t.equal(upstream(config, 'docker.io').default, true)
  })
  t.test('passes env and overrides through', async t => {
    const dir = t.testdir({ 'mirror.config.yml': `${HUB}    username: u\n    passwordEnv: TOKEN\n` })
    const config = await loadConfig({
      file: join(dir, 'mirror.config.yml'),
      env: { TOKEN: 't0k3n', MIRROR_LOG_LEVEL: 'trace' },
      overrides: { listen: ':6000' }
    })
    t.equal(upstream(config, 'docker.io').password, 't0k3n')
    t.equal(config.log.level, 'trace')
    t.same(config.listen, { host: '0.0.0.0', port: 6000 })
  })
  t.test('a missing file is a ConfigError naming the path and the OS error', async t => {
    const file = join(t.testdir({}), 'nope.yml')
    await t.rejects(loadConfig({ file, env: {} }), {
      name: 'ConfigError',
      message: `${file}: cannot read the config file: ENOENT: no such file or directory, open '${file}'`
    })
  })
  t.test('a directory is not a config file', async t => {
    const dir = t.testdir({})
    await t.rejects(loadConfig({ file: dir, env: {} }), { name: 'ConfigError', message: /cannot read the config file: EISDIR/ })
  })
  t.test('problems in the file name the file', async t => {
    const dir = t.testdir({})
    const file = join(dir, 'bad.yml')
    await writeFile(file, 'upstreams:\n  ghcr.io:\n    url: ghcr.io\n')
    await t.rejects(loadConfig({ file, env: {} }), {
      message: `${file}: upstreams.ghcr.io.url: expected an http(s) URL, got "ghcr.io"`
    })
  })
})

t.test('limits: the per-client caps, the queue and the trusted proxies, and what each refuses', async t => {
  const config = parse(`${HUB}limits:
  maxConnections: 1000
  maxConnectionsPerClient: 50
  maxRequestsPerClient: 20
  maxQueuedPerClient: 0
  queueTimeout: 2s
  trustedProxies: [10.0.0.0/8, "fd00::/8", 192.0.2.7/32]
`)
  t.same(config.limits, {
    headersTimeout: 20_000,
    idleTimeout: 30_000,
    maxConnections: 1000,
    maxConnectionsPerClient: 50,
    maxRequestsPerClient: 20,
    maxQueuedPerClient: 0,
    queueTimeout: 2000,
    trustedProxies: ['10.0.0.0/8', 'fd00::/8', '192.0.2.7/32']
  })
  t.ok(Object.isFrozen(config.limits.trustedProxies), 'frozen with the rest')
  t.equal(parse(`${HUB}limits: { maxConnections: 100 }`).limits.maxConnectionsPerClient, 256, 'a default above a lowered maxConnections is no problem: maxConnections still bounds')
  t.same(problemsOf(`${HUB}limits:
  maxConnectionsPerClient: 0
  maxRequestsPerClient: -1
  maxQueuedPerClient: -1
  queueTimeout: 0
  trustedProxies: [10.0.0.5, 10.0.0.0/33, nowhere, "fd00::/129", "::1/128/1"]
`), [
    'limits.maxConnectionsPerClient: expected a positive integer, got 0',
    'limits.maxRequestsPerClient: expected a positive integer, got -1',
    'limits.maxQueuedPerClient: expected an integer of at least 0, got -1',
    'limits.queueTimeout: expected a duration of at least 1ms, got 0',
    'limits.trustedProxies[0]: expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "10.0.0.5" (one host: "10.0.0.5/32")',
    'limits.trustedProxies[1]: expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "10.0.0.0/33"',
    'limits.trustedProxies[2]: expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "nowhere"',
    'limits.trustedProxies[3]: expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "fd00::/129"',
    'limits.trustedProxies[4]: expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "::1/128/1"'
  ])
  t.same(problemsOf(`${HUB}limits: { trustedProxies: 10.0.0.0/8 }`), ['limits.trustedProxies: expected a list, got "10.0.0.0/8"'])
  t.same(problemsOf(`${HUB}limits: { maxConnections: 100, maxConnectionsPerClient: 200 }`), [
    'limits.maxConnectionsPerClient: must be at most limits.maxConnections (100), got 200: it is one address\'s share of them'
  ])
  t.same(problemsOf(`${HUB}limits: { trustedProxys: [10.0.0.0/8] }`), ['limits.trustedProxys: unknown key, did you mean "trustedProxies"?'])
})

t.test('tls: cert and key together, paths against the file\'s directory, clientCA only with them', async t => {
  const config = parse(`${HUB}tls: { cert: certs/tls.crt, key: /etc/keys/tls.key, clientCA: ca.crt, reloadInterval: 1m }`)
  t.same(config.tls, { cert: '/srv/mirror/certs/tls.crt', key: '/etc/keys/tls.key', clientCA: '/srv/mirror/ca.crt', reloadInterval: 60_000 })
  t.equal(parse(HUB).tls, undefined, 'no tls section: plain HTTP')
  t.equal(parse(`${HUB}tls: { cert: a.crt, key: a.key }`).tls?.reloadInterval, 10_000, 'renewals are looked for every 10 s unless told')
  t.same(problemsOf(`${HUB}tls: { cert: a.crt }`), ['tls.key: missing: tls.cert is set, and TLS needs both'])
  t.same(problemsOf(`${HUB}tls: { key: a.key }`), ['tls.cert: missing: tls.key is set, and TLS needs both'])
  t.same(problemsOf(`${HUB}tls: { clientCA: ca.crt }`), ['tls.clientCA: needs tls.cert and tls.key: client certificates are checked only over TLS'])
  t.same(problemsOf(`${HUB}tls: { cert: a.crt, key: a.key, certs: b }`).length, 1, 'an unknown key is a problem')
})

t.test('auth and access: paths, defaults, rules checked, and what they need', async t => {
  const config = parse(`${HUB}auth: { htpasswd: users/htpasswd, anonymousNetworks: [10.0.0.0/8, "fd00::/8"] }
access:
  rules:
    - { repositories: ["docker.io/library/*"], users: [anonymous, "*"], pull: true }
    - { repositories: ["ghcr.io/acme/**"], users: [alice], pull: true }
  default: deny
metrics: { token: t0ken }`)
  t.same(config.auth, {
    htpasswd: '/srv/mirror/users/htpasswd',
    realm: 'registry-mirror',
    remember: 300_000,
    tokenTtl: 300_000,
    reloadInterval: 10_000,
    anonymousNetworks: ['10.0.0.0/8', 'fd00::/8'],
    maxFailures: 10,
    failureWindow: 60_000,
    rules: [
      { repositories: ['docker.io/library/*'], users: ['anonymous', '*'], pull: true },
      { repositories: ['ghcr.io/acme/**'], users: ['alice'], pull: true }
    ],
    defaultPull: false
  })
  t.same(parse(`${HUB}auth: { htpasswd: h }\nmetrics: { enabled: false }`).auth?.rules, [{ repositories: ['**'], users: ['*'], pull: true }], 'no access section: users pull everything')
  t.equal(parse(HUB).auth, undefined, 'no auth: open, as before')
  t.same(problemsOf(`${HUB}access: { default: pull }`), ['access: needs auth.htpasswd: rules name users, and users log in'])
  t.same(problemsOf(`${HUB}auth: { htpasswd: h }`), ['metrics.token: with auth set, /metrics on the main listener needs a token (or give metrics.listen an address of its own, or set metrics.enabled: false)'])
  t.same(problemsOf(`${HUB}auth: { htpasswd: h }\nmetrics: { enabled: false }\naccess: { rules: [] }`), ['access.default: is required with rules: "deny" or "pull", for a repository no rule matches'])
  t.same(problemsOf(`${HUB}auth: { htpasswd: h, anonymousNetworks: [10.0.0.0/33, nowhere] }\nmetrics: { enabled: false }`), [
    'auth.anonymousNetworks[0]: expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "10.0.0.0/33"',
    'auth.anonymousNetworks[1]: expected a CIDR network like "10.0.0.0/8" or "fd00::/8", got "nowhere"'
  ])
  t.same(problemsOf(`${HUB}auth: { htpasswd: h }\nmetrics: { enabled: false }\naccess:
  default: deny
  rules:
    - { repositories: ["ghcr.io/a**"], users: [alice], pull: true }
    - { repositories: [], users: [], pull: yes }
    - { repositories: ["Docker.io/x"], users: ["a b"] }`), [
    'access.rules[0].repositories[0]: "ghcr.io/a**": ** must be a whole path segment',
    'access.rules[1].pull: expected true or false, got "yes"',
    'access.rules[1].repositories: lists no pattern',
    'access.rules[1].users: lists no user',
    'access.rules[2].repositories[0]: "Docker.io/x" has characters no repository has (lower-case letters, digits, . _ - : / and * only)',
    'access.rules[2].users[0]: expected a user name, "anonymous" or "*", got "a b"',
    'access.rules[2].pull: is required (true lets the users pull, false refuses them)'
  ])
})
