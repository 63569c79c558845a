import t from 'tap'
import { RegistryError, RegistryUnknownError } from '../lib/errors.js'
import { route, type RoutingTable } from '../lib/upstream/routing.js'
import { thrownBy } from './helpers/throws.js'

const table: RoutingTable = { upstreams: new Set(['docker.io', 'ghcr.io', 'registry.local:5000']), defaultUpstream: 'docker.io' }
const noDefault: RoutingTable = { upstreams: new Set(['docker.io', 'ghcr.io']), defaultUpstream: undefined }

/** The error `fn` throws, as code and status, or 'none'. */
function failure (fn: () => unknown): { code: string, status: number } | 'none' {
  try {
    fn()
    return 'none'
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err
    return { code: err.code, status: err.status }
  }
}

t.test('a request that names no registry goes to the default upstream', async t => {
  t.same(route(table, 'org/app', undefined), { upstream: 'docker.io', name: 'org/app', repository: 'docker.io/org/app' })
  t.same(route(table, 'org/app', ''), { upstream: 'docker.io', name: 'org/app', repository: 'docker.io/org/app' }, 'an empty ns names nothing')
})

t.test('a one-part name on docker.io gets library/, and only there', async t => {
  t.same(route(table, 'nginx', undefined), { upstream: 'docker.io', name: 'library/nginx', repository: 'docker.io/library/nginx' })
  t.same(route(table, 'library/nginx', undefined), { upstream: 'docker.io', name: 'library/nginx', repository: 'docker.io/library/nginx' }, 'never twice')
  t.same(route(table, 'nginx', 'docker.io').name, 'library/nginx', 'also when ns names docker.io')
  t.same(route(table, 'docker.io/nginx', undefined).name, 'library/nginx', 'also behind a docker.io path prefix')
  t.same(route(table, 'nginx', 'ghcr.io'), { upstream: 'ghcr.io', name: 'nginx', repository: 'ghcr.io/nginx' }, 'not on ghcr.io')
  t.same(route(table, 'ghcr.io/nginx', undefined).name, 'nginx')
  const ghcrDefault: RoutingTable = { upstreams: new Set(['ghcr.io']), defaultUpstream: 'ghcr.io' }
  t.same(route(ghcrDefault, 'nginx', undefined).name, 'nginx', 'not on another default upstream')
})

t.test('?ns= picks a configured upstream', async t => {
  t.same(route(table, 'org/app', 'ghcr.io'), { upstream: 'ghcr.io', name: 'org/app', repository: 'ghcr.io/org/app' })
  t.same(route(table, 'org/app', 'registry.local:5000').upstream, 'registry.local:5000')
  t.same(route(noDefault, 'org/app', 'ghcr.io').upstream, 'ghcr.io', 'without a default upstream too')
})

t.test('a path prefix naming a configured upstream picks it and is not part of the name', async t => {
  t.same(route(table, 'ghcr.io/org/app', undefined), { upstream: 'ghcr.io', name: 'org/app', repository: 'ghcr.io/org/app' })
  t.same(route(table, 'registry.local:5000/team/app', undefined), { upstream: 'registry.local:5000', name: 'team/app', repository: 'registry.local:5000/team/app' })
  t.same(route(noDefault, 'ghcr.io/org/app', undefined).upstream, 'ghcr.io', 'without a default upstream too')
})

t.test('?ns= naming a registry that is not configured is refused with NAME_UNKNOWN', async t => {
  for (const ns of ['quay.io', 'localhost:5000', 'evil.example.com', 'GHCR.IO.evil']) {
    t.same(failure(() => route(table, 'org/app', ns)), { code: 'NAME_UNKNOWN', status: 404 }, ns)
  }
  t.throws(() => route(table, 'org/app', 'quay.io'), RegistryUnknownError)
})

t.test('a path prefix naming a host that is not configured is refused with NAME_UNKNOWN, never sent to the default', async t => {
  for (const name of ['quay.io/x', 'quay.io/org/app', 'localhost:5000/x', 'localhost/x', 'registry.local:5001/x', 'my.registry/a/b']) {
    t.same(failure(() => route(table, name, undefined)), { code: 'NAME_UNKNOWN', status: 404 }, name)
  }
  const err = thrownBy(t, () => route(table, 'quay.io/x', undefined), RegistryUnknownError)
  t.same(err?.detail, { registry: 'quay.io' })
})

t.test('with no default upstream, a request that names no registry is refused', async t => {
  t.same(failure(() => route(noDefault, 'org/app', undefined)), { code: 'NAME_UNKNOWN', status: 404 })
  t.same(failure(() => route(noDefault, 'nginx', '')), { code: 'NAME_UNKNOWN', status: 404 })
})

t.test('the name after a prefix or ns is validated: NAME_INVALID', async t => {
  for (const name of ['ghcr.io/Org/app', 'ghcr.io/org//app', 'ghcr.io/../app', 'ghcr.io/org/app/', 'ghcr.io/', 'ghcr.io/-x', `ghcr.io/${'a'.repeat(256)}`]) {
    t.same(failure(() => route(table, name, undefined)), { code: 'NAME_INVALID', status: 400 }, name)
  }
  for (const name of ['Org/app', 'a..b', '_x', 'a//b']) {
    t.same(failure(() => route(table, name, 'ghcr.io')), { code: 'NAME_INVALID', status: 400 }, `${name} with ns`)
    t.same(failure(() => route(table, name, undefined)), { code: 'NAME_INVALID', status: 400 }, `${name} on the default`)
  }
})

t.test('an unknown registry is refused before the name is looked at', async t => {
  t.same(failure(() => route(table, 'quay.io/Bad//Name', undefined)), { code: 'NAME_UNKNOWN', status: 404 })
  t.same(failure(() => route(table, 'Bad//Name', 'quay.io')), { code: 'NAME_UNKNOWN', status: 404 })
})

t.test('a first component that is not a host is part of the name, not a registry', async t => {
  t.same(route(table, 'library/app', 'ghcr.io'), { upstream: 'ghcr.io', name: 'library/app', repository: 'ghcr.io/library/app' })
  t.same(route(table, 'ghcr/app', undefined), { upstream: 'docker.io', name: 'ghcr/app', repository: 'docker.io/ghcr/app' })
})

t.test('with ?ns=, a first component that contains a dot is part of the repository name', async t => {
  // containerd names the registry in ns and sends the repository name as the registry knows it;
  // GitLab groups and Harbor projects may contain dots: registry.gitlab.com/my.group/app.
  const gitlab: RoutingTable = { upstreams: new Set(['docker.io', 'registry.gitlab.com']), defaultUpstream: 'docker.io' }
  t.same(failure(() => route(gitlab, 'my.group/app', 'registry.gitlab.com')), 'none', 'not refused as an unknown registry')
  t.same(route(gitlab, 'my.group/app', 'registry.gitlab.com'), { upstream: 'registry.gitlab.com', name: 'my.group/app', repository: 'registry.gitlab.com/my.group/app' })
  t.same(route(gitlab, 'my.group/sub.group/app', 'registry.gitlab.com').name, 'my.group/sub.group/app')
})
