import t from 'tap'
import { parseDuration, parseSize } from '../lib/config/units.js'

t.test('parseSize reads bytes, decimal and binary units', async t => {
  const cases: Array<[string, number]> = [
    ['0', 0],
    ['1048576', 1048576],
    ['512B', 512],
    ['512b', 512],
    ['1KB', 1000],
    ['1kb', 1000],
    ['500MB', 500_000_000],
    ['2GB', 2_000_000_000],
    ['3TB', 3_000_000_000_000],
    ['1PB', 1e15],
    ['1KiB', 1024],
    ['1kib', 1024],
    ['1MiB', 1024 ** 2],
    ['50GiB', 50 * 1024 ** 3],
    ['50GIB', 50 * 1024 ** 3],
    ['2TiB', 2 * 1024 ** 4],
    ['1PiB', 1024 ** 5],
    ['1.5GiB', 1_610_612_736],
    ['1.1KB', 1100],
    ['0.5KiB', 512],
    ['50 GiB', 50 * 1024 ** 3],
    ['  10MiB  ', 10 * 1024 ** 2]
  ]
  for (const [text, bytes] of cases) t.equal(parseSize(text), bytes, text)
})

t.test('parseSize returns whole bytes, rounding fractions of a unit', async t => {
  t.equal(parseSize('1.0001KB'), 1000)
  t.equal(parseSize('0.3MB'), 300_000)
  t.ok(Number.isSafeInteger(parseSize('1.7GiB')))
})

t.test('parseSize names the bad value', async t => {
  const expected = (text: string): RegExp => new RegExp(`^expected a size like "50GiB" or "500MB", got ${escape(JSON.stringify(text))}`)
  const bad = ['', '   ', 'GiB', '10 gigs', '10G', '1e3', '1,5GiB', 'NaN', 'Infinity', '+5MB', '.5MB', '5MB!']
  for (const text of bad) t.throws(() => parseSize(text), { message: expected(text) }, JSON.stringify(text))
  t.throws(() => parseSize('10 gigs'), { message: 'expected a size like "50GiB" or "500MB", got "10 gigs"' })
  t.throws(() => parseSize('-1GiB'), { message: 'expected a size like "50GiB" or "500MB", got "-1GiB" (sizes cannot be negative)' })
  t.throws(() => parseSize('10G'), { message: /units are B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB/ })
  t.throws(() => parseSize('1.5'), { message: /got "1.5" \(a byte count must be a whole number\)/ })
  t.throws(() => parseSize('1.5B'), { message: /a byte count must be a whole number/ })
  t.throws(() => parseSize('99999999PiB'), { message: /got "99999999PiB" \(too large\)/ })
})

t.test('parseDuration reads ms, s, m, h, d, w and combinations', async t => {
  const cases: Array<[string, number]> = [
    ['0', 0],
    ['0.0', 0],
    ['0s', 0],
    ['0ms', 0],
    ['500ms', 500],
    ['30s', 30_000],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['1d', 86_400_000],
    ['1w', 604_800_000],
    ['1h30m', 5_400_000],
    ['1m30s', 90_000],
    ['1d12h', 129_600_000],
    ['1w1d1h1m1s1ms', 604_800_000 + 86_400_000 + 3_600_000 + 60_000 + 1000 + 1],
    ['1.5h', 5_400_000],
    ['0.5s', 500],
    ['1.5ms', 2],
    ['90m', 5_400_000],
    [' 5m ', 300_000]
  ]
  for (const [text, ms] of cases) t.equal(parseDuration(text), ms, text)
})

t.test('parseDuration refuses bare numbers other than 0 as ambiguous', async t => {
  t.throws(() => parseDuration('300'), {
    message: 'expected a duration like "5m" or "1h30m", got "300" (a bare number is ambiguous; add a unit, e.g. "300s")'
  })
  t.throws(() => parseDuration('1.5'), { message: /a bare number is ambiguous/ })
})

t.test('parseDuration names the bad value', async t => {
  t.throws(() => parseDuration('5 minutes'), { message: 'expected a duration like "5m" or "1h30m", got "5 minutes"' })
  t.throws(() => parseDuration(''), { message: 'expected a duration like "5m" or "1h30m", got ""' })
  t.throws(() => parseDuration('   '), { message: 'expected a duration like "5m" or "1h30m", got "   "' })
  t.throws(() => parseDuration('-5m'), { message: 'expected a duration like "5m" or "1h30m", got "-5m" (durations cannot be negative)' })
  for (const text of ['NaN', 'Infinity', '5M', '5H', '5mo', '5y', '1e3s', '.5s', '1h 30m', 'm', '5m5', 'h1']) {
    t.throws(() => parseDuration(text), { message: new RegExp(`^expected a duration like "5m" or "1h30m", got ${escape(JSON.stringify(text))}`) }, text)
  }
})

t.test('parseDuration wants units from largest to smallest, each once', async t => {
  t.throws(() => parseDuration('30m1h'), { message: /got "30m1h" \(write units from largest to smallest, each at most once\)/ })
  t.throws(() => parseDuration('1m1m'), { message: /write units from largest to smallest/ })
  t.throws(() => parseDuration('1s1m'), { message: /write units from largest to smallest/ })
})

t.test('parseDuration refuses values beyond the safe integer range', async t => {
  t.throws(() => parseDuration('99999999999999999999w'), { message: /\(too large\)$/ })
})

function escape (text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
