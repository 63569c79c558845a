// The images a command is asked for: arguments and list files (one reference
// per line, `#` comments, blank lines), each resolved against the configured
// upstreams before anything is fetched, so that a typo or a registry that is
// not an upstream stops the run with every problem named, not halfway.

import { readFile } from 'node:fs/promises'
import { ImageListError } from '../errors.js'
import { formatImageReference, parseImageReference, type ImageReference } from '../image-ref.js'
import type { RoutingTable } from '../upstream/routing.js'

/** The routing a pull through this config's mirror would use. */
export interface ListedImage {
  readonly text: string
  /** Where it was written: `images.txt:3`, or `argument 2`. */
  readonly origin: string
}

/** The references in a list file's text, with their line numbers. */
export function parseImageList (text: string, file: string): ListedImage[] {
  const out: ListedImage[] = []
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const hash = raw.indexOf('#')
    const line = (hash === -1 ? raw : raw.slice(0, hash)).trim()
    if (line === '') continue
    out.push({ text: line, origin: `${file}:${i + 1}` })
  }
  return out
}

export async function readImageList (file: string): Promise<ListedImage[]> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ImageListError([`${file}: cannot read the image list: ${err instanceof Error ? err.message : String(err)}`])
  }
  return parseImageList(text, file)
}

export interface RequestedImage {
  readonly ref: ImageReference
  /** Canonical: `docker.io/library/nginx:1.27`; also the name an export gives it. */
  readonly name: string
}

/**
 * Resolves every reference (arguments first, then each file's lines in order),
 * drops repeats of the same image, and throws one ImageListError naming each
 * bad one. None at all is an error too.
 */
export async function resolveImages (args: readonly string[], files: readonly string[], routing: RoutingTable): Promise<RequestedImage[]> {
  const listed: ListedImage[] = args.map((text, i) => ({ text, origin: `argument ${i + 1}` }))
  const problems: string[] = []
  for (const file of files) {
    try {
      listed.push(...await readImageList(file))
    } catch (err) {
      if (err instanceof ImageListError) problems.push(...err.problems)
      else throw err
    }
  }
  const seen = new Set<string>()
  const images: RequestedImage[] = []
  for (const item of listed) {
    if (/\s/.test(item.text)) {
      problems.push(`${item.origin}: expected one image reference, got "${item.text}"`)
      continue
    }
    try {
      const ref = parseImageReference(item.text, routing)
      const name = formatImageReference(ref)
      if (seen.has(name)) continue
      seen.add(name)
      images.push({ ref, name })
    } catch (err) {
      problems.push(`${item.origin}: ${item.text}: ${describeRefusal(err, routing)}`)
    }
  }
  if (problems.length === 0 && images.length === 0) problems.push('no images given: name them as arguments or in a file with --file')
  if (problems.length > 0) throw new ImageListError(problems)
  return images
}

function describeRefusal (err: unknown, routing: RoutingTable): string {
  const message = err instanceof Error ? err.message : String(err)
  if (typeof err === 'object' && err !== null && 'detail' in err && typeof err.detail === 'object' && err.detail !== null && 'registry' in err.detail) {
    return `${message} (configured: ${[...routing.upstreams].join(', ')})`
  }
  const detail = typeof err === 'object' && err !== null && 'detail' in err ? err.detail : undefined
  return detail === undefined || detail === null ? message : `${message} ${JSON.stringify(detail)}`
}
