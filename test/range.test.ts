import t from 'tap'
import { randomBytes } from 'node:crypto'
import { request } from 'undici'
import { RangeInvalidError } from '../lib/errors.js'
import { parseRange } from '../lib/mirror/range.js'
import { startFakeRegistry } from './helpers/fake-registry.js'
import { startMirror, type Teardown } from './helpers/mirror.js'

/** The 416 that parseRange throws, or 'none'. */
function unsatisfiable (header: string, size: number): { status: number, code: string, contentRange: string | undefined } | 'none' {
  try {
    parseRange(header, size)
    return 'none'
  } catch (err) {
    if (!(err instanceof RangeInvalidError)) throw err
    return { status: err.status, code: err.code, contentRange: err.headers['content-range'] }
  }
}

t.test('no Range header means the whole blob', async t => {
  t.equal(parseRange(undefined, 1000), undefined)
})

t.test('a first-last range is inclusive at both ends', async t => {
  t.same(parseRange('bytes=0-99', 1000), { start: 0, end: 99 })
  t.same(parseRange('bytes=0-0', 1000), { start: 0, end: 0 })
  t.same(parseRange('bytes=999-999', 1000), { start: 999, end: 999 })
  t.same(parseRange('bytes=100-199', 1000), { start: 100, end: 199 })
})

t.test('an open-ended range runs to the last byte', async t => {
  t.same(parseRange('bytes=500-', 1000), { start: 500, end: 999 })
  t.same(parseRange('bytes=0-', 1000), { start: 0, end: 999 })
  t.same(parseRange('bytes=999-', 1000), { start: 999, end: 999 })
})

t.test('a suffix range is the last N bytes, and the whole blob when N exceeds it', async t => {
  t.same(parseRange('bytes=-100', 1000), { start: 900, end: 999 })
  t.same(parseRange('bytes=-1', 1000), { start: 999, end: 999 })
  t.same(parseRange('bytes=-1000', 1000), { start: 0, end: 999 })
  t.same(parseRange('bytes=-5000', 1000), { start: 0, end: 999 })
})

t.test('a last byte past the end is clamped to the end', async t => {
  t.same(parseRange('bytes=900-5000', 1000), { start: 900, end: 999 })
  t.same(parseRange('bytes=0-99999999999999999999', 1000), { start: 0, end: 999 })
})

t.test('the unit is case-insensitive and whitespace around the parts is allowed', async t => {
  t.same(parseRange('Bytes=1-2', 10), { start: 1, end: 2 })
  t.same(parseRange('  bytes = 1 - 2 ', 10), { start: 1, end: 2 })
})

t.test('a range starting at or past the end is 416 RANGE_INVALID with content-range bytes */size', async t => {
  const expected = { status: 416, code: 'RANGE_INVALID', contentRange: 'bytes */1000' }
  t.same(unsatisfiable('bytes=1000-', 1000), expected)
  t.same(unsatisfiable('bytes=1000-1000', 1000), expected)
  t.same(unsatisfiable('bytes=5000-6000', 1000), expected)
  t.same(unsatisfiable('bytes=-0', 1000), expected, 'a zero-length suffix')
  t.same(unsatisfiable('bytes=0-', 0), { status: 416, code: 'RANGE_INVALID', contentRange: 'bytes */0' }, 'any range of an empty blob')
  t.same(unsatisfiable('bytes=-5', 0), { status: 416, code: 'RANGE_INVALID', contentRange: 'bytes */0' })
})

t.test('several ranges, other units, reversed or malformed ranges are ignored: the whole blob is sent', async t => {
  for (const header of ['bytes=0-1,5-6', 'bytes=0-1, 5-6', 'bytes=-1,-2', 'items=0-1', 'bytes=5-3', 'bytes=-', 'bytes=', 'bytes', '0-1', 'bytes=a-b', 'bytes=1.5-2', 'bytes=--1', '']) {
    t.equal(parseRange(header, 1000), undefined, JSON.stringify(header))
  }
})

type Asserts = Pick<typeof t, 'equal'>

async function setup (t: Teardown & Asserts) {
  const fake = await startFakeRegistry()
  t.teardown(async () => await fake.close())
  const mirror = await startMirror(t, { upstreams: { 'docker.io': fake.url } })
  const bytes = randomBytes(1000)
  const digest = fake.addBlob('library/app', bytes)
  const path = `/v2/library/app/blobs/${digest}`
  const get = async (range: string | undefined) => {
    const res = await request(mirror.url + path, { headers: range === undefined ? {} : { range } })
    const body = Buffer.from(await res.body.arrayBuffer())
    return { status: res.statusCode, headers: res.headers, body }
  }
  // Cache the blob first, so every answer below comes from disk.
  const first = await get(undefined)
  t.equal(first.status, 200)
  t.equal(fake.count('GET', '/blobs/'), 1)
  return { fake, bytes, get }
}

t.test('a cached blob answers each single-range form with 206 and exactly those bytes', async t => {
  const { fake, bytes, get } = await setup(t)
  const cases: Array<[string, number, number]> = [
    ['bytes=0-99', 0, 99],
    ['bytes=500-', 500, 999],
    ['bytes=-100', 900, 999],
    ['bytes=-5000', 0, 999],
    ['bytes=900-5000', 900, 999],
    ['bytes=0-0', 0, 0]
  ]
  for (const [range, start, end] of cases) {
    const res = await get(range)
    t.equal(res.status, 206, range)
    t.equal(res.headers['content-range'], `bytes ${start}-${end}/1000`, range)
    t.equal(res.headers['content-length'], String(end - start + 1), range)
    t.ok(res.body.equals(bytes.subarray(start, end + 1)), `${range}: the right bytes`)
  }
  t.equal(fake.count('GET', '/blobs/'), 1, 'all from the cache')
})

t.test('an unsatisfiable range on a cached blob is 416 RANGE_INVALID with content-range bytes */size', async t => {
  const { get } = await setup(t)
  for (const range of ['bytes=1000-', 'bytes=2000-3000', 'bytes=-0']) {
    const res = await get(range)
    t.equal(res.status, 416, range)
    t.equal(res.headers['content-range'], 'bytes */1000', range)
    const body = JSON.parse(res.body.toString()) as { errors: Array<{ code: string }> }
    t.equal(body.errors[0]?.code, 'RANGE_INVALID')
  }
})

t.test('several ranges on a cached blob get the whole blob with 200', async t => {
  const { bytes, get } = await setup(t)
  for (const range of ['bytes=0-1,5-6', 'bytes=10-5', 'items=0-9']) {
    const res = await get(range)
    t.equal(res.status, 200, range)
    t.equal(res.headers['content-range'], undefined, range)
    t.ok(res.body.equals(bytes), `${range}: the whole blob`)
  }
})
