// `--platform linux/arm64/v8`: which manifests of an index to take.

export interface PlatformSpec {
  readonly os: string
  readonly architecture: string
  readonly variant: string | undefined
}

export function parsePlatform (text: string): PlatformSpec {
  const parts = text.trim().split('/')
  const [os = '', architecture = '', variant] = parts
  if (parts.length < 2 || parts.length > 3 || os === '' || architecture === '' || variant === '') {
    throw new Error(`--platform: expected os/architecture[/variant] like linux/amd64 or linux/arm/v7, got "${text}"`)
  }
  return { os, architecture, variant }
}

export function formatPlatform (p: { os: string, architecture: string, variant?: string | undefined }): string {
  return p.variant === undefined ? `${p.os}/${p.architecture}` : `${p.os}/${p.architecture}/${p.variant}`
}

/** The platform of an index entry, if it names one. */
export function platformOf (descriptor: unknown): PlatformSpec | undefined {
  if (typeof descriptor !== 'object' || descriptor === null || !('platform' in descriptor)) return undefined
  const p = descriptor.platform
  if (typeof p !== 'object' || p === null || !('os' in p) || !('architecture' in p)) return undefined
  if (typeof p.os !== 'string' || typeof p.architecture !== 'string') return undefined
  const variant = 'variant' in p && typeof p.variant === 'string' ? p.variant : undefined
  return { os: p.os, architecture: p.architecture, variant }
}

/** Whether an index entry is for one of the platforms asked for; a spec without a variant takes every variant. */
export function matchesPlatform (wanted: readonly PlatformSpec[], platform: PlatformSpec | undefined): boolean {
  if (platform === undefined) return false
  return wanted.some(w => w.os === platform.os && w.architecture === platform.architecture &&
    (w.variant === undefined || w.variant === platform.variant))
}
