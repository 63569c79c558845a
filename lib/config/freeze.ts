// A validated config must stay validated: nothing downstream may patch it.
// Object.freeze covers plain objects; a Map's entries live outside its
// properties, so maps are copied into a ReadOnlyMap whose mutators throw.

/** A Map that refuses `set`, `delete` and `clear` after construction. Still `instanceof Map`. */
export class ReadOnlyMap<K, V> extends Map<K, V> {
  constructor (entries: Iterable<readonly [K, V]> = []) {
    super()
    // The Map constructor would call this.set, which throws; fill through the base class instead.
    for (const [key, value] of entries) Map.prototype.set.call(this, key, value)
  }

  override set (key: K): this {
    throw new TypeError(`cannot set ${String(key)}: this map is read-only`)
  }

  override delete (key: K): boolean {
    throw new TypeError(`cannot delete ${String(key)}: this map is read-only`)
  }

  override clear (): void {
    throw new TypeError('cannot clear: this map is read-only')
  }
}

/**
 * Freezes `value` and everything reachable from it. Maps are replaced by
 * frozen ReadOnlyMaps of frozen values (a ReadOnlyMap is kept and its values
 * frozen). Returns the frozen value.
 */
export function deepFreeze<T> (value: T): T {
  return freezeValue(value) as T
}

function freezeValue (value: unknown): unknown {
  if (typeof value !== 'object' || value === null || Object.isFrozen(value)) return value
  if (value instanceof Map) {
    if (value instanceof ReadOnlyMap) {
      // Already locked; its entries cannot be swapped, only frozen in place.
      for (const [key, entry] of value) { freezeValue(key); freezeValue(entry) }
      return Object.freeze(value)
    }
    return Object.freeze(new ReadOnlyMap([...value.entries()].map(([key, entry]) => [freezeValue(key), freezeValue(entry)] as const)))
  }
  const record = value as Record<string | symbol, unknown>
  for (const key of Reflect.ownKeys(record)) {
    const frozen = freezeValue(record[key])
    if (frozen !== record[key]) record[key] = frozen
  }
  return Object.freeze(value)
}
