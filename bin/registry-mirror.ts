#!/usr/bin/env node
// The command line: the only place that reads argv, prints and exits.

import { parseArgs } from 'node:util'
import { formatBytes, gc, openCache, pin, stats, unpin, type CacheHandle } from '../lib/cli/maintenance.js'
import { loadConfig } from '../lib/config/load.js'
import type { MirrorConfig } from '../lib/config/types.js'
import { ConfigError, RegistryError } from '../lib/errors.js'
import { createLogger } from '../lib/log.js'
import { createMirror } from '../lib/main.js'

const USAGE = `usage: registry-mirror <command> [options]

commands:
  serve                 run the mirror
  gc [--dry-run]        repair the cache (temp files, rows without files, files without rows)
                        and evict what storage.maxSize / storage.maxAge say must go
  pin IMAGE...          never evict these images (nginx:1.27, ghcr.io/org/app@sha256:...)
  unpin IMAGE...        evict them again like anything else
  stats [--json]        what the cache holds and how well it serves

options:
  -c, --config FILE       configuration file (default: ./mirror.config.yml)
      --listen ADDR       listen address, host:port (serve; overrides MIRROR_LISTEN and the file)
      --storage-path DIR  data directory (overrides MIRROR_STORAGE_PATH and storage.path)
  -h, --help              show this help

Every command works on the data directory of the config, whether or not a
mirror is serving it.
`

class UsageError extends Error {}

async function main (argv: string[]): Promise<number> {
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
        json: { type: 'boolean' },
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
  const commands = ['serve', 'gc', 'pin', 'unpin', 'stats']
  if (!commands.includes(command)) throw new UsageError(`unknown command "${command}"`)
  if (values.listen !== undefined && command !== 'serve') throw new UsageError('--listen is for serve only')
  if (values['dry-run'] === true && command !== 'gc') throw new UsageError('--dry-run is for gc only')
  if (values.json === true && command !== 'stats') throw new UsageError('--json is for stats only')
  if ((command === 'pin' || command === 'unpin') && args.length === 0) throw new UsageError(`${command} needs at least one image, e.g. ${command} nginx:1.27`)
  if ((command === 'serve' || command === 'gc' || command === 'stats') && args.length > 0) {
    throw new UsageError(`${command} takes no arguments, got "${args.join(' ')}"`)
  }

  const config = await loadConfig({
    file: values.config ?? 'mirror.config.yml',
    env: process.env,
    overrides: { listen: values.listen, storagePath: values['storage-path'] }
  })
  if (command === 'serve') return await serve(config)

  const log = createLogger(command === 'gc' ? config.log.level : 'warn', process.stderr)
  const cache = await openCache(config)
  try {
    return await maintenance(command, cache, config, log, args, values['dry-run'] === true, values.json === true)
  } finally {
    cache.close()
  }
}

async function serve (config: MirrorConfig): Promise<number> {
  const log = createLogger(config.log.level)
  const mirror = await createMirror(config, log)
  log.info({ url: mirror.url, listen: `${config.listen.host}:${config.listen.port}`, storage: config.storage.path, upstreams: [...config.upstreams.keys()] }, 'listening')
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

async function maintenance (command: string, cache: CacheHandle, config: MirrorConfig, log: ReturnType<typeof createLogger>, args: string[], dryRun: boolean, json: boolean): Promise<number> {
  const out = (line: string): void => { process.stdout.write(`${line}\n`) }
  switch (command) {
    case 'gc': {
      const { consistency: c, eviction: e } = await gc(cache, config, log, dryRun)
      const verb = dryRun ? 'would remove' : 'removed'
      out(`${dryRun ? 'dry run: ' : ''}checked ${c.blobsChecked} indexed blobs`)
      out(`  temp files of interrupted downloads ${verb}: ${c.tempFilesRemoved}`)
      out(`  index rows without a file ${dryRun ? 'would be dropped' : 'dropped'}: ${c.rowsDropped}`)
      out(`  files without a row ${dryRun ? 'would be indexed' : 'indexed'} (verified): ${c.filesIndexed}`)
      out(`  files not matching their digest ${verb}: ${c.filesRemoved}`)
      out(`  evicted: ${e.removed} entries, ${formatBytes(e.bytes)} (age ${e.byReason.age.count}, size ${e.byReason.size.count})`)
      out(`  cache now: ${formatBytes(e.usedBytes)}${config.storage.maxSize !== undefined ? ` of ${formatBytes(config.storage.maxSize)}` : ''}, pinned ${formatBytes(e.pinnedBytes)}`)
      return 0
    }
    case 'pin':
      for (const r of pin(cache, args)) out(`pinned ${r.image}${r.cached ? '' : ' (not cached yet: protected once pulled)'}`)
      return 0
    case 'unpin': {
      let missing = 0
      for (const r of unpin(cache, args)) {
        if (r.wasPinned) out(`unpinned ${r.image}`)
        else {
          process.stderr.write(`registry-mirror: ${r.image} was not pinned\n`)
          missing++
        }
      }
      return missing > 0 ? 1 : 0
    }
    case 'stats': {
      const s = stats(cache)
      if (json) {
        out(JSON.stringify(s, null, 2))
        return 0
      }
      out(`total size      ${formatBytes(s.totalBytes)}${config.storage.maxSize !== undefined ? ` of ${formatBytes(config.storage.maxSize)}` : ''}`)
      out(`blobs           ${s.blobs} (${formatBytes(s.blobBytes)})`)
      out(`manifests       ${s.manifests} (${formatBytes(s.manifestBytes)})`)
      out(`tags            ${s.tags}`)
      out(`repositories    ${s.repositories}`)
      out(`pinned          ${s.pins} images, ${formatBytes(s.pinnedBytes)}`)
      out(`hit ratio       ${s.hitRatio === null ? 'n/a (no requests yet)' : `${(s.hitRatio * 100).toFixed(1)}%`} (hit ${s.requests.hit}, revalidated ${s.requests.revalidated}, stale ${s.requests.stale}, miss ${s.requests.miss}, joined ${s.requests.joined}, error ${s.requests.error})`)
      out(`oldest access   ${s.oldestAccess ?? 'n/a'}`)
      out(`newest access   ${s.newestAccess ?? 'n/a'}`)
      return 0
    }
  }
  return 2
}

main(process.argv.slice(2)).then(code => { process.exitCode = code }, (err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`registry-mirror: ${err.message}\n\n${USAGE}`)
    process.exitCode = 2
  } else if (err instanceof ConfigError) {
    process.stderr.write(`registry-mirror: invalid configuration\n${err.message}\n`)
    process.exitCode = 78 // EX_CONFIG
  } else if (err instanceof RegistryError) {
    process.stderr.write(`registry-mirror: ${err.message}\n`)
    process.exitCode = 1
  } else {
    process.stderr.write(`registry-mirror: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
    process.exitCode = 1
  }
})
