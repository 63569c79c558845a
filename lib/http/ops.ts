// Operational endpoints: /metrics (Prometheus), /healthz (the process is up),
// /readyz (the index answers and storage is writable), and the status page
// (status-routes.ts) behind the metrics token. Mounted on the main listener,
// or on their own when metrics.listen is set.

import Koa from 'koa'
import Router from '@koa/router'
import { RegistryError, UnauthorizedError } from '../errors.js'
import { sendError } from './envelope.js'
import { bearerOf, tokenCheck } from './metrics-token.js'
import { statusRoutes, type StatusPages } from './status-routes.js'



export interface OpsOptions {
  readonly metrics: { text: () => Promise<string>, contentType: string } | undefined
  /** Bearer token /metrics requires, if any. */
  readonly token: string | undefined
  /** Problems that make the mirror unready; empty when ready. */
  readonly ready: () => Promise<string[]>
  /** Each upstream's state ("up", or down since when), shown by /readyz without making the mirror unready: the cache still answers. */
  readonly upstreams?: (() => Record<string, string>) | undefined
  /** The status page and /status.json; undefined: not served. */
  readonly status?: StatusPages | undefined
}

export function opsRouter<S> (options: OpsOptions): Router<S> {
  const router = new Router<S>()
  router.get('/healthz', ctx => {
    ctx.body = { status: 'ok' }
  })
  router.get('/readyz', async ctx => {
    const problems = await options.ready()
    const upstreams = options.upstreams?.()
    ctx.status = problems.length === 0 ? 200 : 503
    ctx.body = problems.length === 0 ? { status: 'ready', upstreams } : { status: 'unready', problems, upstreams }
  })
  const check = tokenCheck(options.token)
  if (options.status !== undefined) statusRoutes(router, options.status, check)
  const metrics = options.metrics
  if (metrics !== undefined) {
    router.get('/metrics', async ctx => {
      if (check !== undefined) {
        let allowed: boolean
        try {
          const given = bearerOf(ctx.get('authorization'))
          allowed = given !== undefined && check(ctx, given)
        } catch (err) {
          // Written here, not thrown: the separate ops app has no error middleware.
          if (err instanceof RegistryError) return sendError(ctx, err)
          throw err
        }
        if (!allowed) return sendError(ctx, new UnauthorizedError('metrics need a bearer token', null, { 'WWW-Authenticate': 'Bearer realm="registry-mirror metrics"' }))
      }
      ctx.type = metrics.contentType
      ctx.body = await metrics.text()
    })
  }
  return router
}

/** A Koa app with only the operational endpoints, for a separate metrics listener. */
export function createOpsApp (options: OpsOptions): Koa {
  const app = new Koa()
  const router = opsRouter(options)
  app.use(router.routes())
  app.use(router.allowedMethods())
  return app
}
