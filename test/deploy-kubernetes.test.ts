// deploy/kubernetes (issue 20): every kustomization renders (the machine's
// kubectl kustomize), every object validates against the Kubernetes API
// schemas offline (kubernetes-models, and the Prometheus operator's for the
// ServiceMonitor), and what the manifests name is what the image and the
// mirror actually use: the Dockerfile's user, ports, paths and command; the
// config in each ConfigMap, read by the real config loader; the probe paths,
// answered by a real mirror started from that config; the memory figures of
// bench/RESULTS.md; the shipped nginx balancer's hashing rules and the
// Grafana dashboard the copies here were made from.

import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync, readdirSync, existsSync, statSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseAllDocuments } from 'yaml'
import { ConfigMap, Namespace, Service, ServiceAccount } from 'kubernetes-models/v1'
import { DaemonSet, Deployment, StatefulSet } from 'kubernetes-models/apps/v1'
import { ClusterRole, ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1'
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1'
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1'
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1'
import { parseConfig } from '../lib/config/load.js'
import { nodeConfigOptions, type NodeConfigArgs } from '../lib/node-config/options.js'
import { findOnPath } from '../harness/tools.js'
import { runCli, writeConfig } from './helpers/child-mirror.js'
import { startMirror } from './helpers/mirror.js'
import { startFakeRegistry } from './helpers/fake-registry.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const K8S = join(ROOT, 'deploy', 'kubernetes')
const KUBECTL = findOnPath('kubectl')

type Obj = { apiVersion: string, kind: string, metadata: { name: string, namespace?: string, labels?: Record<string, string> }, spec?: unknown, data?: Record<string, string> } & Record<string, unknown>

/** The schema check of each kind the manifests use: throws when the object does not validate. */
const MODELS: Record<string, (o: Obj) => void> = {
  'v1/ConfigMap': o => new ConfigMap(o as never).validate(),
  'v1/Namespace': o => new Namespace(o as never).validate(),
  'v1/Service': o => new Service(o as never).validate(),
  'v1/ServiceAccount': o => new ServiceAccount(o as never).validate(),
  'apps/v1/StatefulSet': o => new StatefulSet(o as never).validate(),
  'apps/v1/Deployment': o => new Deployment(o as never).validate(),
  'apps/v1/DaemonSet': o => new DaemonSet(o as never).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRole': o => new ClusterRole(o as never).validate(),
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': o => new ClusterRoleBinding(o as never).validate(),
  'policy/v1/PodDisruptionBudget': o => new PodDisruptionBudget(o as never).validate(),
  'networking.k8s.io/v1/NetworkPolicy': o => new NetworkPolicy(o as never).validate(),
  'monitoring.coreos.com/v1/ServiceMonitor': o => new ServiceMonitor(o as never).validate()
}

/** Every directory under deploy/kubernetes with a kustomization.yaml, and whether it is a component. */
function kustomizations (): Array<{ dir: string, component: boolean }> {
  const out: Array<{ dir: string, component: boolean }> = []
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name)
      if (statSync(path).isDirectory()) walk(path)
      else if (name === 'kustomization.yaml') out.push({ dir, component: readFileSync(path, 'utf8').includes('kind: Component') })
    }
  }
  walk(K8S)
  return out.sort((a, b) => a.dir.localeCompare(b.dir))
}

function render (dir: string): Obj[] {
  if (KUBECTL === undefined) throw new Error('kubectl is not on the PATH')
  const text = execFileSync(KUBECTL, ['kustomize', dir], { encoding: 'utf8' })
  return parseAllDocuments(text).map(d => d.toJS() as Obj)
}

/** The overlays people apply, rendered; without kubectl, nothing (the raw files are checked instead). */
const OVERLAYS = ['single', 'fleet', 'examples/single-monitored-tls']
const rendered = new Map<string, Obj[]>(KUBECTL === undefined ? [] : [...OVERLAYS, 'node-config'].map(o => [o, render(join(K8S, o))]))

function one (objects: Obj[], kind: string, name: string): Obj {
  const found = objects.filter(o => o.kind === kind && o.metadata.name.startsWith(name))
  if (found.length !== 1) throw new Error(`${found.length} ${kind} named ${name}*`)
  return found[0] as Obj
}

