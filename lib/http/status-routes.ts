// The status page's routes, beside /metrics and behind the same token: /status
// (HTML), /status.json, /status/login (a browser cannot be made to send a
// Bearer header, so the token is posted once and kept in an HttpOnly,
// SameSite=Strict cookie, signed with a key made at start; wrong tokens are
// counted per address, as for /metrics, ops.ts) and
// the page's own assets. Every answer carries a CSP that lets the page load
// nothing but those assets and talk to nothing but this origin.

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import type Router from '@koa/router'
import type { Context } from 'koa'
import { RegistryError, UnauthorizedError } from '../errors.js'
import { sendError } from './envelope.js'
import { bearerOf, type TokenCheck } from './metrics-token.js'

/** What the status module gives HTTP: the page and its data, already cut to what an anonymous viewer may read. */
export interface StatusPages {
  /** `address`: host[:port] the viewer reached the mirror at, for the page's first-run hint. */
  readonly html: (address: string) => Promise<string>
  /** /status.json's body, JSON text. */
  readonly json: () => Promise<string>
  readonly login: (failed: boolean) => string
  readonly assets: ReadonlyMap<string, { readonly body: string, readonly type: string, readonly etag: string }>
  /** host:port of the main listener, when the request's Host header is not a plain host. */
  readonly address: () => string
}

export const STATUS_COOKIE = 'registry_mirror_status'
const COOKIE_SECONDS = 12 * 3600
const LOGIN_BODY_LIMIT = 4096
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
const HOST = /^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$/

function secure (ctx: Context): void {
  ctx.set('Content-Security-Policy', CSP)
  ctx.set('X-Content-Type-Options', 'nosniff')
  ctx.set('Referrer-Policy', 'no-referrer')
  ctx.set('X-Frame-Options', 'DENY')
}

/** Signs and checks the page's cookie; its key changes with every start, so a restart signs everyone out. */
class CookieSigner {
  readonly #key: Buffer
  readonly #now: () => number

  constructor (now: () => number) {
    this.#key = randomBytes(32)
    this.#now = now
  }

  #mac (expires: number): string {
    return createHmac('sha256', this.#key).update(`status:${expires}`).digest('base64url')
  }

  issue (): string {
    const expires = Math.floor(this.#now() / 1000) + COOKIE_SECONDS
    return `${expires}.${this.#mac(expires)}`
  }

  valid (value: string | undefined): boolean {
    const m = /^(\d{1,12})\.([A-Za-z0-9_-]{43})$/.exec(value ?? '')
    if (m === null) return false
    const expires = Number(m[1])
    if (expires * 1000 <= this.#now()) return false
    return timingSafeEqualText(m[2] ?? '', this.#mac(expires))
  }
}

/**
 * The login form's body, or undefined past LOGIN_BODY_LIMIT (a length that says so is not read
 * at all; the connection closes after the answer, so what was not read is never taken for a
 * next request).
 */
async function readForm (ctx: Context): Promise<string | undefined> {
  const length = Number(ctx.get('content-length') || '0')
  if (!(length <= LOGIN_BODY_LIMIT)) {
    ctx.set('Connection', 'close')
    return undefined
  }
  return await new Promise<string | undefined>((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const req = ctx.req
    const done = (value: string | undefined): void => {
      req.off('data', data)
      req.off('end', end)
      req.off('error', reject)
      resolve(value)
    }
    const data = (chunk: Buffer): void => {
      size += chunk.length
      if (size > LOGIN_BODY_LIMIT) {
        req.pause()
        ctx.set('Connection', 'close')
        done(undefined)
        return
      }
      chunks.push(chunk)
    }
    const end = (): void => done(Buffer.concat(chunks).toString('utf8'))
    req.on('data', data)
    req.on('end', end)
    req.on('error', reject)
  })
}

export function statusRoutes<S> (router: Router<S>, pages: StatusPages, check: TokenCheck | undefined, now: () => number = Date.now): void {
  const signer = check === undefined ? undefined : new CookieSigner(now)
  /** Open without a token; else a valid cookie or the token as a Bearer header (a wrong one counted; past the bound a 429 is thrown). */
  const allowed = (ctx: Context): boolean => {
    if (signer === undefined || check === undefined || signer.valid(ctx.cookies.get(STATUS_COOKIE))) return true
    const given = bearerOf(ctx.get('authorization'))
    return given !== undefined && check(ctx, given)
  }
  /** Runs a handler, writing a refusal it throws (a 429) as the envelope: the separate ops app has no error middleware. */
  const guarded = (handler: (ctx: Context) => Promise<void>) => async (ctx: Context): Promise<void> => {
    try {
      await handler(ctx)
    } catch (err) {
      if (!(err instanceof RegistryError)) throw err
      secure(ctx)
      sendError(ctx, err)
    }
  }

  router.get('/status/assets/:name', ctx => {
    const asset = pages.assets.get(ctx.params.name ?? '')
    secure(ctx)
    if (asset === undefined) {
      ctx.status = 404
      ctx.type = 'text/plain'
      ctx.body = 'not found'
      return
    }
    ctx.set('Cache-Control', 'no-cache')
    ctx.set('ETag', asset.etag)
    ctx.type = asset.type
    if (ctx.get('if-none-match') === asset.etag) {
      ctx.status = 304
      return
    }
    ctx.body = asset.body
  })

  router.get('/status', guarded(async ctx => {
    secure(ctx)
    ctx.set('Cache-Control', 'no-store')
    ctx.type = 'text/html; charset=utf-8'
    if (!allowed(ctx)) {
      ctx.status = 401
      ctx.body = pages.login(false)
      return
    }
    const host = ctx.get('host')
    ctx.body = await pages.html(HOST.test(host) ? host : pages.address())
  }))

  router.get('/status.json', guarded(async ctx => {
    secure(ctx)
    ctx.set('Cache-Control', 'no-store')
    if (!allowed(ctx)) {
      sendError(ctx, new UnauthorizedError('the status needs the metrics token', null, { 'WWW-Authenticate': 'Bearer realm="registry-mirror metrics"' }))
      return
    }
    ctx.type = 'application/json; charset=utf-8'
    ctx.body = await pages.json()
  }))

  router.post('/status/login', guarded(async ctx => {
    secure(ctx)
    ctx.set('Cache-Control', 'no-store')
    if (signer === undefined || check === undefined) {
      ctx.redirect('/status')
      ctx.status = 303
      return
    }
    const form = ctx.is('application/x-www-form-urlencoded') !== false
    const body = form ? await readForm(ctx) : undefined
    const given = body === undefined ? undefined : new URLSearchParams(body).get('token')
    if (given === null || given === undefined || !check(ctx, given)) {
      ctx.status = 401
      ctx.type = 'text/html; charset=utf-8'
      ctx.body = pages.login(true)
      return
    }
    ctx.cookies.set(STATUS_COOKIE, signer.issue(), { path: '/', httpOnly: true, sameSite: 'strict', maxAge: COOKIE_SECONDS * 1000, secure: ctx.protocol === 'https', overwrite: true })
    ctx.redirect('/status')
    ctx.status = 303
  }))
}

function timingSafeEqualText (a: string, b: string): boolean {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}
