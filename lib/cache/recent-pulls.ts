// The images being pulled: the manifests each repository was served in the
// last minutes, so that making room on a full disk never evicts what a client
// is in the middle of pulling. Memory only, bounded in repositories and in
// manifests per repository.

import { LRUCache } from 'lru-cache'

/** A pull is "under way" this long after its last manifest was served. */
const WINDOW_MS = 10 * 60 * 1000
const MAX_REPOSITORIES = 10_000
const MAX_PER_REPOSITORY = 64

export class RecentPulls {
  readonly #now: () => number
  readonly #byRepository = new LRUCache<string, Map<string, number>>({ max: MAX_REPOSITORIES })

  constructor (now: () => number = Date.now) {
    this.#now = now
  }

  /** A manifest of this repository was just served. */
  served (repository: string, digest: string): void {
    let digests = this.#byRepository.get(repository)
    if (digests === undefined) {
      digests = new Map()
      this.#byRepository.set(repository, digests)
    }
    digests.delete(digest)
    digests.set(digest, this.#now())
    if (digests.size > MAX_PER_REPOSITORY) {
      const oldest = digests.keys().next().value
      if (oldest !== undefined) digests.delete(oldest)
    }
  }

  /** The manifests of this repository served within the window. */
  of (repository: string): string[] {
    const digests = this.#byRepository.get(repository)
    if (digests === undefined) return []
    const since = this.#now() - WINDOW_MS
    return [...digests].filter(([, at]) => at >= since).map(([digest]) => digest)
  }
}
