/** name:tag or name@digest -> name (a registry host's :port is kept). */
export function repositoryOf (reference: string): string {
  const at = reference.indexOf('@')
  if (at !== -1) return reference.slice(0, at)
  const slash = reference.lastIndexOf('/')
  const colon = reference.lastIndexOf(':')
  return colon > slash ? reference.slice(0, colon) : reference
}

/** From RepoDigests (["name@sha256:..."]), the digests recorded for reference's repository. */
export function digestsFor (repoDigests: readonly string[], reference: string): string[] {
  const prefix = repositoryOf(reference) + '@'
  return repoDigests.filter(item => item.startsWith(prefix)).map(item => item.slice(prefix.length))
}

/** Parses `--format '{{json .RepoDigests}}'` output. */
export function parseRepoDigests (json: string): string[] {
  const parsed: unknown = JSON.parse(json)
  if (!Array.isArray(parsed) || !parsed.every((item): item is string => typeof item === 'string')) {
    throw new Error(`unexpected RepoDigests: ${json}`)
  }
  return parsed
}
