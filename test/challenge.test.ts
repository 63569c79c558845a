import t from 'tap'
import { parseChallenges } from '../lib/upstream/challenge.js'

t.test('a Docker Hub challenge gives the bearer scheme with realm, service and scope', async t => {
  const header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"'
  t.same(parseChallenges(header), [{
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/nginx:pull' }
  }])
})

t.test('spaces around commas and equals signs, and the case of scheme and parameter names, do not matter', async t => {
  const header = 'BEARER  Realm = "https://ghcr.io/token" ,  SERVICE="ghcr.io",scope = "repository:org/app:pull"'
  t.same(parseChallenges(header), [{
    scheme: 'bearer',
    params: { realm: 'https://ghcr.io/token', service: 'ghcr.io', scope: 'repository:org/app:pull' }
  }])
})

t.test('a comma inside a quoted value belongs to the value', async t => {
  const header = 'Bearer realm="https://auth.example.com/token",service="registry",scope="repository:org/app:pull,push"'
  const [challenge] = parseChallenges(header)
  t.equal(challenge?.params.scope, 'repository:org/app:pull,push')
  t.equal(challenge?.params.service, 'registry')
  t.equal(parseChallenges(header).length, 1, 'the comma does not start another challenge')
})

t.test('a space-separated list of scopes inside quotes is kept whole', async t => {
  const header = 'Bearer realm="https://r/token",scope="repository:a:pull repository:b:pull"'
  t.equal(parseChallenges(header)[0]?.params.scope, 'repository:a:pull repository:b:pull')
})

t.test('backslash escapes inside a quoted value are unescaped', async t => {
  const header = 'Bearer realm="https://r/token",service="a \\"quoted\\" \\\\ name"'
  t.equal(parseChallenges(header)[0]?.params.service, 'a "quoted" \\ name')
})

t.test('several challenges in one header are each parsed with their own parameters', async t => {
  const header = 'Basic realm="Registry Realm", Bearer realm="https://r/token",service="svc"'
  t.same(parseChallenges(header), [
    { scheme: 'basic', params: { realm: 'Registry Realm' } },
    { scheme: 'bearer', params: { realm: 'https://r/token', service: 'svc' } }
  ])
  t.same(parseChallenges('Bearer realm="https://r/token", Basic realm="x", Negotiate').map(c => c.scheme), ['bearer', 'basic', 'negotiate'])
})

t.test('the error and error_description of an invalid token are parsed as extra parameters', async t => {
  const header = 'Bearer realm="https://r/token",service="svc",scope="repository:a:pull",error="invalid_token",error_description="The access token expired"'
  t.same(parseChallenges(header), [{
    scheme: 'bearer',
    params: { realm: 'https://r/token', service: 'svc', scope: 'repository:a:pull', error: 'invalid_token', error_description: 'The access token expired' }
  }])
  t.equal(parseChallenges('Bearer realm="https://r/token",error="insufficient_scope"')[0]?.params.error, 'insufficient_scope')
})

t.test('Basic with a realm, and Basic alone, are parsed', async t => {
  t.same(parseChallenges('Basic realm="registry"'), [{ scheme: 'basic', params: { realm: 'registry' } }])
  t.same(parseChallenges('Basic'), [{ scheme: 'basic', params: {} }])
  t.same(parseChallenges('basic realm="registry", charset="UTF-8"'), [{ scheme: 'basic', params: { realm: 'registry', charset: 'UTF-8' } }])
})

t.test('unquoted parameter values end at a comma or space', async t => {
  t.same(parseChallenges('Bearer realm=https://r/token,service=svc'), [{ scheme: 'bearer', params: { realm: 'https://r/token', service: 'svc' } }])
})

t.test('an empty or parameter-only header gives no usable challenge, and never throws', async t => {
  t.same(parseChallenges(''), [])
  t.same(parseChallenges('   '), [])
  t.same(parseChallenges('realm="x"'), [], 'a parameter with no scheme before it is dropped')
  t.same(parseChallenges(',,,'), [])
  t.doesNotThrow(() => parseChallenges('Bearer realm="unterminated'))
  t.equal(parseChallenges('Bearer realm="unterminated')[0]?.params.realm, 'unterminated')
})
