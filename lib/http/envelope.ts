// The one place that turns an error into the OCI error envelope.

import type { Context } from 'koa'
import { RegistryError } from '../errors.js'

export interface Envelope { errors: Array<{ code: string, message: string, detail: unknown }> }

export function envelopeOf (err: RegistryError): Envelope {
  return { errors: [{ code: err.code, message: err.message, detail: err.detail }] }
}

/** Writes the envelope for a RegistryError, or a 500 UNKNOWN that reveals nothing of an unexpected one. */
export function sendError (ctx: Context, err: unknown): void {
  if (err instanceof RegistryError) {
    ctx.status = err.status
    for (const [k, v] of Object.entries(err.headers)) ctx.set(k, v)
    ctx.body = envelopeOf(err)
  } else {
    ctx.status = 500
    ctx.body = { errors: [{ code: 'UNKNOWN', message: 'unknown error', detail: null }] }
  }
  ctx.set('Docker-Distribution-API-Version', 'registry/2.0')
}
