// skopeo addresses the mirror as a registry of its own: 127.0.0.1:PORT/library/multi
// goes to the default upstream, 127.0.0.1:PORT/ghcr.io/org/app to ghcr.io.

import t from 'tap'
import { join } from 'node:path'
import { requireTools } from '../../harness/tools.js'
import { World, type TestImage } from '../../harness/world.js'
import { Skopeo } from '../../harness/skopeo.js'
import { makeTempDir, removeTempDir } from '../../harness/temp.js'
import { pullScenario } from '../../harness/pull-scenario.js'
import { mirrorKind } from '../../harness/mirror.js'

const skip = requireTools(t, ['docker-registry', 'skopeo'])

t.test('skopeo copies docker.io and ghcr.io images out of the mirror', { skip }, async t => {
  const world = await World.create(t)
  const work = await makeTempDir('skopeo')
  t.teardown(() => removeTempDir(work))
  const skopeo = new Skopeo(work)
  const mirror = world.mirror

  const repositoryAtMirror = (image: TestImage): string => image.registry === 'docker.io'
    ? `${mirror.host}/${image.repository}` // no hint: the default upstream
    : `${mirror.locationFor(image.registry)}/${image.repository}`

  const oneNameSkip = mirrorKind() === 'reference' ? 'the reference proxy does not add library/' : false
  await t.test('a one-part Docker Hub name (multi) is found under library/', { skip: oneNameSkip }, async t => {
    const multi = world.image('docker.io', 'library/multi')
    const { digest } = await skopeo.inspectRaw(`${mirror.host}/multi:${multi.tag}`)
    t.equal(digest, multi.digest)
  })

  const pulled = new Map<string, string>()
  let copies = 0
  await pullScenario(t, world, {
    name: 'skopeo',
    reference: (image, by) => by === 'tag' ? `${repositoryAtMirror(image)}:${image.tag}` : `${repositoryAtMirror(image)}@${image.digest}`,
    pull: async reference => {
      const { digest } = await skopeo.pullToDir(reference, join(work, `copy-${++copies}`))
      pulled.set(reference, digest)
    },
    digestsOf: async reference => {
      const digest = pulled.get(reference)
      return digest === undefined ? [] : [digest]
    },
    removeAll: async () => {
      for (let i = 1; i <= copies; i++) await removeTempDir(join(work, `copy-${i}`))
      pulled.clear()
    }
  }, world.images)
})
