// A body that can write itself to an output instead of being streamed: the
// contract between whoever reads blob bytes (store/file-reader.ts) and the
// HTTP response (http/response-sink.ts), so neither imports the other.

import type { Readable } from 'node:stream'

/** Where `sendTo` writes: an HTTP response, or anything that calls back once a chunk is out of its hands. */
export interface ByteOutput {
  /** Writes a chunk; `done` runs once the output no longer needs the chunk (sent, or failed). */
  write: (chunk: Uint8Array, done: (err?: Error | null) => void) => unknown
}

/**
 * A body that can also write itself to an output without being streamed (FileReader does),
 * holding little memory for a client that reads slowly. Stream it, or call sendTo once.
 */
export interface SendableBody extends Readable {
  readonly sendTo: (out: ByteOutput, signal: AbortSignal) => Promise<void>
}

export function isSendable (body: Readable): body is SendableBody {
  return typeof (body as Partial<SendableBody>).sendTo === 'function'
}
