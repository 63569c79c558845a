import t from 'tap'
import { DigestInvalidError, ManifestInvalidError, NameInvalidError, RegistryError } from '../lib/errors.js'
import { assertName, isDigest, isTag, isValidName, parseDigest, parseManifestReference } from '../lib/oci/reference.js'
import { accepts, MediaTypes } from '../lib/oci/media-types.js'
import { thrownBy } from './helpers/throws.js'

const HEX64 = 'a'.repeat(64)
const HEX128 = 'b'.repeat(128)

/** The OCI code of what `fn` throws, or 'none'. */
function codeOf (fn: () => unknown): string {
  try {
    fn()
    return 'none'
  } catch (err) {
    return err instanceof RegistryError ? err.code : `not a RegistryError: ${String(err)}`
  }
}

t.test('names of one or more lowercase components are valid', async t => {
  for (const name of ['app', 'library/app', 'org/team/app', 'a0/b1/c2', 'my.app', 'my_app', 'my__app', 'my-app', 'my---app', 'a.b-c_d__e']) {
    t.ok(isValidName(name), name)
  }
})

t.test('names with uppercase, dot segments, stray separators or empty components are invalid', async t => {
  const invalid = [
    '', 'App', 'library/App', 'LIBRARY/app',
    '..', '.', 'library/..', '../app', 'library/../app', './app',
    '/app', 'app/', 'library//app', '//',
    '-app', 'app-', '.app', 'app.', '_app', 'app_', 'my___app', 'my._app', 'my-.app',
    'my app', 'my%2fapp', 'my:app', 'my@app', 'héllo'
  ]
  for (const name of invalid) {
    t.notOk(isValidName(name), JSON.stringify(name))
  }
})

t.test('a name may be 255 characters long but not 256', async t => {
  t.ok(isValidName('a'.repeat(255)))
  t.notOk(isValidName('a'.repeat(256)))
  const long = `${'a'.repeat(127)}/${'b'.repeat(127)}`
  t.equal(long.length, 255)
  t.ok(isValidName(long), 'slashes count towards the length')
  t.notOk(isValidName(`${long}c`))
})

t.test('assertName throws NAME_INVALID naming the bad name, and returns a good one', async t => {
  t.equal(assertName('library/app'), 'library/app')
  t.throws(() => assertName('Library/app'), NameInvalidError)
  const err = thrownBy(t, () => assertName('a//b'), NameInvalidError)
  t.equal(err?.code, 'NAME_INVALID')
  t.equal(err?.status, 400)
  t.same(err?.detail, { name: 'a//b' })
})

t.test('tags of up to 128 characters from the tag alphabet are valid', async t => {
  for (const tag of ['latest', 'v1', 'V1.2.3', '1.0-rc_1', '_hidden', '0', 'a.b.c', 'x'.repeat(128), `_${'-'.repeat(127)}`]) {
    t.ok(isTag(tag), tag)
  }
})

t.test('a 129-character tag, or one that starts with "." or "-", is invalid', async t => {
  for (const tag of ['x'.repeat(129), '.hidden', '-rc', '', 'a/b', 'a:b', 'a+b', 'a b', 'ä']) {
    t.notOk(isTag(tag), JSON.stringify(tag))
  }
})

t.test('sha256 and sha512 digests of the right length in lowercase hex parse', async t => {
  t.same(parseDigest(`sha256:${HEX64}`), { algorithm: 'sha256', hex: HEX64, digest: `sha256:${HEX64}` })
  t.same(parseDigest(`sha512:${HEX128}`), { algorithm: 'sha512', hex: HEX128, digest: `sha512:${HEX128}` })
  t.ok(isDigest(`sha256:${'0123456789abcdef'.repeat(4)}`))
})

t.test('a digest with an algorithm the mirror cannot verify is DIGEST_INVALID, and says which it supports', async t => {
  for (const digest of [`sha384:${'c'.repeat(96)}`, `md5:${'d'.repeat(32)}`, `sha256+b64u:${HEX64}`, `blake3:${HEX64}`]) {
    t.equal(codeOf(() => parseDigest(digest)), 'DIGEST_INVALID', digest)
  }
  const err = thrownBy(t, () => parseDigest(`md5:${'d'.repeat(32)}`), DigestInvalidError)
  t.same(err?.detail, { digest: `md5:${'d'.repeat(32)}`, supported: ['sha256', 'sha512'] })
})