interface Container { name: string, image: string, args?: string[], env?: Array<{ name: string, value?: string, valueFrom?: { fieldRef?: { fieldPath: string } } }>, ports?: Array<{ name: string, containerPort: number }>, volumeMounts?: Array<{ name: string, mountPath: string }>, startupProbe?: Probe, livenessProbe?: Probe, readinessProbe?: Probe, resources?: { requests?: Record<string, string>, limits?: Record<string, string> }, securityContext?: Record<string, unknown> }
interface Probe { httpGet?: { path: string, port: string | number, scheme?: string } }
interface PodSpec { containers: Container[], volumes?: Array<{ name: string, configMap?: { name: string }, secret?: { secretName: string } }>, securityContext?: Record<string, unknown> }

function podOf (workload: Obj): PodSpec {
  return (workload.spec as { template: { spec: PodSpec } }).template.spec
}

function bytesOf (quantity: string): number {
  const m = /^(\d+)(Mi|Gi)$/.exec(quantity)
  if (m === null) throw new Error(`unread quantity ${quantity}`)
  return Number(m[1]) * (m[2] === 'Gi' ? 1024 ** 3 : 1024 ** 2)
}

t.test('every kustomization renders, and every object validates against the API schemas', { skip: KUBECTL === undefined ? 'kubectl is not on the PATH (the raw files are validated below)' : false }, async t => {
  const all = kustomizations()
  t.ok(all.length >= 7, `${all.length} kustomizations`)
  for (const { dir, component } of all) {
    if (component) continue
    const objects = render(dir)
    t.ok(objects.length > 0, `${dir.slice(K8S.length + 1)}: renders`)
    for (const o of objects) {
      const Model = MODELS[`${o.apiVersion}/${o.kind}`]
      if (Model === undefined) {
        t.fail(`${o.apiVersion}/${o.kind} has no schema here`)
        continue
      }
      t.doesNotThrow(() => Model(o), `${dir.slice(K8S.length + 1)}: ${o.kind} ${o.metadata.name}`)
    }
  }
  // The validation can fail: a port that is not a number is caught.
  const statefulSet = structuredClone(one(rendered.get('single') ?? [], 'StatefulSet', 'registry-mirror'))
  podOf(statefulSet).containers[0]!.ports![0]!.containerPort = 'http' as unknown as number
  t.throws(() => MODELS['apps/v1/StatefulSet']?.(statefulSet), 'a broken object does not validate')
})

t.test('the raw resource files validate without kubectl too', async t => {
  for (const dir of ['base', 'namespace', 'fleet', 'components/monitoring', 'node-config']) {
    for (const name of readdirSync(join(K8S, dir)).filter(n => n.endsWith('.yaml') && n !== 'kustomization.yaml')) {
      for (const doc of parseAllDocuments(readFileSync(join(K8S, dir, name), 'utf8'))) {
        const o = doc.toJS() as Obj
        const Model = MODELS[`${o.apiVersion}/${o.kind}`]
        t.ok(Model !== undefined, `${dir}/${name}: ${o.kind} known`)
        if (Model !== undefined) t.doesNotThrow(() => Model(o), `${dir}/${name}: ${o.kind} ${o.metadata.name}`)
      }
    }
  }
})

