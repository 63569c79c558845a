# syntax=docker/dockerfile:1
#
# docker build -t registry-mirror .
# docker run -d -p 5000:5000 -v registry-mirror:/var/lib/registry-mirror registry-mirror
#
# Your own config: -v ./my.config.yml:/etc/registry-mirror/config.yml:ro
# Upstream passwords: name them with passwordEnv in the config and pass the
# variable with -e, e.g. -e DOCKER_HUB_TOKEN.

# ---- build: compile TypeScript and better-sqlite3 -----------------------
FROM node:22-bookworm-slim AS build

# better-sqlite3 falls back to node-gyp when no prebuilt binary fits.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*

# node-gyp builds against the headers the node images ship in
# /usr/local/include/node instead of downloading them (a build without
# internet, or behind a proxy that only lets the npm registry through).
ENV npm_config_nodedir=/usr/local

WORKDIR /app

COPY package.json package-lock.json ./
# --ignore-scripts: package.json's "prepare" runs tsc, and the sources are not
# here yet. better-sqlite3 is the only dependency with an install script;
# rebuild runs it explicitly.
RUN npm ci --ignore-scripts \
 && npm rebuild better-sqlite3

COPY tsconfig.json ./
COPY bin ./bin
COPY lib ./lib
RUN npm run build \
 && npm prune --omit=dev

# The shipped config, pointed at the image's data volume. A config of your
# own is taken as written (no MIRROR_STORAGE_PATH here to override it): point
# its storage.path at a volume, e.g. /var/lib/registry-mirror.
COPY mirror.config.yml ./
RUN sed 's#^  path: \./data$#  path: /var/lib/registry-mirror#' mirror.config.yml > config.yml \
 && grep -q '^  path: /var/lib/registry-mirror$' config.yml

# ---- runtime ------------------------------------------------------------
FROM node:22-bookworm-slim

# MALLOC_MMAP_THRESHOLD_: glibc serves the 256 KiB read buffers with mmap and
# gives them back on free; left to adjust itself, it moves them onto its heap
# after the first frees, and memory taken by a flood of slow clients (1,000:
# ~380 MB) stays resident after they leave (~340 MB, against ~110 MB with it).
ENV NODE_ENV=production \
    MALLOC_MMAP_THRESHOLD_=131072

WORKDIR /app

COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/config.yml /etc/registry-mirror/config.yml

# Created and owned by node before VOLUME, so a fresh named volume starts
# out writable by the unprivileged user.
RUN mkdir -p /var/lib/registry-mirror \
 && chown node:node /var/lib/registry-mirror
VOLUME ["/var/lib/registry-mirror"]

USER node
EXPOSE 5000

# No curl in slim images: ask node. /healthz answers 200 while the process
# serves, with or without auth (/v2/ challenges when auth is on). It assumes
# plain HTTP on the default port; with TLS, another port, or /healthz on the
# metrics listener, set MIRROR_HEALTH_URL (https is not verified: this is the
# container asking itself on loopback).
ENV MIRROR_HEALTH_URL=http://127.0.0.1:5000/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", "const u = new URL(process.env.MIRROR_HEALTH_URL); require(u.protocol === 'https:' ? 'node:https' : 'node:http').get(u, { rejectUnauthorized: false }, r => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1)).setTimeout(4000, () => process.exit(1))"]

ENTRYPOINT ["node", "dist/bin/registry-mirror.js"]
CMD ["serve", "--config", "/etc/registry-mirror/config.yml"]
