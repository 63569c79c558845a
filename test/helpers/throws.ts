// The error a call throws, for tests that check more of it than t.throws'
// pattern match does (exact values, t.same on a field). Unlike asserting in a
// catch block, nothing here can be skipped: when nothing (or something else)
// is thrown, t.throws / t.rejects fails and the result is undefined, so the
// checks on it fail too instead of silently not running.

import type { Test } from 'tap'

type ErrorClass<E extends Error> = new (...args: any[]) => E

/** What `fn` throws, asserted (with t.throws) to be an instance of `type`. */
export function thrownBy<E extends Error> (t: Pick<Test, 'throws'>, fn: () => unknown, type: ErrorClass<E>, message = `throws a ${type.name}`): E | undefined {
  const err = t.throws(fn, type, message)
  return err instanceof type ? err : undefined
}

/** What `promise` rejects with, asserted (with t.rejects) to be an instance of `type`. */
export async function rejectedBy<E extends Error> (t: Pick<Test, 'rejects'>, promise: Promise<unknown>, type: ErrorClass<E>, message = `rejects with a ${type.name}`): Promise<E | undefined> {
  const err = await t.rejects(promise, type, message)
  return err instanceof type ? err : undefined
}
