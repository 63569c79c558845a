// The node configurator's loop: probe the mirror, then write the node's
// runtime configuration if it answered and take it out if it did not, every
// interval, so a mirror that dies costs a node at most one interval of
// pulls waiting on it. Each pass ends with the truth told three ways: a log
// line when something changed, the JSON status file, and (in Kubernetes) the
// node's annotation. Nothing a pass meets (a missing directory, a refused
// file, an API error) stops the loop; it is reported and tried again.

import { mkdir } from 'node:fs/promises'
import { dirname } from 'node:path'
import type { Logger } from 'pino'
import { NodeConfigError } from '../errors.js'
import { writeFileAtomic } from './atomic-file.js'
import { readContainerdConfig } from './containerd-config.js'
import { askContainerdBinary, fromConfigVersion, fromRuntimeVersion, parseContainerdVersion, readsDialTimeout, type ContainerdVersion } from './containerd-version.js'
import { removeDropIn, writeDropIn, type CrioState } from './crio.js'
import { addToHostsFiles, removeFromHostsFiles, type HostsFileState } from './hosts-files.js'
import { STATUS_ANNOTATION, type KubernetesNode } from './kubernetes.js'
import type { NodeConfigOptions } from './options.js'
import { probeMirror, type Probe, type ProbeResult } from './probe.js'
import { containerdVerdict, type Through } from './verdict.js'

export interface ContainerdStatus {
  readonly certsDir: string
  readonly version: string | null
  readonly versionSource: ContainerdVersion['source'] | null
  readonly configFile: string
  readonly configFound: boolean
  readonly configPath: string | null
  readonly pullMode: 'local' | 'transfer' | 'unknown'
  /** The dial_timeout written on the mirror's entry; null where containerd would not read it. */
  readonly dialTimeout: string | null
  readonly files: readonly HostsFileState[]
  /** partly: some registries' files could not be configured. */
  readonly throughMirror: Through | 'partly'
  readonly reason: string
  readonly fix: readonly string[]
}

export interface NodeStatus {
  readonly time: string
  readonly mirror: string
  readonly node: string | null
  readonly registries: readonly string[]
  readonly probe: { readonly answering: boolean, readonly status: number | null, readonly problem: string | null, readonly ms: number }
  /** probe: this pass followed the probe; stopping: the configurator is exiting and took its entries out. */
  readonly pass: 'probe' | 'stopping'
  readonly containerd: ContainerdStatus | null
  readonly crio: (CrioState & { readonly note: string }) | null
  /** Everything that needs a person, one sentence each; empty when all is as it should be. */
  readonly problems: readonly string[]
  /**
   * Every file is as the probe says it should be and pulls go where the files say: no problem but
   * the mirror not answering (taking it out then is this tool doing its job).
   */
  readonly ok: boolean
}

export interface NodeConfiguratorDeps {
  readonly options: NodeConfigOptions
  readonly log: Logger
  readonly probe?: Probe
  /** The node's API in Kubernetes; undefined elsewhere. */
  readonly kubernetes?: KubernetesNode
  /** `containerd --version`, asked of a binary; replaceable where the binary is elsewhere. */
  readonly askBinary?: (binary: string) => Promise<ContainerdVersion | undefined>
}

/** How long a detected containerd version is trusted before asking again (an upgrade in place changes it). */
const VERSION_TTL_MS = 10 * 60_000

export class NodeConfigurator {
  readonly #options: NodeConfigOptions
  readonly #log: Logger
  readonly #probe: Probe
  readonly #kubernetes: KubernetesNode | undefined
  readonly #askBinary: (binary: string) => Promise<ContainerdVersion | undefined>
  #version: { value: ContainerdVersion | undefined, at: number } | undefined
  #lastLogged = ''
  #lastAnnotation = ''

  constructor (deps: NodeConfiguratorDeps) {
    this.#options = deps.options
    this.#log = deps.log
    this.#probe = deps.probe ?? probeMirror
    this.#kubernetes = deps.kubernetes
    this.#askBinary = deps.askBinary ?? (async binary => await askContainerdBinary(binary))
  }

  /** One pass: probe, configure or unconfigure, report. Never throws. */
  async runOnce (): Promise<NodeStatus> {
    const probe = await this.#probe(this.#options.mirror, this.#options.probeTimeoutMs)
    return await this.#pass(probe, 'probe')
  }

