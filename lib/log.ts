// The pino logger, with credentials redacted wherever they could appear.

import { pino, type Logger, type DestinationStream } from 'pino'

export const REDACT = [
  'authorization', '*.authorization', 'headers.authorization', 'req.headers.authorization',
  'password', '*.password', 'token', '*.token', 'access_token', '*.access_token'
]

export function createLogger (level: string, destination?: DestinationStream): Logger {
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' }, base: { name: 'registry-mirror' } }, destination)
}
