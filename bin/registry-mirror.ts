#!/usr/bin/env node
// The command line: the only place that reads argv, prints usage and exits.

import { parseArgs } from 'node:util'
import { loadConfig } from '../lib/config/load.js'
import { ConfigError } from '../lib/errors.js'
import { createLogger } from '../lib/log.js'
import { createMirror } from '../lib/main.js'

const USAGE = `usage: registry-mirror <command> [options]

commands:
  serve     run the mirror

options:
  -c, --config FILE     configuration file (default: ./mirror.config.yml)
      --listen ADDR     listen address, host:port (overrides config and MIRROR_LISTEN)
      --storage-path DIR  data directory (overrides storage.path and MIRROR_STORAGE_PATH)
  -h, --help            show this help
`

async function main (argv: string[]): Promise<number> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c', default: 'mirror.config.yml' },
        listen: { type: 'string' },
        "storage-path": { type: 'string' },
        help: { type: 'boolean', short: 'h' }
      }
    })
  } catch (err) {
    process.stderr.write(`registry-mirror: ${err instanceof Error ? err.message : String(err)}\n\n${USAGE}`)
    return 2
  }
  const { values, positionals } = parsed
  const command = positionals[0]
  if (values.help === true || command === undefined) {
    process.stdout.write(USAGE)
    return command === undefined && values.help !== true ? 2 : 0
  }
  if (command !== 'serve') {
    process.stderr.write(`registry-mirror: unknown command "${command}"\n\n${USAGE}`)
    return 2
  }
  if (positionals.length > 1) {
    process.stderr.write(`registry-mirror: serve takes no arguments, got "${positionals.slice(1).join(' ')}"\n`)
    return 2
  }
  let config
  try {
    config = await loadConfig({ file: values.config ?? 'mirror.config.yml', env: process.env, overrides: { listen: values.listen, storagePath: values['storage-path'] } })
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`registry-mirror: invalid configuration\n${err.message}\n`)
      return 78 // EX_CONFIG
    }
    throw err
  }
  const log = createLogger(config.log.level)
  const mirror = await createMirror(config, log)
  log.info({ url: mirror.url, storage: config.storage.path, upstreams: [...config.upstreams.keys()] }, 'listening')
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

main(process.argv.slice(2)).then(code => { process.exitCode = code }, (err: unknown) => {
  process.stderr.write(`registry-mirror: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exitCode = 1
})
