import t from 'tap'
import { Writable } from 'node:stream'
import { createLogger } from '../lib/log.js'

function capture (): { log: ReturnType<typeof createLogger>, lines: () => string[] } {
  let text = ''
  const sink = new Writable({ write (chunk: Buffer, _enc, cb) { text += chunk.toString(); cb() } })
  return { log: createLogger('debug', sink), lines: () => text.trim().split('\n') }
}

t.test('credentials are redacted as fields, in headers and on errors', async t => {
  const { log, lines } = capture()
  log.info({ authorization: 'Bearer s3cret-1', password: 's3cret-2', token: 's3cret-3', access_token: 's3cret-4' }, 'fields')
  log.info({ headers: { authorization: 'Basic s3cret-5', accept: 'x' } }, 'headers')
  log.info({ req: { headers: { authorization: 'Basic s3cret-6' } } }, 'req')
  const err = Object.assign(new Error('boom'), { headers: { authorization: 'Bearer s3cret-7' }, token: 's3cret-8' })
  log.error({ err }, 'error')
  const text = lines().join('\n')
  t.notMatch(text, /s3cret/, 'no secret reaches the log')
  t.equal((text.match(/\[redacted\]/g) ?? []).length, 8, 'each one is marked redacted')
  const headers = JSON.parse(lines()[1] ?? '{}') as { headers?: { accept?: string } }
  t.equal(headers.headers?.accept, 'x', 'other fields are kept')
})

t.test('a request line is written as given', async t => {
  const { log, lines } = capture()
  log.info({ method: 'GET', path: '/v2/library/app/manifests/v1', status: 200, bytes: 512, cache: 'hit' }, 'request')
  const line = JSON.parse(lines()[0] ?? '{}') as Record<string, unknown>
  t.match(line, { method: 'GET', path: '/v2/library/app/manifests/v1', status: 200, bytes: 512, cache: 'hit', msg: 'request' })
})
