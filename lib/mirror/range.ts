// The single-range subset of RFC 9110 Range that registry clients use.

import { RangeInvalidError } from '../errors.js'

export interface ByteRange { readonly start: number, readonly end: number }

/**
 * Returns the inclusive byte range a `Range` header asks for within a blob of
 * `size` bytes, undefined when the whole blob should be sent (no header, or a
 * form this mirror answers with the full body, like several ranges).
 */
export function parseRange (header: string | undefined, size: number): ByteRange | undefined {
  if (header === undefined) return undefined
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header)
  if (m === null) return undefined
  const [, first = '', last = ''] = m
  let start: number
  let end: number
  if (first === '' && last === '') return undefined
  if (first === '') {
    const suffix = Number(last)
    if (suffix === 0) throw unsatisfiable(size)
    start = Math.max(0, size - suffix)
    end = size - 1
  } else {
    start = Number(first)
    end = last === '' ? size - 1 : Math.min(Number(last), size - 1)
    if (last !== '' && Number(last) < start) return undefined
  }
  if (start >= size) throw unsatisfiable(size)
  return { start, end }
}

function unsatisfiable (size: number): RangeInvalidError {
  return new RangeInvalidError('requested range not satisfiable', { size }, { 'content-range': `bytes */${size}` })
}
