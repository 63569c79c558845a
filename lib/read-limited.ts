// Reading a small body (a manifest, a config, a listing) whole, with a bound.

/** A readable the caller can stop. */
export interface StoppableBody extends AsyncIterable<unknown> { destroy: () => unknown }

/**
 * Reads `body` to the end into one Buffer, or returns undefined (having
 * destroyed the stream) as soon as it exceeds `limit` bytes.
 */
export async function readLimited (body: StoppableBody, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    const buf = chunk as Buffer
    size += buf.length
    if (size > limit) {
      body.destroy()
      return undefined
    }
    chunks.push(buf)
  }
  return Buffer.concat(chunks)
}
