// The validated, frozen configuration every part of the mirror is built from.
// Only lib/config/ parses YAML, units and environment variables; everything
// else receives a MirrorConfig and trusts it.

export interface UpstreamConfig {
  /** The registry host clients name: `docker.io`, `ghcr.io`. Matched against `?ns=` and path prefixes. */
  readonly name: string
  /** Where requests actually go, without a trailing slash: `https://registry-1.docker.io`. */
  readonly url: string
  /** The upstream for requests that name no registry (dockerd's `registry-mirrors`). */
  readonly default: boolean
  readonly username?: string | undefined
  readonly password?: string | undefined
  /**
   * Hosts besides the url's own that may serve this upstream's tokens and its
   * manifests, tags and referrers by redirect (Docker Hub: auth.docker.io).
   */
  readonly authHosts?: readonly string[] | undefined
  /** Blob downloads from this upstream at once; more wait their turn in order. Manifests never wait for them. */
  readonly maxConcurrentDownloads?: number | undefined
  /**
   * Passthrough mode (`clientCredentials: passthrough`): each client's own login
   * (or none) asks this upstream, which decides who reads what. Undefined: the
   * mirror's own credentials (or none) for everyone.
   */
  readonly passthrough?: PassthroughConfig | undefined
  /** Milliseconds. */
  readonly connectTimeout: number
  readonly headersTimeout: number
  readonly bodyTimeout: number
}

export interface PassthroughConfig {
  /** Milliseconds the upstream's yes per login and repository is trusted. */
  readonly ttl: number
  /** What a user name begins with when it is a login for this upstream (`ghcr.io/`). */
  readonly loginPrefix: string
  /** Login checks sent to the upstream, at most, per second and at once. */
  readonly loginRate: number
  readonly loginConcurrency: number
}

export interface TlsConfig {
  /** PEM certificate, the chain after it. */
  readonly cert: string
  /** PEM private key of the certificate. */
  readonly key: string
  /** PEM CA certificates; when set, clients must present a certificate one of them signed. */
  readonly clientCA: string | undefined
  /** Milliseconds between checks of the files for a change (renewals are taken without a restart). */
  readonly reloadInterval: number
}

export interface AccessRuleConfig {
  /** Patterns over `<upstream>/<repository>`: `*` within a segment, `**` whole segments. */
  readonly repositories: readonly string[]
  /** htpasswd users, `anonymous`, or `*` (any authenticated user). */
  readonly users: readonly string[]
  readonly pull: boolean
}

export interface AuthConfig {
  /**
   * Absolute path of the htpasswd file (bcrypt entries only); undefined when the
   * mirror has no users of its own and authenticates only for a passthrough upstream.
   */
  readonly htpasswd: string | undefined
  /** The realm of the Basic challenge. */
  readonly realm: string
  /** Milliseconds a verified user:password is trusted without another bcrypt check. */
  readonly remember: number
  /** Milliseconds the mirror's bearer tokens are valid. */
  readonly tokenTtl: number
  /**
   * The secret the mirror's tokens are signed (and carried logins sealed) with,
   * shared by every mirror behind one balancer; undefined = a key made at start.
   */
  readonly tokenKey?: string | undefined
  /** Milliseconds between checks of the htpasswd file for a change. */
  readonly reloadInterval: number
  /** CIDR networks anonymous callers must come from; undefined = any. */
  readonly anonymousNetworks: readonly string[] | undefined
  /** Failed logins per client address within failureWindow before it is refused for the rest of it. */
  readonly maxFailures: number
  readonly failureWindow: number
  /** In order; the first that matches the repository and the caller decides. */
  readonly rules: readonly AccessRuleConfig[]
  /** When no rule matches. */
  readonly defaultPull: boolean
}

