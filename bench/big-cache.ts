// Workload 10: a cache of many blobs. Opening a data directory must cost the
// same whatever the cache holds (issue 17): `serve` ready and `stats`
// answered in under a second over 200,000 blobs. The blobs are tiny (the
// count is what is measured, not the bytes) and written straight into each
// server's own layout: registry-mirror's blobs/ with their index rows, the
// reference registry's docker/registry/v2/blobs/.../data (hard links to the
// same files). The reference has no stats command; its start is measured.

import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { copyFile, link, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { CacheIndex } from '../lib/db/cache-index.js'
import { CephRgw } from '../harness/ceph-rgw.js'
import type { ReferenceRegistry } from '../harness/reference-registry.js'
import { RegistryMirrorServer, type RegistryMirrorOptions } from './servers.js'

const run = promisify(execFile)

/** Files written at once while filling. */
const WRITES_AT_ONCE = 64

export interface BigCacheResult {
  readonly blobs: number
  readonly fillSeconds: number
  /** From spawning `serve` to its "listening" line. */
  readonly serveSeconds: number
  /** `stats --json`, from spawn to exit. */
  readonly statsSeconds: number
  /** The reference registry's start over the same blobs, to its first /v2/ answer. */
  readonly referenceStartSeconds: number
  /** The same index with its blobs in a bucket (radosgw): serve and stats. */
  readonly bucket: { readonly serveSeconds: number, readonly statsSeconds: number }
}

export async function bigCache (options: { count: number, mirror: Omit<RegistryMirrorOptions, 'cpuProfDir'>, reference: ReferenceRegistry, entryPoint: string }): Promise<BigCacheResult> {
  const { count, reference } = options
  const data = join(options.mirror.dir, 'data')
  const refBlobs = join(reference.dir, 'data', 'docker', 'registry', 'v2', 'blobs', 'sha256')
  const fillStarted = Date.now()
  for (let i = 0; i < 256; i++) {
    const prefix = i.toString(16).padStart(2, '0')
    await mkdir(join(data, 'blobs', 'sha256', prefix), { recursive: true })
    await mkdir(join(refBlobs, prefix), { recursive: true })
  }
  const index = new CacheIndex({ path: join(data, 'index.db') })
  try {
    for (let start = 0; start < count; start += WRITES_AT_ONCE * 16) {
      const batch: Array<{ hex: string, bytes: Buffer }> = []
      for (let i = start; i < Math.min(count, start + WRITES_AT_ONCE * 16); i++) {
        const bytes = Buffer.from(`bench blob ${i}\n`)
        batch.push({ hex: createHash('sha256').update(bytes).digest('hex'), bytes })
      }
      for (let i = 0; i < batch.length; i += WRITES_AT_ONCE) {
        await Promise.all(batch.slice(i, i + WRITES_AT_ONCE).map(async ({ hex, bytes }) => {
          const file = join(data, 'blobs', 'sha256', hex.slice(0, 2), hex)
          await writeFile(file, bytes)
          await mkdir(join(refBlobs, hex.slice(0, 2), hex))
          await link(file, join(refBlobs, hex.slice(0, 2), hex, 'data'))
        }))
      }
      index.transaction(() => {
        for (const { hex, bytes } of batch) index.putBlobRow(`sha256:${hex}`, bytes.length)
      })
    }
  } finally {
    index.close()
  }
  const fillSeconds = (Date.now() - fillStarted) / 1000

  const serveStarted = Date.now()
  const server = await RegistryMirrorServer.start(options.mirror)
  const serveSeconds = (Date.now() - serveStarted) / 1000
  try {
    const res = await fetch(`${server.url}/v2/`)
    await res.arrayBuffer()
    if (res.status !== 200) throw new Error(`workload 10: /v2/ answered HTTP ${res.status} after the start`)
  } finally {
    await server.stop()
  }

  const stats = async (dir: string, env: NodeJS.ProcessEnv = process.env): Promise<number> => {
    const statsStarted = Date.now()
    const { stdout } = await run(process.execPath, [options.entryPoint, 'stats', '--json', '--config', join(dir, 'mirror.config.yml')], { maxBuffer: 1024 * 1024, env })
    const seconds = (Date.now() - statsStarted) / 1000
    const blobs = (JSON.parse(stdout) as { cache: { blobs: number } }).cache.blobs
    if (blobs !== count) throw new Error(`workload 10: stats counted ${blobs} blobs, ${count} were written`)
    return seconds
  }
  const statsSeconds = await stats(options.mirror.dir)

  // The same index, its blobs said to be in a bucket: opening must not list the bucket either.
  // (The bucket is empty: the radosgw here keeps objects in memory. The index is what is opened.)
  const rgw = await CephRgw.start({ label: 'big-cache' })
  let bucket: BigCacheResult['bucket']
  try {
    const bucketName = await rgw.createBucket('big-cache')
    const dir = `${options.mirror.dir}-bucket`
    await mkdir(join(dir, 'data'), { recursive: true })
    await copyFile(join(data, 'index.db'), join(dir, 'data', 'index.db'))
    const env = { AWS_ACCESS_KEY_ID: rgw.accessKeyId, AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' }
    const storageYaml = ['s3:', `  endpoint: ${rgw.endpoint}`, `  bucket: ${bucketName}`, '  forcePathStyle: true']
    // stats first: the serving mirror's background sweep would drop the rows the empty bucket lacks.
    await RegistryMirrorServer.writeConfig({ ...options.mirror, dir, storageYaml })
    const bucketStats = await stats(dir, { ...process.env, ...env })
    const bucketServeStarted = Date.now()
    const server = await RegistryMirrorServer.start({ ...options.mirror, dir, storageYaml, env })
    const bucketServe = (Date.now() - bucketServeStarted) / 1000
    await server.stop()
    bucket = { serveSeconds: bucketServe, statsSeconds: bucketStats }
  } finally {
    await rgw.close()
  }

  await reference.stop()
  const refStarted = Date.now()
  await reference.start()
  const referenceStartSeconds = (Date.now() - refStarted) / 1000
  return { blobs: count, fillSeconds, serveSeconds, statsSeconds, referenceStartSeconds, bucket }
}
