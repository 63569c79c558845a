// The one manifest parser: what an image, an index, an artifact and a schema 1
// manifest name, and how malformed ones are told apart.

import t from 'tap'
import { ManifestInvalidError, UnavailableError } from '../lib/errors.js'
import { childrenOf, manifestMediaType, parseManifest, parseManifestStrictly } from '../lib/oci/manifest.js'
import { MediaTypes } from '../lib/oci/media-types.js'
import { thrownBy } from './helpers/throws.js'

const d = (c: string): string => `sha256:${c.repeat(64)}`
const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v))

t.test('an image manifest names its config and layers, with sizes and media types', async t => {
  const parsed = parseManifest(json({ schemaVersion: 2, mediaType: MediaTypes.ociManifest, config: { digest: d('a'), size: 10, mediaType: 'c' }, layers: [{ digest: d('b'), size: 20 }] }))
  t.equal(parsed.isIndex, false)
  t.equal(parsed.mediaType, MediaTypes.ociManifest)
  t.same(parsed.children.map(c => [c.kind, c.digest, c.size, c.mediaType]), [['config', d('a'), 10, 'c'], ['layer', d('b'), 20, undefined]])
  t.same(parsed.problems, [])
})

t.test('an index names its manifests with their platforms', async t => {
  const parsed = parseManifest(json({ manifests: [{ digest: d('c'), size: 5, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } }] }))
  t.equal(parsed.isIndex, true)
  t.same(parsed.children.map(c => [c.kind, c.platform]), [['manifest', { os: 'linux', architecture: 'arm64', variant: 'v8' }]])
  t.equal(manifestMediaType(undefined, json({ manifests: [] })), MediaTypes.ociIndex, 'an index without a mediaType is an OCI index')
})

t.test('an artifact manifest names its blobs as children, its subject apart', async t => {
  const parsed = parseManifest(json({ artifactType: 'x/sig', config: { digest: d('e'), size: 2 }, blobs: [{ digest: d('f'), size: 3 }], subject: { digest: d('1'), size: 100 } }))
  t.same(parsed.children.map(c => [c.kind, c.digest]), [['config', d('e')], ['blob', d('f')]])
  t.equal(parsed.subject?.digest, d('1'))
  t.equal(parsed.artifactType, 'x/sig')
})

t.test('schema 1 layers are named once each, without sizes', async t => {
  const parsed = parseManifest(json({ schemaVersion: 1, fsLayers: [{ blobSum: d('2') }, { blobSum: d('2') }, { blobSum: 'nope' }, { blobSum: d('3') }] }))
  t.same(parsed.children.map(c => [c.digest, c.size]), [[d('2'), undefined], [d('3'), undefined]])
})

t.test('a descriptor without a valid digest: skipped and said; refused by the strict reader', async t => {
  const bytes = json({ layers: [{ digest: 'sha256:short' }, { digest: d('4'), size: 1 }] })
  t.same(parseManifest(bytes).problems, ['a layer descriptor has no valid digest'])
  t.same(childrenOf(bytes).map(c => c.digest), [d('4')], 'what the cache walks keeps the valid ones')
  const err = thrownBy(t, () => parseManifestStrictly(bytes), ManifestInvalidError, 'the strict reader refuses it')
  t.equal(err?.message, 'a layer descriptor has no valid digest')
})

t.test('bytes that are not a JSON object: refused, and nothing to walk', async t => {
  for (const bytes of [Buffer.from('not json'), Buffer.from('[1,2]'), Buffer.from('null')]) {
    thrownBy(t, () => parseManifest(bytes), ManifestInvalidError, `refused: ${bytes.toString()}`)
    t.same(childrenOf(bytes), [])
  }
  const err = thrownBy(t, () => manifestMediaType('application/json', Buffer.from('<html>')), UnavailableError, 'a vague content type does not make HTML a manifest')
  t.equal(err?.message, 'upstream sent a manifest that is not JSON')
})

t.test('the media type: the body\'s own wins over any Content-Type, then a specific Content-Type, then the shape', async t => {
  const config = { digest: d('a'), size: 2 }
  const body = json({ mediaType: MediaTypes.dockerManifest, config, layers: [] })
  t.equal(manifestMediaType(`${MediaTypes.ociManifest}; charset=utf-8`, body), MediaTypes.dockerManifest, 'no upstream header can change what the bytes say')
  t.equal(manifestMediaType('application/json', body), MediaTypes.dockerManifest)
  t.equal(manifestMediaType(`${MediaTypes.dockerSchema1Signed}`, json({ schemaVersion: 1, fsLayers: [] })), MediaTypes.dockerSchema1Signed, 'schema 1 states no type of its own')
  t.equal(manifestMediaType('text/plain', json({ schemaVersion: 2, config, layers: [] })), MediaTypes.ociManifest, 'a vague type: by its shape')
  t.equal(manifestMediaType(undefined, json({ manifests: [] })), MediaTypes.ociIndex)
  t.equal(manifestMediaType(MediaTypes.ociArtifact, json({ mediaType: MediaTypes.ociArtifact, blobs: [] })), MediaTypes.ociArtifact)
})

t.test('what is not a manifest is refused as the upstream\'s fault', async t => {
  const config = { digest: d('a'), size: 2 }
  const refused = (contentType: string | undefined, body: unknown, why: string | RegExp): void => {
    const err = thrownBy(t, () => manifestMediaType(contentType, Buffer.isBuffer(body) ? body : json(body)), UnavailableError, String(why))
    t.match(err?.message, why)
  }
  refused('text/html', { config, layers: [] }, 'upstream sent a "text/html" document where a manifest belongs')
  refused(MediaTypes.ociManifest, { mediaType: 'application/vnd.oci.image.manifest.v1+json\r\nX-Injected: 1', config }, /where a manifest belongs/)
  refused(undefined, { mediaType: 'application/x-unknown' }, /x-unknown/)
  refused(undefined, { mediaType: 'a/'.repeat(200) }, /where a manifest belongs/)
  refused(MediaTypes.ociIndex, { mediaType: MediaTypes.ociIndex, manifests: 'none' }, 'an index without a manifests list')
  refused(MediaTypes.ociManifest, { schemaVersion: 2, layers: [] }, 'an image manifest without a config')
  refused(MediaTypes.ociManifest, { config, layers: {} }, 'layers are not a list')
  refused(MediaTypes.dockerSchema1, { schemaVersion: 1 }, 'without fsLayers')
  refused(MediaTypes.ociManifest, { config: { digest: 'sha256:nope' } }, 'a config descriptor has no valid digest')
  refused(MediaTypes.ociManifest, Buffer.from('{"config": '), 'not JSON')
})