t.test('the manifests name what the Dockerfile builds and the config loader reads', { skip: KUBECTL === undefined ? 'kubectl is not on the PATH' : false }, async t => {
  const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')
  const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '))
  const instruction = (name: string): string[] => [...runtime.matchAll(new RegExp(`^${name} (.+)$`, 'gm'))].map(m => m[1] ?? '')
  t.same(instruction('USER'), ['node'], 'the image runs as node (uid 1000 in the node images)')
  t.same(instruction('EXPOSE'), ['5000'])
  t.same(instruction('VOLUME'), ['["/var/lib/registry-mirror"]'])
  const cmd = JSON.parse(instruction('CMD')[0] ?? '[]') as string[]
  t.notMatch(runtime, 'MIRROR_STORAGE_PATH', 'nothing in the image overrides a mounted config\'s storage.path')

  for (const overlay of OVERLAYS) {
    const objects = rendered.get(overlay) ?? []
    const statefulSet = one(objects, 'StatefulSet', 'registry-mirror')
    const pod = podOf(statefulSet)
    const c = pod.containers[0] as Container
    t.match(c.image, /(^|\/)registry-mirror:/, `${overlay}: the image`)
    t.same(c.args, cmd, `${overlay}: the image's own command`)
    t.equal(pod.securityContext?.runAsUser, 1000, `${overlay}: the image's user`)
    t.match(c.securityContext, { readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } }, `${overlay}: restricted`)
    const mount = (name: string): string | undefined => c.volumeMounts?.find(m => m.name === name)?.mountPath
    const configPath = cmd[cmd.indexOf('--config') + 1] ?? ''
    t.equal(mount('config'), dirname(configPath), `${overlay}: the ConfigMap is mounted where the command reads the config`)
    const configMapName = pod.volumes?.find(v => v.name === 'config')?.configMap?.name ?? ''
    const configMap = objects.find(o => o.kind === 'ConfigMap' && o.metadata.name === configMapName)
    const text = configMap?.data?.['config.yml']
    t.ok(text !== undefined, `${overlay}: the mounted ConfigMap holds config.yml`)
    const config = parseConfig(text ?? '', `${overlay} config.yml`, {})
    t.equal(config.storage.path, mount('data'), `${overlay}: storage.path is the volume's mount`)
    t.equal(mount('data'), '/var/lib/registry-mirror', 'the image\'s volume')
    const port = (name: string): number | undefined => c.ports?.find(p => p.name === name)?.containerPort
    t.equal(config.listen.port, port('http'), `${overlay}: listen is the http port`)
    t.equal(config.listen.port, 5000, 'the image\'s port')
    t.equal(config.metrics.listen?.port, port('metrics'), `${overlay}: metrics.listen is the metrics port`)
    for (const probe of [c.startupProbe, c.livenessProbe, c.readinessProbe]) {
      t.equal(probe?.httpGet?.port, 'metrics', `${overlay}: probed on the metrics port`)
      t.equal(probe?.httpGet?.scheme ?? 'HTTP', config.tls === undefined ? 'HTTP' : 'HTTPS', `${overlay}: with the scheme the listener speaks`)
    }
    if (config.tls !== undefined) {
      t.equal(dirname(config.tls.cert), mount('tls'), `${overlay}: the certificate is in the mounted Secret`)
      t.equal(dirname(config.tls.key), mount('tls'))
    }
    for (const s of objects.filter(o => o.kind === 'Service')) {
      for (const p of (s.spec as { ports: Array<{ targetPort: string }> }).ports) {
        const target = (s.spec as { selector: Record<string, string> }).selector['app.kubernetes.io/name'] === 'registry-mirror' ? c : podOf(one(objects, 'Deployment', 'registry-mirror-balancer')).containers[0]
        t.ok(target?.ports?.some(q => q.name === p.targetPort), `${overlay}: Service ${s.metadata.name} port ${p.targetPort} names a container port`)
      }
    }
  }
})

t.test('the probes\' paths are answered by a mirror started from the shipped config', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  const text = readFileSync(join(K8S, 'base', 'mirror.config.yml'), 'utf8')
  const config = parseConfig(text, 'base/mirror.config.yml', {})
  const storage = await mkdtemp(join(tmpdir(), 'mirror-k8s-'))
  t.teardown(async () => await rm(storage, { recursive: true, force: true }))
  // The same config on loopback ports of the system's choosing, in a temp dir.
  const mirror = await startMirror(t, { upstreams: { 'docker.io': hub.url }, storage, metrics: { listen: { host: '127.0.0.1', port: 0 } } })
  const ops = mirror.opsUrl ?? ''
  const pod = parseAllDocuments(readFileSync(join(K8S, 'base', 'statefulset.yaml'), 'utf8'))[0]?.toJS() as Obj
  const c = podOf(pod).containers[0] as Container
  for (const probe of [c.startupProbe, c.livenessProbe, c.readinessProbe]) {
    const res = await fetch(`${ops}${probe?.httpGet?.path ?? '?'}`)
    t.equal(res.status, 200, `${probe?.httpGet?.path ?? '?'} answers 200 on the metrics listener`)
  }
  t.equal((await fetch(`${mirror.url}/healthz`)).status, 404, 'and not on the clients\' port (metrics.listen is set in the shipped config)')
  t.ok(config.metrics.listen !== undefined)
})

