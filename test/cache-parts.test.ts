import t from 'tap'
import { AccessRecorder } from '../lib/cache/access-recorder.js'
import type { AccessBatch } from '../lib/db/cache-index.js'
import { Inflight } from '../lib/cache/inflight.js'
import { FleetShare, MAX_WAITING } from '../lib/cache/fleet-share.js'
import type { SharedContent } from '../lib/store/blob-store.js'
import { pino } from 'pino'
import { PaginationNumberInvalidError } from '../lib/errors.js'
import { asciiOrder, paginate, parsePage } from '../lib/mirror/listings.js'
import { thrownBy } from './helpers/throws.js'

/** A promise with its resolve and reject, for holding a run open. */
function deferred<T> (): { promise: Promise<T>, resolve: (v: T) => void, reject: (e: Error) => void } {
  let resolve: (v: T) => void = () => {}
  let reject: (e: Error) => void = () => {}
  const promise = new Promise<T>((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}

// ---------------------------------------------------------------- Inflight

t.test('concurrent callers of one key share one run and learn that they joined', async t => {
  const inflight = new Inflight<string>()
  const held = deferred<string>()
  let calls = 0
  const fn = async (): Promise<string> => { calls++; return await held.promise }
  const first = inflight.run('k', fn)
  const second = inflight.run('k', fn)
  const third = inflight.run('k', fn)
  t.equal(calls, 1, 'fn ran once')
  t.equal(first.joined, false)
  t.equal(second.joined, true)
  t.equal(third.joined, true)
  t.equal(second.promise, first.promise, 'the same promise')
  t.equal(inflight.size, 1)
  t.equal(inflight.get('k'), first.promise)
  held.resolve('value')
  t.same(await Promise.all([first.promise, second.promise, third.promise]), ['value', 'value', 'value'])
})

t.test('different keys run independently', async t => {
  const inflight = new Inflight<string>()
  let calls = 0
  const a = inflight.run('a', async () => { calls++; return 'A' })
  const b = inflight.run('b', async () => { calls++; return 'B' })
  t.equal(calls, 2)
  t.equal(b.joined, false)
  t.same(await Promise.all([a.promise, b.promise]), ['A', 'B'])
})

t.test('a finished run is forgotten: the next caller starts a new one', async t => {
  const inflight = new Inflight<number>()
  let calls = 0
  const first = inflight.run('k', async () => ++calls)
  t.equal(await first.promise, 1)
  t.equal(inflight.size, 0)
  t.equal(inflight.get('k'), undefined)
  const second = inflight.run('k', async () => ++calls)
  t.equal(second.joined, false)
  t.equal(await second.promise, 2)
})

t.test('a failed run is forgotten, every joiner gets its error, and the next caller tries again', async t => {
  const inflight = new Inflight<string>()
  const held = deferred<string>()
  const first = inflight.run('k', async () => await held.promise)
  const joiner = inflight.run('k', async () => 'never')
  held.reject(new Error('upstream down'))
  await t.rejects(first.promise, /upstream down/)
  await t.rejects(joiner.promise, /upstream down/)
  t.equal(inflight.size, 0, 'the failure is not remembered')
  const retry = inflight.run('k', async () => 'ok')
  t.equal(retry.joined, false)
  t.equal(await retry.promise, 'ok')
})

// ---------------------------------------------------------------- AccessRecorder

function recorder (options: { intervalMs?: number, now?: () => number, fail?: boolean } = {}) {
  const batches: AccessBatch[] = []
  const errors: unknown[] = []
  const r = new AccessRecorder({
    sink: {
      recordAccess (batch) {
        batches.push(batch)
        if (options.fail === true) throw new Error('database is locked')
      }
    },
    intervalMs: options.intervalMs ?? 60_000,
    now: options.now,
    onError: err => errors.push(err)
  })
  return { r, batches, errors }
}

t.test('many notes reach the sink in one call, with the latest time per digest', async t => {
  let clock = 1000
  const { r, batches } = recorder({ now: () => clock })
  t.teardown(() => r.close())
  for (let i = 0; i < 100; i++) {
    clock++
    r.blob('sha256:b1')
    r.blob('sha256:b2')
    r.manifest('sha256:m1')
  }
  t.equal(batches.length, 0, 'nothing is written while notes are taken')
  r.flush()
  t.equal(batches.length, 1, 'one sink call')
  const batch = batches[0]
  if (batch === undefined) return
  t.same([...batch.blobs], [['sha256:b1', 1100], ['sha256:b2', 1100]])
  t.same([...batch.manifests], [['sha256:m1', 1100]])
  t.same(Object.keys(batch).sort(), ['blobs', 'counters', 'manifests'], 'no repository is recorded from a request: only upstream makes one the cache\'s')
})

t.test('a flush with nothing noted does not call the sink, and notes are written once only', async t => {
  const { r, batches } = recorder()
  t.teardown(() => r.close())
  r.flush()
  t.equal(batches.length, 0)
  r.manifest('sha256:m')
  r.flush()
  r.flush()
  t.equal(batches.length, 1)
  r.blob('sha256:b')
  r.flush()
  t.equal(batches.length, 2)
  t.same([...(batches[1]?.blobs.keys() ?? [])], ['sha256:b'], 'the second batch holds only what came after the first')
  t.same([...(batches[1]?.manifests.keys() ?? [])], [])
})

t.test('close writes what is still noted', async t => {
  const { r, batches } = recorder()
  r.blob('sha256:b')
  r.manifest('sha256:m')
  r.close()
  t.equal(batches.length, 1)
  t.same([...(batches[0]?.blobs.keys() ?? [])], ['sha256:b'])
  t.same([...(batches[0]?.manifests.keys() ?? [])], ['sha256:m'])
})

t.test('the timer writes the notes of each interval in one batch', async t => {
  const { r, batches } = recorder({ intervalMs: 10 })
  t.teardown(() => r.close())
  r.blob('sha256:a')
  r.blob('sha256:b')
  const deadline = Date.now() + 2000
  while (batches.length === 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  t.equal(batches.length, 1)
  t.same([...(batches[0]?.blobs.keys() ?? [])], ['sha256:a', 'sha256:b'])
})

t.test('a sink that throws is reported to onError and the recorder keeps working', async t => {
  const { r, batches, errors } = recorder({ fail: true })
  t.teardown(() => r.close())
  r.blob('sha256:a')
  t.doesNotThrow(() => r.flush())
  t.equal(errors.length, 1)
  t.match(errors[0], { message: 'database is locked' })
  r.blob('sha256:b')
  r.flush()
  t.equal(batches.length, 2)
  t.equal(errors.length, 2)
})

// ---------------------------------------------------------------- paginate / parsePage

t.test('parsePage takes n as a non-negative integer and an empty last as none', async t => {
  t.same(parsePage(undefined, undefined), { n: undefined, last: undefined })
  t.same(parsePage('2', 'b'), { n: 2, last: 'b' })
  t.same(parsePage('0', ''), { n: 0, last: undefined })
  t.same(parsePage('007', undefined), { n: 7, last: undefined })
})

t.test('parsePage refuses an n that is not a non-negative integer with PAGINATION_NUMBER_INVALID', async t => {
  for (const n of ['-1', 'abc', '1.5', '', ' 2', '2 ', '1e3', '0x10']) {
    const err = thrownBy(t, () => parsePage(n, undefined), PaginationNumberInvalidError, `n=${JSON.stringify(n)}`)
    t.equal(err?.code, 'PAGINATION_NUMBER_INVALID')
    t.equal(err?.status, 400)
  }
})

const items = ['a', 'b', 'c', 'd', 'e']

t.test('paginate without n or last gives everything and no next page', async t => {
  t.same(paginate(items, { n: undefined, last: undefined }), { items, next: undefined })
})

t.test('paginate gives n items and names the last of them as the next page start', async t => {
  t.same(paginate(items, { n: 2, last: undefined }), { items: ['a', 'b'], next: 'b' })
  t.same(paginate(items, { n: 2, last: 'b' }), { items: ['c', 'd'], next: 'd' })
  t.same(paginate(items, { n: 2, last: 'd' }), { items: ['e'], next: undefined }, 'the last page has no next')
})

t.test('paginate gives no next page when exactly n items remain', async t => {
  t.same(paginate(items, { n: 5, last: undefined }), { items, next: undefined })
  t.same(paginate(items, { n: 3, last: 'b' }), { items: ['c', 'd', 'e'], next: undefined })
})

t.test('paginate starts after last even when last is not one of the items', async t => {
  t.same(paginate(items, { n: undefined, last: 'bb' }), { items: ['c', 'd', 'e'], next: undefined })
  t.same(paginate(items, { n: 10, last: 'e' }), { items: [], next: undefined })
  t.same(paginate(items, { n: 10, last: 'z' }), { items: [], next: undefined })
  t.same(paginate(items, { n: undefined, last: '0' }), { items, next: undefined })
})

t.test('paginate with n=0 gives an empty page', async t => {
  t.same(paginate(items, { n: 0, last: undefined }).items, [])
})

t.test('paginate sorts into ASCII order first, as Go\'s sort.Strings: 10 before 2, Z before a, a repeated name once', async t => {
  const unsorted = ['b', '2', 'A', '10', '1', 'Z', 'a', '2']
  t.same(paginate(unsorted, { n: undefined, last: undefined }).items, ['1', '10', '2', 'A', 'Z', 'a', 'b'])
  t.same(paginate(unsorted, { n: 2, last: undefined }), { items: ['1', '10'], next: '10' })
  t.same(paginate(unsorted, { n: 2, last: '10' }), { items: ['2', 'A'], next: 'A' }, 'last: after it in that order')
  t.same(paginate(unsorted, { n: 3, last: 'A' }), { items: ['Z', 'a', 'b'], next: undefined })
  t.same(['b', 'a', 'B', '_', '-', '.', '9'].sort(asciiOrder), ['-', '.', '9', 'B', '_', 'a', 'b'], 'every character a tag may hold, by code')
})

t.test('paginate never hands back the array it was given', async t => {
  const source = ['a', 'b']
  const page = paginate(source, { n: undefined, last: undefined })
  page.items.push('c')
  t.same(source, ['a', 'b'])
})

// ---------------------------------------------------------------- FleetShare

/** A shared store whose writes hang (a store under water) or fail (a store down); reads say "none". */
function troubledShared (mode: 'hang' | 'fail'): SharedContent & { calls: number } {
  const state = { calls: 0 }
  const write = async (): Promise<void> => {
    state.calls++
    if (mode === 'fail') throw new Error('store down')
    await new Promise<void>(() => {})
  }
  return {
    get calls () { return state.calls },
    putManifest: write,
    getManifest: async () => undefined,
    putLink: write,
    hasLink: async () => false,
    mark: write,
    markedAt: async () => undefined,
    marks: async function * () {},
    putPin: write,
    removePin: write,
    pins: async function * () {},
    holdMs: () => 0
  }
}

t.test('a flood of distinct digests never grows what a node has to tell the fleet past its bound', async t => {
  for (const mode of ['hang', 'fail'] as const) {
    const shared = troubledShared(mode)
    const share = new FleetShare(shared, pino({ level: 'silent' }))
    t.teardown(() => share.close())
    const digest = (i: number): string => `sha256:${i.toString(16).padStart(64, '0')}`
    for (let i = 0; i < 5 * MAX_WAITING; i++) {
      share.linked(`library/app${i}`, digest(i))
      await share.accessed(digest(i), Date.now(), false)
    }
    await new Promise(resolve => setImmediate(resolve))
    t.ok(share.backlog <= MAX_WAITING * 2, `${mode}: waiting puts and retries stay bounded (${share.backlog} for ${10 * MAX_WAITING} told)`)
    if (mode === 'hang') t.equal(shared.calls, 4, 'hang: only the few puts at once reached the store; marks wait their turn with them')
    else t.ok(shared.calls > MAX_WAITING, `fail: each failed quickly and the next was tried (${shared.calls}); only the retries are kept, ${MAX_WAITING} at most`)
  }
})