  /** Takes every entry of this tool out (the configurator is stopping, and nothing would take them out later). */
  async stop (): Promise<NodeStatus> {
    return await this.#pass({ answering: false, status: undefined, problem: 'the configurator is stopping', ms: 0 }, 'stopping')
  }

  /** Passes every interval until the signal, then stop(). */
  async run (signal: AbortSignal): Promise<NodeStatus> {
    while (!signal.aborted) {
      try {
        await this.runOnce()
      } catch (err) {
        // runOnce reports what it meets; this is for what it did not foresee, which must not end the loop either.
        this.#log.error({ err }, 'a pass failed; trying again at the next interval')
      }
      await sleep(this.#options.intervalMs, signal)
    }
    return await this.stop()
  }

  async #pass (probe: ProbeResult, pass: NodeStatus['pass']): Promise<NodeStatus> {
    const o = this.#options
    const problems: string[] = []
    const down = `the mirror at ${o.mirror} does not answer (${probe.problem ?? 'no answer'}): pulls go to the registries directly`
    if (!probe.answering && pass === 'probe') problems.push(down)
    const containerd = o.certsDir === undefined ? null : await this.#containerd(o.certsDir, probe.answering, problems)
    const crio = o.crioDir === undefined ? null : await this.#crio(o.crioDir, probe.answering, problems)
    const status: NodeStatus = {
      time: new Date().toISOString(),
      mirror: o.mirror,
      node: this.#kubernetes?.name ?? null,
      registries: o.registries,
      probe: { answering: probe.answering, status: probe.status ?? null, problem: probe.problem ?? null, ms: probe.ms },
      pass,
      containerd,
      crio,
      problems,
      ok: true
    }
    await this.#annotate(status, problems)
    const ok = problems.every(problem => problem === down)
    try {
      await mkdir(dirname(o.statusFile), { recursive: true })
      await writeFileAtomic(o.statusFile, `${JSON.stringify({ ...status, ok }, null, 2)}\n`)
    } catch (err) {
      problems.push(`the status file ${o.statusFile} cannot be written: ${err instanceof Error ? err.message : String(err)}`)
    }
    const final = { ...status, ok: problems.every(problem => problem === down) }
    this.#report(final)
    return final
  }

