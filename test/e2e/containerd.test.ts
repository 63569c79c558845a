// containerd (ctr --hosts-dir) with a certs.d/<registry>/hosts.toml per
// registry naming the mirror: every request carries ?ns=<registry>, which is
// how the mirror tells docker.io from ghcr.io.

import t from 'tap'
import { requireTools } from '../../harness/tools.js'
import { World } from '../../harness/world.js'
import { Containerd } from '../../harness/containerd.js'
import { pullScenario } from '../../harness/pull-scenario.js'

const skip = requireTools(t, ['docker-registry', 'skopeo', 'containerd', 'ctr'], { root: true })

t.test('containerd pulls docker.io and ghcr.io images through the mirror named in hosts.toml', { skip }, async t => {
  const world = await World.create(t, { big: true })
  const containerd = await Containerd.start()
  t.teardown(() => containerd.close())
  for (const registry of world.mirror.registries) {
    await containerd.addHost({ registry, host: world.mirror.url })
  }

  await pullScenario(t, world, {
    name: 'ctr',
    reference: (image, by) => by === 'tag' ? image.byTag : image.byDigest,
    pull: async reference => { await containerd.pull(reference) },
    digestsOf: async reference => [(await containerd.image(reference)).digest],
    removeAll: async () => { await containerd.removeAll() }
  }, world.images)
})
