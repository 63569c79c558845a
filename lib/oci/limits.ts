// How much OCI content the mirror reads into memory, and how deep it follows
// indexes: one place for every bound on what an upstream or a bundle can make
// it hold.

const MiB = 1024 * 1024

/** The largest manifest (or index) the mirror reads, caches or imports. */
export const MAX_MANIFEST_BYTES = 4 * MiB

/** The largest image config read whole (export reads one for a platform). */
export const MAX_CONFIG_BYTES = 4 * MiB

/** The largest tag list or referrers index read from an upstream. */
export const MAX_LISTING_BYTES = 16 * MiB

/** The largest index.json of an OCI image layout (import). */
export const MAX_LAYOUT_INDEX_BYTES = 16 * MiB

/** The largest oci-layout file of an image layout (import). */
export const MAX_LAYOUT_FILE_BYTES = 64 * 1024

/** Indexes nested deeper than this are refused (warm, import). */
export const MAX_INDEX_DEPTH = 4

/** The largest token service answer read (a JSON object with a token of a few KiB). */
export const MAX_TOKEN_BYTES = 1024 * 1024

/** The most repositories one _catalog page lists (a larger or no `n` gets this many, and a Link). */
export const MAX_CATALOG_PAGE = 1000

/** The most referrers answers the cache keeps; the oldest go first. */
export const MAX_REFERRERS_ENTRIES = 10_000
