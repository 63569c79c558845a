// What the end-to-end tests need from the machine, and the skip policy: on a
// developer machine a missing tool skips loudly; in CI (CI is set) it fails,
// so a broken .ci/run cannot pass by skipping everything.

import { accessSync, constants } from 'node:fs'
import { delimiter, join, relative } from 'node:path'
import type { Test } from 'tap'

/** The Debian package that provides each tool. */
const packages: Readonly<Record<string, string>> = {
  'docker-registry': 'docker-registry',
  skopeo: 'skopeo',
  containerd: 'containerd',
  ctr: 'containerd',
  dockerd: 'docker.io',
  docker: 'docker.io',
  podman: 'podman',
  openssl: 'openssl',
  nginx: 'nginx-light',
  haproxy: 'haproxy',
  // Ceph's radosgw as the tests' S3 server (harness/s3.sh); monmaptool comes with ceph-base, which ceph-mon pulls in.
  'ceph-mon': 'ceph-mon',
  'ceph-osd': 'ceph-osd',
  radosgw: 'radosgw',
  ceph: 'ceph-common',
  'radosgw-admin': 'ceph-common',
  monmaptool: 'ceph-base',
  // The status page's browser tests (harness/browser.ts).
  chromium: 'chromium'
}

export function findOnPath (tool: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue
    const candidate = join(dir, tool)
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {}
  }
  return undefined
}

export function missingRequirements (tools: readonly string[], options: { root?: boolean } = {}): string[] {
  const missing = tools
    .filter(tool => findOnPath(tool) === undefined)
    .map(tool => `${tool} (apt-get install ${packages[tool] ?? tool})`)
  if (options.root === true && process.getuid?.() !== 0) missing.push('root (the daemons need it)')
  return missing
}

/**
 * Returns false when everything is there, else the reason to skip. In CI it
 * also fails the test, naming what is missing.
 */
export function requireTools (t: Test, tools: readonly string[], options: { root?: boolean } = {}): string | false {
  const missing = missingRequirements(tools, options)
  if (missing.length === 0) return false
  const reason = `end-to-end test needs: ${missing.join(', ')}`
  if (process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false') {
    t.fail(`${reason} (CI is set, so this is a failure, not a skip)`)
  } else {
    console.error(`\n#\n# SKIPPING ${relative(process.cwd(), process.argv[1] ?? t.name)}: ${reason}\n#\n`)
  }
  return reason
}
