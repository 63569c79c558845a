// The log destination never stops the mirror: a stalled reader costs dropped
// lines (counted, and reported once it reads again), never a blocked event loop.

import t from 'tap'
import { execFileSync } from 'node:child_process'
import { closeSync, constants, openSync, readSync } from 'node:fs'
import { join } from 'node:path'
import { LogSink } from '../lib/log-sink.js'
import { startChildMirror, writeConfig } from './helpers/child-mirror.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { tempDir } from './helpers/temp-dir.js'

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

/** Everything readable from a non-blocking fd now. */
function drain (fd: number): string {
  const buffer = Buffer.alloc(64 * 1024)
  let out = ''
  for (;;) {
    try {
      const n = readSync(fd, buffer, 0, buffer.length, null)
      if (n === 0) return out
      out += buffer.subarray(0, n).toString()
    } catch (err) {
      if (typeof err === 'object' && err !== null && 'code' in err && err.code === 'EAGAIN') return out
      throw err
    }
  }
}

t.test('a reader that stops reading: lines queue up to the bound, the rest are dropped and counted, the event loop runs on, and the loss is reported', async t => {
  const dir = await tempDir(t, 'mirror-log-fifo')
  const fifo = join(dir, 'log')
  execFileSync('mkfifo', [fifo])
  const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
  const writer = openSync(fifo, 'w')
  t.teardown(() => { closeSync(writer); closeSync(reader) })
  const sink = new LogSink(writer, { maxQueuedBytes: 64 * 1024, retryMs: 20 })
  const line = `${JSON.stringify({ level: 30, msg: 'x'.repeat(80) })}\n`
  for (let i = 0; i < 5000; i++) sink.write(line)
  const started = Date.now()
  await sleep(50)
  t.ok(Date.now() - started < 5_000, 'timers still fire: the event loop is not blocked')
  t.ok(sink.dropped > 0, `lines past the bound were dropped (${sink.dropped})`)
  t.ok(sink.dropped < 5000, 'the rest were kept')

  const dropped = sink.dropped
  let read = ''
  for (let i = 0; i < 300 && !read.includes('log lines were dropped'); i++) {
    read += drain(reader)
    await sleep(10)
  }
  sink.write('{"level":30,"msg":"after"}\n')
  for (let i = 0; i < 100 && !read.includes('"msg":"after"'); i++) {
    await sleep(10)
    read += drain(reader)
  }
  t.equal(sink.dropped, dropped, 'nothing more was dropped once the reader read again')
  const report = read.split('\n').find(l => l.includes('log lines were dropped'))
  t.ok(report, 'the loss is reported once the reader reads again')
  t.equal((JSON.parse(report ?? '{}') as { dropped?: number }).dropped, sink.dropped, 'with how many lines were lost')
  t.match(read, /"msg":"after"/, 'and lines flow again')
})

t.test('the mirror with its stdout never read keeps answering', { timeout: 60_000 }, async t => {
  const dir = await tempDir(t, 'mirror-log-stall')
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const config = await writeConfig(dir, { storage: join(dir, 'data'), upstreams: { 'docker.io': fake.url } })
  const mirror = await startChildMirror(config)
  t.teardown(async () => await mirror.kill('SIGKILL'))
  mirror.process.stdout?.pause()
  // Each request logs a line of ~200 bytes: far more than a pipe holds (64 KiB).
  for (let i = 0; i < 2000; i++) {
    const res = await fetch(`${mirror.url}/v2/`)
    if (res.status !== 200) t.fail(`request ${i}: ${res.status}`)
    await res.arrayBuffer()
  }
  const health = await fetch(`${mirror.url}/healthz`)
  t.equal(health.status, 200, 'still answering with its log pipe full')
  await mirror.kill('SIGTERM')
  t.equal(mirror.process.signalCode ?? mirror.process.exitCode, 0, 'and it shuts down cleanly on SIGTERM')
})
