#!/usr/bin/env node
// The command line: the only place that reads argv, prints and exits.

import { parseArgs } from 'node:util'
import { formatBytes, gc, pin, unpin } from '../lib/cli/maintenance.js'
import { buildReport } from '../lib/status/report.js'
import { loadConfig } from '../lib/config/load.js'
import type { MirrorConfig } from '../lib/config/types.js'
import { BundleInvalidError, ConfigError, ExportFailedError, HtpasswdError, ImageListError, RegistryError, UsageError } from '../lib/errors.js'
import { createLogger } from '../lib/log.js'
import { LogSink } from '../lib/log-sink.js'
import { openCore, type MirrorCore } from '../lib/core.js'
import { resolveImages } from '../lib/warm/image-list.js'
import { routingTable } from '../lib/upstream/routing.js'
import { parsePlatform, type PlatformSpec } from '../lib/oci/platform.js'
import { createProgress } from '../lib/warm/progress.js'
import { DEFAULT_CONCURRENCY, summarize, warm } from '../lib/warm/warm-command.js'
import { exportBundle } from '../lib/warm/export.js'
import { importBundle } from '../lib/warm/import.js'
import { setUser } from '../lib/auth/htpasswd.js'

const USAGE = `usage: registry-mirror <command> [options]

commands:
  serve                 run the mirror
  gc [--dry-run] [--verify]
                        repair the cache (temp files, rows without files, files without rows)
                        and evict what storage.maxSize / storage.maxAge say must go; --verify
                        also re-hashes every cached blob and manifest, removing what does not match
  pin IMAGE...          never evict these images (nginx:1.27, ghcr.io/org/app@sha256:...)
  unpin IMAGE...        evict them again like anything else
  stats [--json]        what the cache holds and how well it serves
  warm IMAGE...         fetch images (manifests and every blob, verified) into the cache, as a
                        pull through the mirror would; what is cached already is skipped
       [--file LIST] [--platform OS/ARCH[/VARIANT]]... [--concurrency N] [--pin] [--server URL [--user USER]]
  export IMAGE... -o BUNDLE.tar [--file LIST] [--offline]
                        write images from the cache as an OCI image layout tar (fetching
                        what is missing first, or with --offline reporting it)
  import BUNDLE.tar     add a bundle's images to the cache; every blob is verified first, and
                        a corrupt or truncated bundle changes nothing
  htpasswd FILE USER    add USER to an htpasswd file (auth.htpasswd) or change its password,
                        read from stdin (bcrypt); the mirror takes the change without a restart
  node-config --mirror URL --registries LIST [--certs-dir DIR|none] [--crio-dir DIR] [--once]
       [--interval 10s] [--probe-timeout 2s] [--dial-timeout 1s] [--status-file PATH]
       [--containerd-config FILE] [--containerd-bin PATH] [--containerd-version X.Y.Z]
                        point this node's containerd (certs.d hosts.toml) and CRI-O (registries.conf.d)
                        at the mirror while it answers, and take it out again while it does not
                        (docs/node-config.md); MIRROR_URL and MIRROR_REGISTRIES stand in for the flags

options:
  -c, --config FILE       configuration file (default: ./mirror.config.yml)
      --listen ADDR       listen address, host:port (serve; overrides MIRROR_LISTEN and the file)
      --storage-path DIR  data directory (overrides MIRROR_STORAGE_PATH and storage.path)
      --offline           never contact an upstream (serve, warm, export): as offline: true in the config
  -f, --file LIST         images, one reference per line, # comments (warm, export; may be repeated)
      --platform P        only these platforms of a multi-platform image (warm; may be repeated)
      --concurrency N     blob downloads at once (warm, export; default ${DEFAULT_CONCURRENCY})
      --pin               pin each image warmed, so eviction never removes it (warm)
      --server URL        warm through a running mirror at URL instead of the data directory
      --user USER         log in to the --server mirror as USER; the password from MIRROR_PASSWORD,
                          else the first line of stdin
  -o, --output FILE       the bundle to write (export)
  -h, --help              show this help

Every command works on the data directory of the config, whether or not a
mirror is serving it. Images may be written nginx, nginx:1.27,
library/nginx@sha256:..., ghcr.io/org/app:v1; their registry must be one of
the configured upstreams.
`

