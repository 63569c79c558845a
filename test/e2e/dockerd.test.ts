// dockerd with "registry-mirrors": it sends Docker Hub pulls to the mirror
// with no hint of the registry (/v2/library/multi/...), so they must reach
// the default upstream.

import t from 'tap'
import { requireTools } from '../../harness/tools.js'
import { World } from '../../harness/world.js'
import { Dockerd } from '../../harness/dockerd.js'
import { pullScenario } from '../../harness/pull-scenario.js'

const skip = requireTools(t, ['docker-registry', 'skopeo', 'containerd', 'dockerd', 'docker'], { root: true })

t.test('dockerd pulls Docker Hub images through the mirror in its registry-mirrors', { skip }, async t => {
  const world = await World.create(t, { big: true, ghcr: false })
  const dockerd = await Dockerd.start({ mirrors: [world.mirror.url] })
  t.teardown(() => dockerd.close())

  await pullScenario(t, world, {
    name: 'dockerd',
    // Short Docker Hub names, as users type them: multi:v1 is docker.io/library/multi:v1.
    reference: (image, by) => {
      const name = image.repository.replace(/^library\//, '')
      return by === 'tag' ? `${name}:${image.tag}` : `${name}@${image.digest}`
    },
    pull: async reference => { await dockerd.pull(reference) },
    digestsOf: async reference => await dockerd.digestsOf(reference),
    removeAll: async () => { await dockerd.removeAll() }
  }, world.imagesOf('docker.io'))
})
