// The pino logger, with credentials redacted wherever they could appear.

import { pino, type Logger, type DestinationStream } from 'pino'

/**
 * Where a credential could sit in what we log: as a field, in headers, or on an error.
 * Named paths only: a path starting with a wildcard ("*.token") makes pino run the
 * redactor over every field of every line, which was 30% of all memory allocated
 * while serving manifests (one request line each) and pushed the heap up by tens of MB.
 */
export const REDACT = [
  'authorization', 'password', 'token', 'access_token',
  'headers.authorization', 'req.headers.authorization',
  'err.authorization', 'err.password', 'err.token', 'err.access_token', 'err.headers.authorization'
]

export function createLogger (level: string, destination?: DestinationStream): Logger {
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' }, base: { name: 'registry-mirror' } }, destination)
}