t.test('memory requests and limits cover what the bench measured', async t => {
  const results = readFileSync(join(ROOT, 'bench', 'RESULTS.md'), 'utf8')
  const mb = (pattern: RegExp): number => {
    const m = pattern.exec(results)
    if (m === null) throw new Error(`bench/RESULTS.md has no ${String(pattern)}`)
    return Number(m[1]) * 1e6
  }
  const peak = mb(/\| 6\. peak RSS over the run \(VmHWM\)\s*\|\s*(\d+) MB/)
  const slowReaders = mb(/\| 8\. \d+ slow readers[^|]*: peak RSS\s*\|\s*(\d+) MB/)
  const pod = parseAllDocuments(readFileSync(join(K8S, 'base', 'statefulset.yaml'), 'utf8'))[0]?.toJS() as Obj
  const resources = (podOf(pod).containers[0] as Container).resources
  t.ok(bytesOf(resources?.requests?.memory ?? '0Mi') >= peak, `request ${resources?.requests?.memory ?? ''} ≥ the peak over workloads 1-5 (${peak / 1e6} MB)`)
  t.ok(bytesOf(resources?.limits?.memory ?? '0Mi') >= slowReaders * 1.25, `limit ${resources?.limits?.memory ?? ''} ≥ 1.25 × the peak with 1,000 stalled readers (${slowReaders / 1e6} MB)`)
})