async function main (argv: string[]): Promise<number> {
  if (argv[0] === 'node-config') return await nodeConfigCommand(argv.slice(1))
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c', default: 'mirror.config.yml' },
        listen: { type: 'string' },
        'storage-path': { type: 'string' },
        'dry-run': { type: 'boolean' },
        verify: { type: 'boolean' },
        json: { type: 'boolean' },
        offline: { type: 'boolean' },
        file: { type: 'string', short: 'f', multiple: true },
        platform: { type: 'string', multiple: true },
        concurrency: { type: 'string' },
        pin: { type: 'boolean' },
        server: { type: 'string' },
        user: { type: 'string' },
        output: { type: 'string', short: 'o' },
        help: { type: 'boolean', short: 'h' }
      }
    })
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err))
  }
  const { values, positionals } = parsed
  const [command, ...args] = positionals
  if (values.help === true) {
    process.stdout.write(USAGE)
    return 0
  }
  if (command === undefined) throw new UsageError('no command given')
  const commands = ['serve', 'gc', 'pin', 'unpin', 'stats', 'warm', 'export', 'import', 'htpasswd']
  if (!commands.includes(command)) throw new UsageError(`unknown command "${command}"`)
  if (command === 'htpasswd') {
    if (args.length !== 2) throw new UsageError('htpasswd takes a file and a user, e.g. htpasswd /etc/registry-mirror/htpasswd alice (the password on stdin)')
    return await htpasswdCommand(args[0] ?? '', args[1] ?? '')
  }
  const onlyFor = (flag: string, given: boolean, allowed: readonly string[]): void => {
    if (given && !allowed.includes(command)) throw new UsageError(`${flag} is for ${allowed.join(', ')} only`)
  }
  onlyFor('--offline', values.offline === true, ['serve', 'warm', 'export'])
  onlyFor('--file', values.file !== undefined, ['warm', 'export'])
  onlyFor('--platform', values.platform !== undefined, ['warm'])
  onlyFor('--concurrency', values.concurrency !== undefined, ['warm', 'export'])
  onlyFor('--output', values.output !== undefined, ['export'])
  onlyFor('--pin', values.pin === true, ['warm'])
  onlyFor('--server', values.server !== undefined, ['warm'])
  if (values.user !== undefined && values.server === undefined) throw new UsageError('--user is for warm --server only: the data directory needs no login')
  if (values.listen !== undefined && command !== 'serve') throw new UsageError('--listen is for serve only')
  if (values['dry-run'] === true && command !== 'gc') throw new UsageError('--dry-run is for gc only')
  if (values.verify === true && command !== 'gc') throw new UsageError('--verify is for gc only')
  if (values.json === true && command !== 'stats') throw new UsageError('--json is for stats only')
  if ((command === 'pin' || command === 'unpin') && args.length === 0) throw new UsageError(`${command} needs at least one image, e.g. ${command} nginx:1.27`)
  if ((command === 'serve' || command === 'gc' || command === 'stats') && args.length > 0) {
    throw new UsageError(`${command} takes no arguments, got "${args.join(' ')}"`)
  }

  if (command === 'warm') {
    if (args.length === 0 && values.file === undefined) throw new UsageError('warm needs at least one image or --file, e.g. warm nginx:1.27')
    if (values.server !== undefined && values.pin === true) throw new UsageError('--pin works on the data directory; run registry-mirror pin on the mirror\'s host')
    if (values.server !== undefined && values.offline === true) throw new UsageError('--offline and --server: the running mirror decides whether it is offline')
    if (values.server !== undefined && !/^https?:\/\/[^/]+\/?$/.test(values.server)) throw new UsageError(`--server: expected the mirror's base URL like http://mirror.example:5000, got "${values.server}"`)
  }
  if (command === 'export') {
    if (args.length === 0 && values.file === undefined) throw new UsageError('export needs at least one image or --file, e.g. export nginx:1.27 -o bundle.tar')
    if (values.output === undefined || values.output === '') throw new UsageError('export needs -o BUNDLE.tar')
  }
  if (command === 'import' && args.length !== 1) throw new UsageError(`import takes one bundle, e.g. import bundle.tar${args.length > 1 ? `; got ${args.length}` : ''}`)
  const platforms = (values.platform ?? []).map(text => {
    try {
      return parsePlatform(text)
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err))
    }
  })
  const concurrency = values.concurrency === undefined ? DEFAULT_CONCURRENCY : Number(values.concurrency)
  if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > 64) {
    throw new UsageError(`--concurrency: expected a whole number from 1 to 64, got "${values.concurrency ?? ''}"`)
  }

  const config = await loadConfig({
    file: values.config ?? 'mirror.config.yml',
    env: process.env,
    overrides: { listen: values.listen, storagePath: values['storage-path'], offline: values.offline }
  })
  if (command === 'serve') return await serve(config)
  if (command === 'export') return await exportCommand(config, args, values.file ?? [], values.output ?? '', concurrency)
  if (command === 'import') return await importCommand(config, args[0] ?? '')
  if (command === 'warm') {
    const credentials = values.user === undefined ? undefined : { user: values.user, password: process.env.MIRROR_PASSWORD ?? await firstLineOfStdin(`password for ${values.user}: `) }
    return await warmCommand(config, args, values.file ?? [], platforms, concurrency, values.pin === true, values.server, credentials)
  }

  if (command === 'gc') return await gcCommand(config, values['dry-run'] === true, values.verify === true)
  // stats, pin, unpin: the data directory only, no upstream.
  const core = await openCore(config, createLogger('warn', process.stderr), { upstreams: false })
  try {
    return await maintenance(command, core, config, args, values.json === true)
  } finally {
    await core.close()
  }
}

