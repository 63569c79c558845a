// The mirror as users run it: `registry-mirror` in a child process (the
// compiled CLI; `npm test` builds it first), for tests that kill it.

import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { writeYamlConfig, type YamlConfig } from './config.js'

export const CLI = fileURLToPath(new URL('../../dist/bin/registry-mirror.js', import.meta.url))

export interface ConfigSpec {
  readonly storage: string
  readonly upstreams: Record<string, string>
  readonly extraStorage?: Omit<NonNullable<YamlConfig['storage']>, 'path'>
  readonly logLevel?: NonNullable<YamlConfig['log']>['level']
  readonly cache?: YamlConfig['cache']
  readonly offline?: boolean
}

/** Writes `dir/mirror.config.yml` (listening on 127.0.0.1:0) for the CLI; returns its path. */
export async function writeConfig (dir: string, spec: ConfigSpec): Promise<string> {
  return await writeYamlConfig(dir, {
    listen: '127.0.0.1:0',
    storage: { path: spec.storage, ...spec.extraStorage },
    upstreams: Object.fromEntries(Object.entries(spec.upstreams).map(([name, url]) => [name, { url }])),
    cache: spec.cache,
    log: { level: spec.logLevel ?? 'info' },
    offline: spec.offline
  })
}

export interface ChildMirror {
  readonly url: string
  readonly process: ChildProcess
  /** Everything it logged so far. */
  output (): string
  kill (signal: NodeJS.Signals): Promise<void>
}

export async function startChildMirror (configFile: string): Promise<ChildMirror> {
  const child = spawn(process.execPath, [CLI, 'serve', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (d: Buffer) => { output += d.toString() })
  child.stderr.on('data', (d: Buffer) => { output += d.toString() })
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`mirror did not start:\n${output}`)), 20_000)
    const check = (): void => {
      const m = /"url":"(http:\/\/[^"]+)"[^\n]*"msg":"listening"/.exec(output)
      if (m?.[1] !== undefined) {
        clearTimeout(timer)
        resolve(m[1])
      }
    }
    child.stdout.on('data', check)
    child.once('exit', code => {
      clearTimeout(timer)
      reject(new Error(`mirror exited with ${code}:\n${output}`))
    })
  })
  return {
    url,
    process: child,
    output: () => output,
    kill: async signal => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill(signal)
      await exited
    }
  }
}

/** Runs the CLI to completion. */
export async function runCli (args: string[], stdin?: string): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: [stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
  if (stdin !== undefined) child.stdin?.end(stdin)
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const [code] = await once(child, 'exit') as [number | null]
  return { code, stdout, stderr }
}
