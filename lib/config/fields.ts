// A small kit for checking YAML values against a schema written as code. Each
// key is a Field: a function from the raw value (undefined when the key is
// absent) to a typed value, recording problems instead of throwing, so one
// pass finds every mistake in the file. `section()` turns a record of Fields
// into a Field for a mapping and reports keys it does not know. Adding a
// config key is one line in a section plus one in types.ts.

import { parseDuration, parseSize } from './units.js'

/** Problems found so far, each already prefixed with its YAML path. */
export class Problems {
  readonly list: string[] = []

  add (path: string, message: string): void {
    this.list.push(path === '' ? message : `${path}: ${message}`)
  }
}

/** Reads one value. `value` is undefined when the key is absent. */
export type Field<T> = (value: unknown, path: string, problems: Problems) => T

/** `storage` + `path` -> `storage.path`. Keys with dots (`ghcr.io`) are shown as they are. */
export function join (path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`
}

/** YAML is parsed with mapAsMap, so every mapping is a Map; plain objects are accepted for callers building values in code. */
export function isMapping (value: unknown): value is ReadonlyMap<unknown, unknown> | Readonly<Record<string, unknown>> {
  if (value instanceof Map) return true
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false
  const proto: unknown = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

export function entriesOf (mapping: ReadonlyMap<unknown, unknown> | Readonly<Record<string, unknown>>): Array<[unknown, unknown]> {
  return mapping instanceof Map ? [...mapping.entries()] : Object.entries(mapping)
}

/** How a value reads in a message: strings quoted, collections by kind. */
export function describe (value: unknown): string {
  if (value === undefined || value === null) return 'an empty value'
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value)
  if (Array.isArray(value)) return 'a list'
  if (isMapping(value)) return 'a mapping'
  return `a ${typeof value}`
}

/** A key's name in a message; YAML allows keys that are not strings (`1:`, `~:`). */
export function keyName (key: unknown): string {
  if (typeof key === 'string') return key
  return key === null || key === undefined ? '~' : describe(key)
}

/**
 * A mapping with known keys. Absent or empty (`storage:` with every child
 * commented out) counts as an empty mapping, so each field falls back to its
 * default. Unknown keys are problems, with a suggestion when one is close.
 */
export function section<T extends object> (fields: { readonly [K in keyof T]-?: Field<T[K]> }): Field<T> {
  const known = Object.keys(fields)
  return (value, path, problems) => {
    let present = new Map<unknown, unknown>()
    let target = problems
    if (value !== undefined && value !== null) {
      if (isMapping(value)) {
        present = new Map(entriesOf(value))
      } else {
        problems.add(path, path === ''
          ? `expected a mapping at the top level, got ${describe(value)}`
          : `expected a mapping, got ${describe(value)}`)
        // Defaults only: "is required" for children of a mapping that is not
        // there would just repeat this problem.
        target = new Problems()
      }
    }
    const result: Record<string, unknown> = {}
    for (const key of known) {
      const field = (fields as Record<string, Field<unknown>>)[key]
      if (field !== undefined) result[key] = field(present.get(key), join(path, key), target)
    }
    for (const key of present.keys()) {
      if (typeof key === 'string' && known.includes(key)) continue
      problems.add(join(path, keyName(key)), unknownKey(keyName(key), known))
    }
    return result as T
  }
}

function unknownKey (key: string, known: readonly string[]): string {
  const close = known.find(candidate => editDistance(key.toLowerCase(), candidate.toLowerCase()) <= Math.min(2, Math.floor(candidate.length / 3)))
  if (close !== undefined) return `unknown key, did you mean "${close}"?`
  return `unknown key (expected ${known.length === 1 ? '' : 'one of '}${known.join(', ')})`
}

function editDistance (a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const current = [i]
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1)
      current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution)
    }
    previous = current
  }
  return previous[b.length] ?? 0
}

/** An absent key takes `fallback`; a present one must be valid. */
export function withDefault<T> (field: Field<T | undefined>, fallback: T): Field<T> {
  return (value, path, problems) => value === undefined ? fallback : field(value, path, problems) ?? fallback
}

/** An absent key is a problem; `placeholder` only keeps the types whole until the error is thrown. */
export function required<T> (field: Field<T | undefined>, placeholder: T, hint = ''): Field<T> {
  return (value, path, problems) => {
    if (value === undefined) {
      problems.add(path, `is required${hint === '' ? '' : ` (${hint})`}`)
      return placeholder
    }
    return field(value, path, problems) ?? placeholder
  }
}

/**
 * A scalar read by a parser that throws an Error naming the bad value (see
 * units.ts). Numbers and booleans are handed over as their text, so
 * `tagTtl: 0` and `maxSize: 1073741824` work; `expected` words the problem
 * for values that are not scalars at all.
 */
export function parsed<T> (parse: (text: string) => T, expected: string): Field<T | undefined> {
  return (value, path, problems) => {
    if (value === undefined) return undefined
    if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
      problems.add(path, `expected ${expected}, got ${describe(value)}`)
      return undefined
    }
    try {
      return parse(String(value))
    } catch (err) {
      problems.add(path, err instanceof Error ? err.message : String(err))
      return undefined
    }
  }
}

/** Milliseconds. `min` is inclusive; timeouts use 1 so that 0 cannot silently mean "wait forever". */
export function duration (options: { min?: number } = {}): Field<number | undefined> {
  const min = options.min ?? 0
  return atLeast(parsed(parseDuration, 'a duration like "5m" or "1h30m"'), min, `a duration of at least ${min}ms`)
}

/** Bytes. */
export function size (options: { min?: number } = {}): Field<number | undefined> {
  const min = options.min ?? 0
  return atLeast(parsed(parseSize, 'a size like "50GiB" or "500MB"'), min, `a size of at least ${min} bytes`)
}

function atLeast (field: Field<number | undefined>, min: number, what: string): Field<number | undefined> {
  return (value, path, problems) => {
    const result = field(value, path, problems)
    if (result === undefined || result >= min) return result
    problems.add(path, `expected ${what}, got ${describe(value)}`)
    return undefined
  }
}

export function integer (options: { min: number }): Field<number | undefined> {
  const expected = options.min === 1 ? 'a positive integer' : `an integer of at least ${options.min}`
  return (value, path, problems) => {
    if (value === undefined) return undefined
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < options.min) {
      problems.add(path, `expected ${expected}, got ${describe(value)}`)
      return undefined
    }
    return value
  }
}

/** A non-empty string, kept exactly as written (passwords may have spaces). */
export function nonEmptyString (): Field<string | undefined> {
  return stringField(false)
}

/** Like nonEmptyString(), but no message ever repeats the value: it may be a password. */
export function secret (): Field<string | undefined> {
  return stringField(true)
}

function stringField (secret: boolean): Field<string | undefined> {
  return (value, path, problems) => {
    if (value === undefined) return undefined
    if (typeof value !== 'string') {
      if (secret) {
        const kind = value === null ? 'an empty value' : Array.isArray(value) ? 'a list' : isMapping(value) ? 'a mapping' : `a ${typeof value} (quote it)`
        problems.add(path, `expected a string, got ${kind}`)
      } else {
        const quoteHint = typeof value === 'number' || typeof value === 'boolean' ? ` (quote it: "${String(value)}")` : ''
        problems.add(path, `expected a string, got ${describe(value)}${quoteHint}`)
      }
      return undefined
    }
    // A secret is taken as written; any other string must have more than white space.
    if ((secret ? value : value.trim()) === '') {
      problems.add(path, 'expected a non-empty string, got ""')
      return undefined
    }
    return value
  }
}

/** A YAML list, each item read by `item`; problems are named by index (`authHosts[1]`). */
export function list<T> (item: Field<T | undefined>): Field<T[] | undefined> {
  return (value, path, problems) => {
    if (value === undefined) return undefined
    if (!Array.isArray(value)) {
      problems.add(path, `expected a list, got ${describe(value)}`)
      return undefined
    }
    const out: T[] = []
    for (const [i, v] of value.entries()) {
      const read = item(v, `${path}[${i}]`, problems)
      if (read !== undefined) out.push(read)
    }
    return out
  }
}

export function flag (): Field<boolean | undefined> {
  return (value, path, problems) => {
    if (value === undefined) return undefined
    if (typeof value !== 'boolean') {
      problems.add(path, `expected true or false, got ${describe(value)}`)
      return undefined
    }
    return value
  }
}

export function oneOf<T extends string> (choices: readonly T[]): Field<T | undefined> {
  return (value, path, problems) => {
    if (value === undefined) return undefined
    const match = choices.find(choice => choice === value)
    if (match === undefined) problems.add(path, `expected one of ${choices.join(', ')}; got ${describe(value)}`)
    return match
  }
}
