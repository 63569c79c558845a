// Sizes and durations as people write them in YAML ("50GiB", "1h30m"), turned
// into the integers the rest of the mirror works in (bytes, milliseconds).
// Errors are plain Errors whose message names the bad value; the config loader
// prefixes them with the YAML path they came from.

const SIZE_UNITS: ReadonlyMap<string, number> = new Map([
  ['', 1],
  ['b', 1],
  ['kb', 1000],
  ['mb', 1000 ** 2],
  ['gb', 1000 ** 3],
  ['tb', 1000 ** 4],
  ['pb', 1000 ** 5],
  ['kib', 1024],
  ['mib', 1024 ** 2],
  ['gib', 1024 ** 3],
  ['tib', 1024 ** 4],
  ['pib', 1024 ** 5]
])

const SIZE_PATTERN = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i

/**
 * Parses a size into a whole number of bytes.
 *
 * - `"1048576"` or `"1048576B"`: bytes; a fractional byte count is rejected.
 * - `KB`, `MB`, `GB`, `TB`, `PB`: powers of 1000 (`"500MB"` = 500 000 000).
 * - `KiB`, `MiB`, `GiB`, `TiB`, `PiB`: powers of 1024 (`"1.5GiB"` = 1 610 612 736).
 *
 * Units are case-insensitive and may be separated from the number by spaces
 * (`"50 gib"`). Decimals are allowed with a unit; the result is rounded to the
 * nearest byte. Zero is accepted here; whether zero makes sense is the
 * caller's decision. Negative numbers, exponents, `NaN`, an empty string,
 * unknown units and results beyond Number.MAX_SAFE_INTEGER throw.
 */
export function parseSize (text: string): number {
  const expected = `expected a size like "50GiB" or "500MB", got ${JSON.stringify(text)}`
  const trimmed = text.trim()
  if (trimmed.startsWith('-')) throw new Error(`${expected} (sizes cannot be negative)`)
  const match = SIZE_PATTERN.exec(trimmed)
  if (match === null) throw new Error(expected)
  const [, number = '', unit = ''] = match
  const multiplier = SIZE_UNITS.get(unit.toLowerCase())
  if (multiplier === undefined) {
    throw new Error(`${expected} (units are B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB, PiB)`)
  }
  if (multiplier === 1 && number.includes('.')) {
    throw new Error(`${expected} (a byte count must be a whole number)`)
  }
  const bytes = Math.round(Number(number) * multiplier)
  if (!Number.isSafeInteger(bytes)) throw new Error(`${expected} (too large)`)
  return bytes
}

// Largest first: a duration's parts must appear in this order, each at most once.
const DURATION_UNITS: ReadonlyArray<readonly [string, number]> = [
  ['w', 7 * 24 * 60 * 60 * 1000],
  ['d', 24 * 60 * 60 * 1000],
  ['h', 60 * 60 * 1000],
  ['m', 60 * 1000],
  ['s', 1000],
  ['ms', 1]
]

// `ms` before `m` and `s` so "5ms" is not read as "5m" followed by junk.
const DURATION_PART = /(\d+(?:\.\d+)?)(ms|w|d|h|m|s)/y
const BARE_NUMBER = /^\d+(?:\.\d+)?$/

/**
 * Parses a duration into a whole number of milliseconds.
 *
 * Units: `ms`, `s`, `m` (minutes), `h`, `d`, `w` (7 days), lowercase only, so
 * `M` can never be mistaken for months. Parts combine from largest to
 * smallest, each unit at most once, with no spaces: `"1h30m"`, `"1m30s"`,
 * `"1.5h"`. Fractions are rounded to the nearest millisecond.
 *
 * A bare number is rejected as ambiguous (seconds? milliseconds?), with one
 * exception: `"0"`, which means zero in any unit. So `tagTtl: 0` works and
 * `tagTtl: 300` asks for `"300s"`. Negative values, `NaN`, an empty string,
 * unknown units and results beyond Number.MAX_SAFE_INTEGER throw.
 */
export function parseDuration (text: string): number {
  const expected = `expected a duration like "5m" or "1h30m", got ${JSON.stringify(text)}`
  const trimmed = text.trim()
  if (trimmed.startsWith('-')) throw new Error(`${expected} (durations cannot be negative)`)
  if (BARE_NUMBER.test(trimmed)) {
    if (Number(trimmed) === 0) return 0
    throw new Error(`${expected} (a bare number is ambiguous; add a unit, e.g. "${trimmed}s")`)
  }
  if (trimmed === '') throw new Error(expected)

  let total = 0
  let position = 0
  let previousRank = -1
  while (position < trimmed.length) {
    DURATION_PART.lastIndex = position
    const match = DURATION_PART.exec(trimmed)
    if (match === null) throw new Error(expected)
    const [, number = '', unit = ''] = match
    const rank = DURATION_UNITS.findIndex(([name]) => name === unit)
    const unitMs = DURATION_UNITS[rank]?.[1]
    if (unitMs === undefined) throw new Error(expected)
    if (rank <= previousRank) {
      throw new Error(`${expected} (write units from largest to smallest, each at most once)`)
    }
    previousRank = rank
    total += Number(number) * unitMs
    position = DURATION_PART.lastIndex
  }
  const ms = Math.round(total)
  if (!Number.isSafeInteger(ms)) throw new Error(`${expected} (too large)`)
  return ms
}
