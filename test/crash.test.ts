// kill -9 at the worst moments, then restart: the mirror starts, repairs what
// the crash left, serves only verified bytes, and the index matches the disk.

import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { CacheIndex } from '../lib/db/cache-index.js'
import { auditStorage } from './helpers/audit.js'
import { runCli, startChildMirror, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { tempDir } from './helpers/temp-dir.js'

t.test('killed with SIGKILL during a large download: restarts clean and serves the blob verified', async t => {
  const dir = await tempDir(t, 'mirror-crash')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const bytes = randomBytes(40 * 1024 * 1024)
  const digest = fake.addBlob('library/big', bytes)
  fake.setBlobFault(digest, { kind: 'slow', bytesPerChunk: 1024 * 1024, intervalMs: 50, times: 1 })
  const storage = join(dir, 'data')
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url } })

  const first = await startChildMirror(config)
  t.teardown(async () => await first.kill('SIGKILL'))
  const res = await fetch(`${first.url}/v2/library/big/blobs/${digest}`)
  const reader = res.body?.getReader()
  let received = 0
  while (received < 8 * 1024 * 1024) {
    const chunk = await reader?.read()
    if (chunk === undefined || chunk.done) break
    received += chunk.value.length
  }
  t.ok(readdirSync(join(storage, 'tmp')).length > 0, 'a partial download is on disk')
  await first.kill('SIGKILL')
  await reader?.cancel().catch(() => {})

  const second = await startChildMirror(config)
  t.teardown(async () => await second.kill('SIGKILL'))
  t.match(second.output(), /removing temp file of an interrupted download/, 'the start-up check removed the partial download')
  t.same(readdirSync(join(storage, 'tmp')), [])
  const again = await fetch(`${second.url}/v2/library/big/blobs/${digest}`)
  const body = Buffer.from(await again.arrayBuffer())
  t.equal(createHash('sha256').update(body).digest('hex'), digest.slice(7), 'the blob is served whole and verified')
  await second.kill('SIGTERM')

  const gc = await runCli(['gc', '--dry-run', '--config', config])
  t.equal(gc.code, 0, gc.stderr)
  t.match(gc.stdout, /temp files of interrupted downloads would remove: 0/)
  t.match(gc.stdout, /index rows without a file would be dropped: 0/)
  t.match(gc.stdout, /files without a row would be indexed \(verified\): 0/)
  t.match(gc.stdout, /files not matching their digest would remove: 0/)
  t.same(auditStorage(storage).problems, [], 'index and disk agree')
})

t.test('killed with SIGKILL during eviction: restarts consistent, gc finds nothing, pulls succeed', async t => {
  const dir = await tempDir(t, 'mirror-crash')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const storage = join(dir, 'data')
  // A cache of 3000 small blobs, written as the mirror writes them (file by digest, then row).
  mkdirSync(join(storage, 'tmp'), { recursive: true })
  const index = new CacheIndex({ path: join(storage, 'index.db'), now: (() => { let n = 1_000; return () => n++ })() })
  const digests: string[] = []
  for (let i = 0; i < 3000; i++) {
    const bytes = randomBytes(1024)
    const hex = createHash('sha256').update(bytes).digest('hex')
    mkdirSync(join(storage, 'blobs', 'sha256', hex.slice(0, 2)), { recursive: true })
    writeFileSync(join(storage, 'blobs', 'sha256', hex.slice(0, 2), hex), bytes)
    index.putBlob(`sha256:${hex}`, bytes.length, 'docker.io/library/app')
    digests.push(fake.addBlob('library/app', bytes))
  }
  index.close()
  // maxSize far below what is cached: gc evicts nearly everything, one blob at a time.
  const config = await writeConfig(dir, { storage, upstreams: { 'docker.io': fake.url }, extraStorage: { maxSize: '100KiB' }, logLevel: 'debug' })

  const { spawn } = await import('node:child_process')
  const { CLI } = await import('./helpers/child-mirror.js')
  const gc = spawn(process.execPath, [CLI, 'gc', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] })
  let log = ''
  await new Promise<void>((resolve, reject) => {
    gc.stderr.on('data', (d: Buffer) => {
      log += d.toString()
      const evicted = log.split('"msg":"evicting"').length - 1
      if (evicted >= 200 && gc.exitCode === null) {
        gc.kill('SIGKILL')
        resolve()
      }
    })
    gc.once('exit', () => resolve())
    setTimeout(() => reject(new Error('gc never started evicting')), 30_000)
  })
  await new Promise(resolve => gc.once('exit', resolve).exitCode !== null || gc.signalCode !== null ? resolve(undefined) : undefined)
  t.equal(gc.signalCode, 'SIGKILL', 'killed mid-eviction')
  t.notMatch(log, /evicted cache entries/, 'before the pass finished')

  const mirror = await startChildMirror(config)
  t.teardown(async () => await mirror.kill('SIGKILL'))
  // A pull of evicted and surviving blobs alike succeeds, verified.
  for (const digest of [digests[0], digests[1500], digests[2999]]) {
    const res = await fetch(`${mirror.url}/v2/library/app/blobs/${digest ?? ''}`)
    const body = Buffer.from(await res.arrayBuffer())
    t.equal(res.status, 200)
    t.equal(`sha256:${createHash('sha256').update(body).digest('hex')}`, digest)
  }
  // A file whose row went just before the kill is the background sweep's to index (serving never waits for it).
  const swept = /"msg":"(background sweep done|the background sweep found the cache inconsistent[^"]*)"/
  for (let i = 0; i < 300 && !swept.test(mirror.output()); i++) await new Promise(resolve => setTimeout(resolve, 50))
  t.match(mirror.output(), swept, 'the background sweep ran to its end')
  await mirror.kill('SIGTERM')
  const dry = await runCli(['gc', '--dry-run', '--config', config])
  t.match(dry.stdout, /index rows without a file would be dropped: 0/)
  t.match(dry.stdout, /files without a row would be indexed \(verified\): 0/)
  t.match(dry.stdout, /files not matching their digest would remove: 0/)
  t.same(auditStorage(storage).problems, [], 'index and disk agree')
})