/** storage.s3: the bucket blobs live in. Credentials come from the AWS SDK's default chain, never from the file. */
export interface S3StorageConfig {
  /** The S3 API's base URL; undefined: AWS for the region. */
  readonly endpoint: string | undefined
  readonly bucket: string
  readonly region: string
  /** Put before every key: "" or ends in "/". */
  readonly prefix: string
  /** bucket in the path (Ceph RGW, MinIO, Garage) instead of the host name. */
  readonly forcePathStyle: boolean
  /** Answer cached blob GETs with a redirect to a presigned URL instead of streaming them. */
  readonly redirect: boolean
  /** The endpoint presigned URLs name, when clients reach the store at another address than the mirror does. */
  readonly publicEndpoint: string | undefined
  /** Milliseconds a request to the store may take to answer before it is given up (a hung store gets a 503, never a hang). */
  readonly timeout: number
  /** Bytes of hot blobs kept on the node's own disk in front of the bucket; undefined: none. */
  readonly localCache: number | undefined
}

export interface MirrorConfig {
  /** Where the config was read from, for messages; undefined when built in code. */
  readonly source?: string | undefined
  readonly listen: { readonly host: string, readonly port: number }
  readonly storage: {
    readonly path: string
    /** Bytes; undefined = unbounded. */
    readonly maxSize: number | undefined
    /** Milliseconds since last access; undefined = kept whatever its age. */
    readonly maxAge: number | undefined
    /** Fractions of maxSize: eviction starts above high and stops at low. */
    readonly highWatermark: number
    readonly lowWatermark: number
    /** Milliseconds between scheduled eviction passes. */
    readonly evictionInterval: number
    /** Bytes per second the background scrub re-hashes cached blobs at; 0 turns it off. */
    readonly scrubRate: number
    /** Milliseconds before the first scrub pass and between passes. */
    readonly scrubInterval: number
    /** Blobs and manifests in an S3-compatible bucket (path then holds the index and staging); undefined: on local disk under path. */
    readonly s3: S3StorageConfig | undefined
  }
  /** Keyed by registry host; insertion order is the config file's order. */
  readonly upstreams: ReadonlyMap<string, UpstreamConfig>
  /** What clients may hold of the mirror. */
  readonly limits: {
    /** Milliseconds a connection has to send its request headers. */
    readonly headersTimeout: number
    /** Milliseconds an idle keep-alive connection is kept. */
    readonly idleTimeout: number
    /** Client connections open at once; more are refused. */
    readonly maxConnections: number
    /** Connections one address may hold open per listener; more are closed as they are accepted (trusted proxies exempt). */
    readonly maxConnectionsPerClient: number
    /** Requests under way per client address; more wait their turn (maxQueuedPerClient, queueTimeout), then get 429 TOOMANYREQUESTS. */
    readonly maxRequestsPerClient: number
    /** Requests per client waiting for one of its maxRequestsPerClient to finish; more get 429 at once. */
    readonly maxQueuedPerClient: number
    /** Milliseconds a request waits for its turn before it gets 429. */
    readonly queueTimeout: number
    /**
     * CIDR networks of the balancers in front of the mirror: only from these
     * peers is X-Forwarded-For believed (and X-Forwarded-Proto, for the token
     * realm). Empty: the TCP peer is the client.
     */
    readonly trustedProxies: readonly string[]
  }
  readonly cache: {
    /** Milliseconds a tag -> digest answer is trusted without asking upstream. */
    readonly tagTtl: number
    /** Entries in the hot in-memory manifest cache. */
    readonly hotEntries: number
  }
  readonly log: { readonly level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent' }
  readonly metrics: {
    /** Serve /metrics on the main listener. */
    readonly enabled: boolean
    /** A separate address for /metrics, /healthz and /readyz; undefined = the main listener. */
    readonly listen: { readonly host: string, readonly port: number } | undefined
    /** When set, /metrics requires `Authorization: Bearer <token>`. */
    readonly token: string | undefined
  }
  /**
   * TLS on the main listener, and on the metrics listener when it has its own
   * address; undefined = plain HTTP. Paths are absolute.
   */
  readonly tls?: TlsConfig | undefined
  /**
   * Client authentication and access rules; undefined = anyone who reaches the
   * mirror pulls anything. Set whenever an upstream is in passthrough mode.
   */
  readonly auth?: AuthConfig | undefined
  /**
   * Never contact an upstream: serve what the cache holds (tags whatever their
   * age) and answer the OCI 404 for the rest. loadConfig always sets it;
   * undefined (a config built in code) means online.
   */
  readonly offline?: boolean | undefined
}
