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

# The shipped config, pointed at the image's data volume. MIRROR_STORAGE_PATH
# below says the same; the file agrees so that it is right on its own too.
COPY mirror.config.yml ./
RUN sed 's#^  path: \./data$#  path: /var/lib/registry-mirror#' mirror.config.yml > config.yml \
 && grep -q '^  path: /var/lib/registry-mirror$' config.yml

# ---- runtime ------------------------------------------------------------
FROM node:22-bookworm-slim

ENV NODE_ENV=production \
    MIRROR_STORAGE_PATH=/var/lib/registry-mirror

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

# No curl in slim images: ask node. Any answer other than 200 from /v2/ is
# unhealthy. It assumes the default port; if you move the mirror with
# MIRROR_LISTEN or --listen, override this with --health-cmd.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", "require('node:http').get('http://127.0.0.1:5000/v2/', r => process.exit(r.statusCode === 200 ? 0 : 1)).on('error', () => process.exit(1)).setTimeout(4000, () => process.exit(1))"]

ENTRYPOINT ["node", "dist/bin/registry-mirror.js"]
CMD ["serve", "--config", "/etc/registry-mirror/config.yml"]
