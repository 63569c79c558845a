// podman with a [[registry.mirror]] whose location carries the registry as a
// path prefix (127.0.0.1:PORT/ghcr.io): requests arrive as
// /v2/ghcr.io/org/app/..., after an HTTPS attempt (insecure = true means
// "try TLS, then fall back to plain HTTP").

import t from 'tap'
import { requireTools } from '../../harness/tools.js'
import { World } from '../../harness/world.js'
import { Podman } from '../../harness/podman.js'
import { pullScenario } from '../../harness/pull-scenario.js'

const skip = requireTools(t, ['docker-registry', 'skopeo', 'podman'], { root: true })

t.test('podman pulls docker.io and ghcr.io images through a mirror location with a path prefix', { skip }, async t => {
  const world = await World.create(t)
  const podman = await Podman.create(world.mirror.registries.map(registry => ({ registry, location: world.mirror.locationFor(registry) })))
  t.teardown(() => podman.close())

  await pullScenario(t, world, {
    name: 'podman',
    reference: (image, by) => by === 'tag' ? image.byTag : image.byDigest,
    pull: async reference => { await podman.pull(reference) },
    digestsOf: async reference => await podman.digestsOf(reference),
    removeAll: async () => { await podman.removeAll() }
  }, world.images)
})