t.test('the copies here stay what they were copied from', async t => {
  t.equal(readFileSync(join(K8S, 'components', 'monitoring', 'grafana-dashboard.json'), 'utf8'), readFileSync(join(ROOT, 'docs', 'grafana-dashboard.json'), 'utf8'), 'the Grafana dashboard')
  // The balancer: only its server lines, resolver and access log differ from deploy/nginx's.
  const strip = (text: string): string => text.split('\n').filter(l => !/^\s*(#|server \S+:\d+ |resolver |access_log )/.test(l)).join('\n')
  const shipped = readFileSync(join(ROOT, 'deploy', 'nginx', 'registry-mirror.conf'), 'utf8')
  const here = readFileSync(join(K8S, 'fleet', 'nginx', 'registry-mirror.conf'), 'utf8')
  t.equal(strip(here), strip(shipped), 'the balancer\'s hashing rules and proxying are deploy/nginx\'s')
  const servers = [...here.matchAll(/^\s*server (\S+):(\d+) resolve /gm)].map(m => [m[1], m[2]])
  const replicas = 3
  t.same(servers, Array.from({ length: replicas }, (_, i) => [`registry-mirror-${i}.registry-mirror-pods.registry-mirror.svc.cluster.local`, '5000']), 'one line per StatefulSet pod, by its stable name')
  if (KUBECTL !== undefined) {
    const fleet = rendered.get('fleet') ?? []
    const statefulSet = one(fleet, 'StatefulSet', 'registry-mirror')
    t.equal((statefulSet.spec as { replicas: number }).replicas, replicas, 'as many as the fleet runs')
    t.equal((statefulSet.spec as { serviceName: string }).serviceName, 'registry-mirror-pods')
    t.equal(statefulSet.metadata.namespace, 'registry-mirror')
    t.ok(existsSync(join(K8S, 'fleet', 'nginx', 'registry-mirror.conf')))
  }
})

t.test('a config mounted from a ConfigMap is taken as written, and a path it cannot use is named', async t => {
  const hub = await startFakeRegistry()
  t.teardown(async () => await hub.close())
  const dir = await mkdtemp(join(tmpdir(), 'mirror-k8s-cli-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'not-a-directory')
  await writeFile(file, 'x')
  const config = await writeConfig(dir, { storage: join(file, 'data'), upstreams: { 'docker.io': hub.url } })
  const bad = await runCli(['stats', '--config', config])
  t.equal(bad.code, 78, 'a config problem')
  t.match(bad.stderr, `storage.path: ${join(file, 'data')} cannot be used (ENOTDIR`, 'naming storage.path')
  t.notMatch(bad.stderr, '    at ', 'no stack trace')
  const good = await runCli(['stats', '--json', '--config', await writeConfig(dir, { storage: join(dir, 'here'), upstreams: { 'docker.io': hub.url } })])
  t.equal(good.code, 0, good.stderr)
  t.ok(existsSync(join(dir, 'here', 'index.db')), 'the cache is where the config says')
})

t.test('the node configurator\'s DaemonSet: arguments its own parser takes, the mirror\'s NodePort and upstreams, its paths mounted', { skip: KUBECTL === undefined ? 'kubectl is not on the PATH' : false }, async t => {
  const objects = rendered.get('node-config') ?? []
  const daemonSet = one(objects, 'DaemonSet', 'registry-mirror-node-config')
  const pod = podOf(daemonSet) as PodSpec & { hostNetwork?: boolean, serviceAccountName?: string }
  const c = pod.containers[0] as Container
  t.equal(pod.hostNetwork, true, 'probes from the node\'s network, as containerd connects')
  t.match(c.image, /(^|\/)registry-mirror:/, 'the mirror\'s own image')
  t.equal(c.args?.[0], 'node-config')
  // The real option parser, with the environment the pod gets (the downward API's values stood in).
  const flags = c.args?.slice(1) ?? []
  const args: Record<string, string> = {}
  for (let i = 0; i < flags.length; i += 2) args[(flags[i] ?? '').replace(/^--/, '')] = flags[i + 1] ?? ''
  const env: NodeJS.ProcessEnv = {}
  for (const e of c.env ?? []) env[e.name] = e.value?.replace('$(NODE_IP)', '10.0.0.7') ?? (e.valueFrom?.fieldRef?.fieldPath === 'status.hostIP' ? '10.0.0.7' : 'node-a')
  t.ok(c.env?.some(e => e.name === 'NODE_NAME' && e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName'), 'NODE_NAME from the downward API, for the annotation')
  const options = nodeConfigOptions(args as NodeConfigArgs, env)
  const nodePort = (parseAllDocuments(readFileSync(join(K8S, 'base', 'service.yaml'), 'utf8')).map(d => d.toJS() as Obj).find(o => o.metadata.name === 'registry-mirror-node')?.spec as { ports: Array<{ nodePort: number }> }).ports[0]?.nodePort
  t.equal(options.mirror, `http://10.0.0.7:${nodePort ?? '?'}`, 'the mirror at the node\'s own address and the NodePort Service\'s port')
  const upstreams = [...parseConfig(readFileSync(join(K8S, 'base', 'mirror.config.yml'), 'utf8'), 'base', {}).upstreams.keys()]
  t.same([...options.registries].sort(), [...upstreams].sort(), 'the registries are the mirror\'s upstreams')
  const mounted = (path: string): boolean => (c.volumeMounts ?? []).some(m => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
  t.ok(options.certsDir !== undefined && mounted(options.certsDir), `certs.d mounted (${options.certsDir ?? ''})`)
  t.notOk((c.volumeMounts as Array<{ mountPath: string, readOnly?: boolean }> | undefined)?.find(m => m.mountPath === options.certsDir)?.readOnly, 'and writable')
  t.ok(mounted(options.containerdConfig), 'containerd\'s config.toml readable')
  t.ok(mounted(dirname(options.statusFile)), 'the status file on the host')
  const role = one(objects, 'ClusterRole', 'registry-mirror-node-config') as Obj & { rules: Array<{ resources: string[], verbs: string[] }> }
  t.same(role.rules, [{ apiGroups: [''], resources: ['nodes'], verbs: ['get', 'patch'] }], 'it may read and annotate nodes, nothing else')
  t.equal(pod.serviceAccountName, 'registry-mirror-node-config')
  const binding = one(objects, 'ClusterRoleBinding', 'registry-mirror-node-config') as Obj & { subjects: Array<{ namespace: string, name: string }> }
  t.same(binding.subjects.map(x => [x.namespace, x.name]), [[daemonSet.metadata.namespace, 'registry-mirror-node-config']], 'bound to its service account, in its namespace')
})