t.test('a digest of the wrong length, in uppercase hex, or not shaped like a digest is DIGEST_INVALID', async t => {
  const bad = [
    `sha256:${'a'.repeat(63)}`, `sha256:${'a'.repeat(65)}`, `sha512:${HEX64}`, `sha256:${HEX128}`,
    `sha256:${'A'.repeat(64)}`, `sha256:${'g'.repeat(64)}`, `SHA256:${HEX64}`,
    'sha256:', `:${HEX64}`, HEX64, `sha256 :${HEX64}`, `sha256:${HEX64}\n`, 'latest', ''
  ]
  for (const digest of bad) {
    t.equal(codeOf(() => parseDigest(digest)), 'DIGEST_INVALID', JSON.stringify(digest))
    t.notOk(isDigest(digest))
  }
})

t.test('a manifest reference with a colon is a digest, else it must be a valid tag', async t => {
  t.same(parseManifestReference('latest'), { kind: 'tag', tag: 'latest' })
  t.same(parseManifestReference(`sha256:${HEX64}`), { kind: 'digest', digest: `sha256:${HEX64}` })
  t.equal(codeOf(() => parseManifestReference('-bad')), 'MANIFEST_INVALID')
  t.equal(codeOf(() => parseManifestReference('x'.repeat(129))), 'MANIFEST_INVALID')
  t.equal(codeOf(() => parseManifestReference(`sha256:${'A'.repeat(64)}`)), 'DIGEST_INVALID')
  t.equal(codeOf(() => parseManifestReference('v1:2')), 'DIGEST_INVALID', 'a colon makes it a digest, never a tag')
  t.throws(() => parseManifestReference('.x'), ManifestInvalidError)
})

t.test('no Accept header, or an empty one, accepts any manifest type', async t => {
  t.ok(accepts(undefined, MediaTypes.ociIndex))
  t.ok(accepts('', MediaTypes.ociIndex))
  t.ok(accepts('   ', MediaTypes.dockerManifest))
})

t.test('Accept admits exactly the listed types, case-insensitively and whatever their parameters', async t => {
  const header = `${MediaTypes.ociManifest}, ${MediaTypes.dockerManifest};q=0.9`
  t.ok(accepts(header, MediaTypes.ociManifest))
  t.ok(accepts(header, MediaTypes.dockerManifest))
  t.notOk(accepts(header, MediaTypes.ociIndex))
  t.notOk(accepts(header, MediaTypes.dockerList))
  t.ok(accepts(MediaTypes.ociIndex.toUpperCase(), MediaTypes.ociIndex))
  t.ok(accepts(`${MediaTypes.ociIndex} ; charset=utf-8`, MediaTypes.ociIndex))
  t.ok(accepts(`  ${MediaTypes.ociIndex}  `, MediaTypes.ociIndex))
})

t.test('Accept wildcards admit every type or every type of the named top-level type', async t => {
  t.ok(accepts('*/*', MediaTypes.ociIndex))
  t.ok(accepts('application/*', MediaTypes.dockerList))
  t.notOk(accepts('text/*', MediaTypes.ociIndex))
  t.notOk(accepts('application/json', MediaTypes.ociManifest))
})

t.test('a type with q=0 is refused, whether listed exactly or by wildcard', async t => {
  t.notOk(accepts(`${MediaTypes.ociIndex};q=0`, MediaTypes.ociIndex))
  t.notOk(accepts(`${MediaTypes.ociIndex}; q=0.0`, MediaTypes.ociIndex))
  t.notOk(accepts(`${MediaTypes.ociIndex};Q=0.000`, MediaTypes.ociIndex))
  t.notOk(accepts('*/*;q=0', MediaTypes.ociIndex))
  t.notOk(accepts('application/*;q=0', MediaTypes.ociIndex))
  t.ok(accepts(`${MediaTypes.ociIndex};q=0.001`, MediaTypes.ociIndex), 'a small q is still a yes')
  t.ok(accepts(`${MediaTypes.ociIndex};q=0.5`, MediaTypes.ociIndex))
  t.ok(accepts(`${MediaTypes.ociIndex};q=1`, MediaTypes.ociIndex))
})

t.test('a type refused with q=0 stays refused when a wildcard admits everything else (RFC 9110 12.5.1)', async t => {
  // The most specific range that matches a type decides its quality; "*/*" does not override an explicit q=0.
  t.notOk(accepts(`${MediaTypes.ociIndex};q=0, */*`, MediaTypes.ociIndex))
  t.notOk(accepts(`${MediaTypes.dockerList};q=0, application/*`, MediaTypes.dockerList))
  t.ok(accepts(`${MediaTypes.ociIndex};q=0, */*`, MediaTypes.ociManifest), 'other types still pass the wildcard')
})