  async #containerd (certsDir: string, answering: boolean, problems: string[]): Promise<ContainerdStatus> {
    const o = this.#options
    const config = await readContainerdConfig(o.containerdConfig)
    const version = await this.#containerdVersion() ?? fromConfigVersion(config.version)
    const dialTimeout = o.dialTimeoutMs > 0 && readsDialTimeout(version) ? goDuration(o.dialTimeoutMs) : undefined
    let files: HostsFileState[]
    try {
      files = answering
        ? await addToHostsFiles(certsDir, o.registries.map(registry => ({ registry, mirror: o.mirror, dialTimeout })))
        : await removeFromHostsFiles(certsDir, o.registries)
    } catch (err) {
      // A NodeConfigError names the directory and the remedy; the rest is said as it came.
      const message = err instanceof NodeConfigError ? err.message : `${certsDir}: ${err instanceof Error ? err.message : String(err)}`
      problems.push(message)
      files = o.registries.map(registry => ({ registry, file: `${certsDir}/${registry}/hosts.toml`, state: 'error', detail: message }))
    }
    for (const f of files) if (f.state === 'refused' || f.state === 'error') problems.push(`${f.file}: ${f.detail}`)
    const verdict = containerdVerdict(version, config, certsDir)
    const configured = files.filter(f => f.state === 'configured').length
    let throughMirror: ContainerdStatus['throughMirror'] = verdict.throughMirror
    let reason = verdict.reason
    if (!answering) {
      throughMirror = 'no'
      reason = `the mirror's entries are out of hosts.toml while it does not answer; ${verdict.reason}`
    } else if (configured === 0) {
      throughMirror = 'no'
      reason = `no registry's hosts.toml names the mirror (see files); ${verdict.reason}`
    } else if (configured < files.length && verdict.throughMirror === 'yes') {
      throughMirror = 'partly'
      reason = `only ${files.filter(f => f.state === 'configured').map(f => f.registry).join(', ')} name the mirror; ${verdict.reason}`
    }
    if (answering && verdict.throughMirror !== 'yes') problems.push(`containerd's pulls ${verdict.throughMirror === 'no' ? 'do not' : 'may not'} go through the mirror: ${verdict.reason}; set ${verdict.fix.join(' ')}`)
    return {
      certsDir,
      version: version?.text ?? null,
      versionSource: version?.source ?? null,
      configFile: config.path,
      configFound: config.found,
      configPath: verdict.configPath ?? null,
      pullMode: verdict.pullMode,
      dialTimeout: dialTimeout ?? null,
      files,
      throughMirror,
      reason,
      fix: verdict.fix
    }
  }

  async #crio (dir: string, answering: boolean, problems: string[]): Promise<NodeStatus['crio']> {
    const o = this.#options
    const state = answering ? await writeDropIn(dir, o.mirror, o.registries) : await removeDropIn(dir)
    if (state.state === 'refused' || state.state === 'error') problems.push(`${state.file}: ${state.detail}`)
    return { ...state, note: 'CRI-O reads registries.conf.d after a reload (systemctl reload crio: SIGHUP) or with automatically_reload_registries = true in crio.conf; podman reads it at its next command' }
  }

  /** The version as given, else asked of the binary, else of the Kubernetes node; cached for a while. */
  async #containerdVersion (): Promise<ContainerdVersion | undefined> {
    const given = this.#options.containerdVersion
    if (given !== undefined) return parseContainerdVersion(given, 'given')
    if (this.#version !== undefined && Date.now() - this.#version.at < VERSION_TTL_MS) return this.#version.value
    let value = await this.#askBinary(this.#options.containerdBinary)
    if (value === undefined && this.#kubernetes !== undefined) {
      try {
        const runtime = await this.#kubernetes.runtimeVersion()
        value = runtime === undefined ? undefined : fromRuntimeVersion(runtime)
      } catch (err) {
        this.#log.warn({ err }, 'the node\'s containerRuntimeVersion could not be read from the API server')
      }
    }
    this.#version = { value, at: Date.now() }
    return value
  }

  /** Sets the node's annotation when what it says changed (not every pass: the API server serves every node). */
  async #annotate (status: NodeStatus, problems: string[]): Promise<void> {
    if (this.#kubernetes === undefined) return
    const value = JSON.stringify({
      mirror: status.mirror,
      answering: status.probe.answering,
      containerd: status.containerd?.throughMirror ?? null,
      crio: status.crio?.state ?? null,
      problems: problems.length
    })
    if (value === this.#lastAnnotation) return
    try {
      await this.#kubernetes.annotate(STATUS_ANNOTATION, value)
      this.#lastAnnotation = value
    } catch (err) {
      problems.push(`the node annotation ${STATUS_ANNOTATION} could not be set: ${err instanceof Error ? err.message : String(err)}`)
    }
  }

  /** One line when what the pass found differs from the last pass; problems as warnings. */
  #report (status: NodeStatus): void {
    const { time: _time, probe: { ms: _ms, ...probe }, ...rest } = status
    const key = JSON.stringify({ ...rest, probe })
    if (key === this.#lastLogged) return
    this.#lastLogged = key
    const c = status.containerd
    const summary = {
      mirror: status.mirror,
      answering: status.probe.answering,
      containerd: c === null ? undefined : { throughMirror: c.throughMirror, version: c.version, pullMode: c.pullMode, configPath: c.configPath, dialTimeout: c.dialTimeout, fix: c.fix.length > 0 ? c.fix : undefined },
      crio: status.crio === null ? undefined : status.crio.state,
      problems: status.problems.length > 0 ? status.problems : undefined
    }
    const how = { yes: 'go', no: 'do NOT go', unknown: 'may NOT go', partly: 'only partly go' }
    const verdict = c === null
      ? ''
      : `containerd's pulls ${how[c.throughMirror]} through the mirror: ${c.reason}${c.throughMirror !== 'yes' && c.fix.length > 0 ? `; to fix, set ${c.fix.join(' ')}` : ''}`
    const crio = status.crio === null ? '' : `CRI-O drop-in ${status.crio.state}`
    const message = [status.pass === 'stopping' ? 'stopping: entries taken out' : status.probe.answering ? `the mirror at ${status.mirror} answers` : `the mirror at ${status.mirror} does not answer`, verdict, crio].filter(part => part !== '').join('. ')
    if (status.problems.length > 0) this.#log.warn(summary, message)
    else this.#log.info(summary, message)
  }
}

/** A duration as Go's time.ParseDuration reads it (containerd's dial_timeout). */
export function goDuration (ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`
}

async function sleep (ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return
  await new Promise<void>(resolve => {
    const timer = setTimeout(done, ms)
    function done (): void {
      clearTimeout(timer)
      signal.removeEventListener('abort', done)
      resolve()
    }
    signal.addEventListener('abort', done, { once: true })
  })
}
