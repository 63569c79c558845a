// The node's own object in the Kubernetes API, when the configurator runs in
// a pod (NODE_NAME from the downward API, the service account's token): its
// containerRuntimeVersion tells containerd's version where the host's binary
// is out of reach, and the annotation registry-mirror.io/status tells
// `kubectl get node -o yaml` readers what the status file tells the node's.
// Needs RBAC to get and patch nodes. Plain HTTPS with the cluster's CA; the
// token is read again for every call, as projected tokens rotate.

import { request } from 'node:https'
import { readFile } from 'node:fs/promises'
import { errnoCode } from '../errors.js'

export const STATUS_ANNOTATION = 'registry-mirror.io/status'

export const SERVICE_ACCOUNT = Object.freeze({
  token: '/var/run/secrets/kubernetes.io/serviceaccount/token',
  ca: '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'
})

export interface KubernetesNode {
  readonly name: string
  /** status.nodeInfo.containerRuntimeVersion, e.g. containerd://2.1.4 or cri-o://1.31.0. */
  runtimeVersion: () => Promise<string | undefined>
  /** Sets one annotation on the node (a JSON merge patch). */
  annotate: (key: string, value: string) => Promise<void>
}

const TIMEOUT_MS = 10_000
const MAX_BODY = 4 * 1024 * 1024

/** The node's API when this runs in a pod that can reach it; undefined outside Kubernetes. */
export async function kubernetesNode (env: NodeJS.ProcessEnv, paths: { readonly token: string, readonly ca: string } = SERVICE_ACCOUNT): Promise<KubernetesNode | undefined> {
  const name = env.NODE_NAME
  const host = env.KUBERNETES_SERVICE_HOST
  if (name === undefined || name === '' || host === undefined || host === '') return undefined
  try {
    await readFile(paths.token)
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined
    throw err
  }
  const ca = await readFile(paths.ca).catch(() => undefined)
  const base = `https://${host.includes(':') ? `[${host}]` : host}:${env.KUBERNETES_SERVICE_PORT ?? '443'}`
  const path = `/api/v1/nodes/${encodeURIComponent(name)}`
  const call = async (method: 'GET' | 'PATCH', body?: string): Promise<unknown> => {
    const token = (await readFile(paths.token, 'utf8')).trim()
    return await send(new URL(path, base), method, token, ca, body)
  }
  return {
    name,
    runtimeVersion: async () => {
      const node = await call('GET')
      const info = field(field(node, 'status'), 'nodeInfo')
      const version = field(info, 'containerRuntimeVersion')
      return typeof version === 'string' ? version : undefined
    },
    annotate: async (key, value) => {
      await call('PATCH', JSON.stringify({ metadata: { annotations: { [key]: value } } }))
    }
  }
}

function field (value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null && key in value ? (value as Record<string, unknown>)[key] : undefined
}

async function send (url: URL, method: string, token: string, ca: Buffer | undefined, body: string | undefined): Promise<unknown> {
  return await new Promise((resolve, reject) => {
    const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'application/json' }
    if (body !== undefined) headers['content-type'] = 'application/merge-patch+json'
    const req = request(url, { method, headers, ca, agent: false, timeout: TIMEOUT_MS }, res => {
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (chunk: Buffer) => {
        size += chunk.length
        if (size > MAX_BODY) res.destroy(new Error(`${method} ${url.pathname}: answer larger than ${MAX_BODY} bytes`))
        else chunks.push(chunk)
      })
      res.once('error', reject)
      res.once('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        let parsed: unknown
        try {
          parsed = JSON.parse(text)
        } catch {
          parsed = undefined
        }
        const status = res.statusCode ?? 0
        if (status >= 200 && status < 300) resolve(parsed)
        else {
          const message = field(parsed, 'message')
          reject(new Error(`${method} ${url.pathname} answered ${status}${typeof message === 'string' ? `: ${message}` : ''}`))
        }
      })
    })
    req.once('timeout', () => req.destroy(new Error(`${method} ${url.pathname}: no answer within ${TIMEOUT_MS} ms`)))
    req.once('error', reject)
    req.end(body)
  })
}
