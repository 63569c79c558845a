/** How the cache answered a request; logged per request and counted in metrics. */
export type CacheOutcome = 'hit' | 'miss' | 'joined' | 'stale' | 'revalidated'