/** The first line of stdin (a terminal, a pipe, or a file), without its line ending: a password. */
async function firstLineOfStdin (prompt: string): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write(prompt)
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) {
    chunks.push(chunk as Buffer)
    if ((chunk as Buffer).includes(10) || Buffer.concat(chunks).length > 4096) break
  }
  return (Buffer.concat(chunks).toString('utf8').split('\n')[0] ?? '').replace(/\r$/, '')
}

/**
 * node-config has options of its own and no mirror config: parsed apart from the other commands.
 * Once: one pass, exit 1 when it left a problem. Else passes until SIGTERM or SIGINT, after
 * which this node's entries are taken out, as nothing would take them out once it is gone.
 */
async function nodeConfigCommand (argv: string[]): Promise<number> {
  let values
  try {
    values = parseArgs({
      args: argv,
      options: {
        mirror: { type: 'string' },
        registries: { type: 'string' },
        'certs-dir': { type: 'string' },
        'crio-dir': { type: 'string' },
        'containerd-config': { type: 'string' },
        'containerd-bin': { type: 'string' },
        'containerd-version': { type: 'string' },
        interval: { type: 'string' },
        'probe-timeout': { type: 'string' },
        'dial-timeout': { type: 'string' },
        'status-file': { type: 'string' },
        once: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      }
    }).values
  } catch (err) {
    throw new UsageError(`node-config: ${err instanceof Error ? err.message : String(err)}`)
  }
  if (values.help === true) {
    process.stdout.write(USAGE)
    return 0
  }
  const { nodeConfigOptions } = await import('../lib/node-config/options.js')
  const { NodeConfigurator } = await import('../lib/node-config/node-config.js')
  const { kubernetesNode } = await import('../lib/node-config/kubernetes.js')
  const options = nodeConfigOptions(values, process.env)
  const log = createLogger(process.env.MIRROR_LOG_LEVEL ?? 'info', process.stdout)
  const kubernetes = await kubernetesNode(process.env)
  const configurator = new NodeConfigurator({ options, log, kubernetes })
  if (options.once) return (await configurator.runOnce()).ok ? 0 : 1
  const stop = new AbortController()
  const onSignal = (signal: string): void => {
    log.info({ signal }, 'taking this node\'s entries out, then exiting')
    stop.abort()
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  await configurator.run(stop.signal)
  return 0
}

async function htpasswdCommand (file: string, user: string): Promise<number> {
  const result = await setUser(file, user, await firstLineOfStdin(`password for ${user}: `))
  process.stdout.write(`${result === 'added' ? 'added' : 'changed the password of'} ${user} in ${file}\n`)
  return 0
}

async function serve (config: MirrorConfig): Promise<number> {
  // stdout through a sink that never blocks the mirror nor stops it: a stalled pipe or a full disk costs log lines only.
  const sink = new LogSink(1)
  const log = createLogger(config.log.level, sink)
  // Loaded for serve only: the HTTP stack costs the other commands' start time for nothing.
  const { createMirror } = await import('../lib/server.js')
  const mirror = await createMirror(config, log, { logLinesDropped: () => sink.dropped })
  log.info({ url: mirror.url, listen: `${config.listen.host}:${config.listen.port}`, storage: config.storage.path, upstreams: [...config.upstreams.keys()], offline: config.offline === true }, 'listening')
  await new Promise<void>(resolve => {
    const stop = (signal: string): void => {
      log.info({ signal }, 'shutting down')
      resolve()
    }
    process.once('SIGINT', stop)
    process.once('SIGTERM', stop)
  })
  await mirror.close()
  return 0
}

async function warmCommand (config: MirrorConfig, args: string[], files: string[], platforms: PlatformSpec[], concurrency: number, pinImages: boolean, server: string | undefined, credentials: { user: string, password: string } | undefined): Promise<number> {
  const images = await resolveImages(args, files, routingTable(config))
  const log = createLogger('warn', process.stderr)
  const progress = createProgress(process.stderr, server === undefined ? 'warming' : `warming through ${server}:`)
  const report = await warm({ config, log, images, platforms, concurrency, pin: pinImages, server, credentials, progress })
  for (const line of summarize('warmed', report.results)) process.stdout.write(`${line}\n`)
  for (const name of report.pinned) process.stdout.write(`pinned ${name}\n`)
  return report.results.every(r => r.ok) ? 0 : 1
}

async function exportCommand (config: MirrorConfig, args: string[], files: string[], output: string, concurrency: number): Promise<number> {
  const images = await resolveImages(args, files, routingTable(config))
  const log = createLogger('warn', process.stderr)
  let report
  try {
    report = await exportBundle({
      config,
      log,
      images,
      output,
      concurrency,
      progress: phase => createProgress(process.stderr, phase === 'fetching' ? (config.offline === true ? 'looking up' : 'fetching') : 'writing')
    })
  } catch (err) {
    if (!(err instanceof ExportFailedError)) throw err
    process.stderr.write(`registry-mirror: export failed, no bundle written: ${err.message}\n`)
    return 1
  }
  if (!report.written) {
    for (const line of summarize('found', report.results)) process.stdout.write(`${line}\n`)
    process.stdout.write(`no bundle written: ${config.offline === true ? 'images missing from the cache (offline, so nothing was fetched)' : 'some images could not be fetched'}\n`)
    return 1
  }
  process.stdout.write(`exported ${report.results.length} images to ${output}: ${report.blobs} blobs, ${formatBytes(report.bytes)}\n`)
  for (const r of report.results) if (r.ok) process.stdout.write(`  ${r.image.name}  ${r.warmed.top.digest}\n`)
  return 0
}

async function importCommand (config: MirrorConfig, bundle: string): Promise<number> {
  const log = createLogger('warn', process.stderr)
  const core = await openCore(config, log, { command: 'import' })
  const progress = createProgress(process.stderr, 'importing')
  const row = progress.row(bundle)
  try {
    const report = await importBundle({ cache: core.cache, routing: core.routing, log, bundle, progress: row })
    row.done(`${report.images.length} images`)
    progress.close()
    process.stdout.write(`imported ${report.images.length} images from ${bundle}: ${report.blobsAdded} blobs added, ${report.blobsPresent} already cached, ${report.manifests} manifests\n`)
    for (const image of report.images) process.stdout.write(`  ${image.name}  ${image.digest}\n`)
    return 0
  } catch (err) {
    row.failed(err instanceof Error ? err.message : String(err))
    progress.close()
    if (err instanceof BundleInvalidError) {
      process.stderr.write(`registry-mirror: ${bundle} refused, nothing imported: ${err.message}\n`)
      return 1
    }
    throw err
  } finally {
    await core.close()
  }
}

async function gcCommand (config: MirrorConfig, dryRun: boolean, verify: boolean): Promise<number> {
  const out = (line: string): void => { process.stdout.write(`${line}\n`) }
  const { consistency: c, eviction: e } = await gc(config, createLogger(config.log.level, process.stderr), dryRun, verify)
  const verb = dryRun ? 'would remove' : 'removed'
  out(`${dryRun ? 'dry run: ' : ''}checked ${c.blobsChecked} indexed blobs`)
  out(`  temp files of interrupted downloads ${verb}: ${c.tempFilesRemoved}`)
  out(`  index rows without a file ${dryRun ? 'would be dropped' : 'dropped'}: ${c.rowsDropped}`)
  out(`  files without a row ${dryRun ? 'would be indexed' : 'indexed'} (verified): ${c.filesIndexed}`)
  out(`  files not matching their digest ${verb}: ${c.filesRemoved}`)
  if (verify) out(`  cached blobs and manifests re-hashed, not matching ${verb}: ${c.corruptRemoved}`)
  if (c.unreadable > 0) out(`  rows and files the storage could not read now, left as they were: ${c.unreadable} (see the log)`)
  out(`  evicted: ${e.removed} entries, ${formatBytes(e.bytes)} (age ${e.byReason.age.count}, size ${e.byReason.size.count})`)
  if (e.bucket !== undefined) out(`  shared bucket: ${dryRun ? 'would evict' : 'evicted'} ${e.bucket.removed} blobs, ${formatBytes(e.bucket.bytes)}; ${formatBytes(e.bucket.bucketBytes)} left${e.bucket.spared > 0 ? `; ${e.bucket.spared} spared (served since the listing)` : ''}`)
  out(`  cache now: ${formatBytes(e.usedBytes)}${config.storage.maxSize !== undefined ? ` of ${formatBytes(config.storage.maxSize)}` : ''}, pinned ${formatBytes(e.pinnedBytes)}`)
  return 0
}

/** Pins change what every node of a fleet may evict: a shared bucket is told at once, or at this node's next eviction pass. */
async function tellFleet (core: MirrorCore): Promise<void> {
  try {
    await core.cache.publishPins()
  } catch (err) {
    process.stderr.write(`registry-mirror: the shared bucket could not be told of the pins now (${err instanceof Error ? err.message : String(err)}); this node's next eviction pass tells it\n`)
  }
}

async function maintenance (command: string, core: MirrorCore, config: MirrorConfig, args: string[], json: boolean): Promise<number> {
  const out = (line: string): void => { process.stdout.write(`${line}\n`) }
  switch (command) {
    case 'pin':
      for (const r of pin(core, args)) out(`pinned ${r.image}${r.cached ? '' : ' (not cached yet: protected once pulled)'}`)
      await tellFleet(core)
      return 0
    case 'unpin': {
      let missing = 0
      for (const r of unpin(core, args)) {
        if (r.wasPinned) out(`unpinned ${r.image}`)
        else {
          process.stderr.write(`registry-mirror: ${r.image} was not pinned\n`)
          missing++
        }
      }
      await tellFleet(core)
      return missing > 0 ? 1 : 0
    }
    case 'stats': {
      // The same report as a serving mirror's /status.json, less what only a running server knows.
      const s = await buildReport({ config, cache: core.cache })
      if (json) {
        out(JSON.stringify(s, null, 2))
        return 0
      }
      const c = s.cache
      const r = s.requests
      out(`status          ${c.degraded === null ? 'ok' : `degraded: ${c.degraded}`}`)
      for (const u of s.upstreams) if (u.state === 'down') out(`upstream down   ${u.name} since ${u.downSince ?? '?'}`)
      out(`total size      ${formatBytes(c.totalBytes)}${c.maxSize !== null ? ` of ${formatBytes(c.maxSize)}` : ''}`)
      out(`blobs           ${c.blobs} (${formatBytes(c.blobBytes)})`)
      out(`manifests       ${c.manifests} (${formatBytes(c.manifestBytes)})`)
      out(`tags            ${c.tags}`)
      out(`repositories    ${c.repositories}`)
      out(`pinned          ${c.pins} images, ${formatBytes(c.pinnedBytes)}`)
      out(`hit ratio       ${r.hitRatio === null ? 'n/a (no requests yet)' : `${(r.hitRatio * 100).toFixed(1)}%`} (hit ${r.hit}, revalidated ${r.revalidated}, stale ${r.stale}, miss ${r.miss}, joined ${r.joined}, error ${r.error})`)
      out(`oldest access   ${c.oldestAccess ?? 'n/a'}`)
      out(`newest access   ${c.newestAccess ?? 'n/a'}`)
      if (c.freeBytes !== null) out(`free on volume  ${formatBytes(c.freeBytes)}`)
      for (const t of s.top.bySize.slice(0, 5)) out(`largest         ${t.repository} ${formatBytes(t.bytes)}`)
      return 0
    }
  }
  return 2
}

main(process.argv.slice(2)).then(code => {
  process.exitCode = code
  // Whatever is still pending once the work is done (a log write to a stalled pipe) does not keep the process from ending.
  setTimeout(() => process.exit(), 5_000).unref()
}, (err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`registry-mirror: ${err.message}\n\n${USAGE}`)
    process.exitCode = 2
  } else if (err instanceof ImageListError) {
    process.stderr.write(`registry-mirror: nothing was fetched; fix these first:\n${err.problems.map(p => `  ${p}`).join('\n')}\n`)
    process.exitCode = 2
  } else if (err instanceof ConfigError) {
    process.stderr.write(`registry-mirror: invalid configuration\n${err.message}\n`)
    process.exitCode = 78 // EX_CONFIG
  } else if (err instanceof RegistryError || err instanceof HtpasswdError) {
    process.stderr.write(`registry-mirror: ${err.message}\n`)
    process.exitCode = 1
  } else {
    process.stderr.write(`registry-mirror: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
    process.exitCode = 1
  }
})
