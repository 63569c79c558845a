// Blobs in an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, Garage), through
// the AWS SDK v3: <prefix>blobs/<algorithm>/<hex>. An object only ever appears
// under its digest after its bytes were verified on the node that put it, so
// an object in blobs/ is complete and correct or absent, as a file is.
//
// What the SDK's defaults get wrong for stores that are not AWS, and what a
// hostile or failing store must not do to the mirror:
// - flexible checksums off unless an operation requires them (RGW rejects the
//   trailing checksums the SDK sends by default);
// - multipart part sizes from the blob's size (at most 10,000 parts), and a
//   failed upload aborted so that no parts are left behind;
// - every request bounded by a connect and an idle timeout: a hung store is a
//   failure (a 503 upstairs), never a hang;
// - "not found" (404, NoSuchKey) is an answer; any other failure is thrown,
//   and a body shorter than asked errors its stream.

import { createReadStream } from 'node:fs'
import { rm } from 'node:fs/promises'
import { Transform, type Readable, type TransformCallback } from 'node:stream'
import { pipeline } from 'node:stream'
import {
  DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand, ListObjectsV2Command,
  PutObjectCommand, S3Client, S3ServiceException, type S3ClientConfig
} from '@aws-sdk/client-s3'
import { Upload } from '@aws-sdk/lib-storage'
import { getSignedUrl } from '@aws-sdk/s3-request-presigner'
import type { S3StorageConfig } from '../config/types.js'
import { ShortFileError } from '../errors.js'
import { DIGEST_ALGORITHMS, parseDigest } from '../oci/reference.js'
import { DigestCheck } from '../oci/digest-check.js'
import { MAX_MANIFEST_BYTES } from '../oci/limits.js'
import { readLimited } from '../read-limited.js'
import type { BlobStore, SharedContent, StoredObject } from './blob-store.js'

/** S3's smallest part (but the last); parts grow with the blob so that none needs more than MAX_PARTS. */
const MIN_PART = 5 * 1024 * 1024
const MAX_PARTS = 10_000
/** Parts of one upload in flight at once (each is held in memory while it is sent). */
const PARTS_AT_ONCE = 2
/** Presigned URLs: at least this long, plus the time a slow client needs for the blob. */
const PRESIGN_BASE_SECONDS = 15 * 60
const SLOW_CLIENT_BYTES_PER_SECOND = 1024 * 1024
/** SigV4's longest. */
const PRESIGN_MAX_SECONDS = 7 * 24 * 3600

export interface S3BlobStoreOptions {
  readonly config: S3StorageConfig
  /** The SDK's client settings beyond the config (tests: credentials of their own). */
  readonly client?: Partial<S3ClientConfig> | undefined
}

/** Why a bucket could not be used at start, naming the config key at fault. */
export class BucketSetupError extends Error {
  readonly key: string
  constructor (key: string, message: string) {
    super(message)
    this.name = 'BucketSetupError'
    this.key = key
  }
}

export class S3BlobStore implements BlobStore, SharedContent {
  readonly description: string
  readonly kind = 'remote'
  /** A bucket is what a fleet shares: manifests and repository links go there too. */
  readonly shared: SharedContent = this
  readonly #config: S3StorageConfig
  readonly #client: S3Client
  /** Signs URLs for clients: on the public endpoint when the config names one. */
  readonly #presigner: S3Client
  readonly #blobs: string

  constructor (options: S3BlobStoreOptions) {
    const { config } = options
    this.#config = config
    this.#blobs = `${config.prefix}blobs/`
    this.description = `s3 bucket ${config.bucket}${config.prefix === '' ? '' : ` (prefix ${config.prefix})`}${config.endpoint === undefined ? '' : ` at ${config.endpoint}`}`
    const settings = (endpoint: string | undefined): S3ClientConfig => ({
      region: config.region,
      endpoint,
      forcePathStyle: config.forcePathStyle,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: config.timeout, socketTimeout: config.timeout },
      ...options.client
    })
    this.#client = new S3Client(settings(config.endpoint))
    this.#presigner = config.publicEndpoint === undefined ? this.#client : new S3Client(settings(config.publicEndpoint))
  }

  #key (digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return `${this.#blobs}${algorithm}/${hex}`
  }

  #manifestKey (digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return `${this.#config.prefix}manifests/${algorithm}/${hex}`
  }

  #linkKey (repository: string, digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return `${this.#config.prefix}links/${repository}/${algorithm}/${hex}`
  }

  async putManifest (digest: string, mediaType: string, content: Buffer): Promise<void> {
    await this.#client.send(new PutObjectCommand({ Bucket: this.#config.bucket, Key: this.#manifestKey(digest), Body: content, ContentLength: content.length, ContentType: mediaType }))
  }

  async getManifest (digest: string): Promise<{ mediaType: string, content: Buffer } | undefined> {
    let body: Readable
    let mediaType: string | undefined
    try {
      const res = await this.#client.send(new GetObjectCommand({ Bucket: this.#config.bucket, Key: this.#manifestKey(digest) }))
      if ((res.ContentLength ?? 0) > MAX_MANIFEST_BYTES) {
        (res.Body as Readable).destroy()
        return undefined
      }
      body = res.Body as Readable
      mediaType = res.ContentType
    } catch (err) {
      if (isNotFound(err)) return undefined
      throw err
    }
    const content = await readLimited(body, MAX_MANIFEST_BYTES)
    return content === undefined || mediaType === undefined ? undefined : { mediaType, content }
  }

  async putLink (repository: string, digest: string): Promise<void> {
    await this.#client.send(new PutObjectCommand({ Bucket: this.#config.bucket, Key: this.#linkKey(repository, digest), Body: Buffer.alloc(0), ContentLength: 0 }))
  }

  async hasLink (repository: string, digest: string): Promise<boolean> {
    try {
      await this.#client.send(new HeadObjectCommand({ Bucket: this.#config.bucket, Key: this.#linkKey(repository, digest) }))
      return true
    } catch (err) {
      if (isNotFound(err)) return false
      throw err
    }
  }

  /** Checks that the bucket is there and the credentials may use it; throws a BucketSetupError naming the key at fault. */
  async init (): Promise<void> {
    try {
      await this.#client.send(new HeadBucketCommand({ Bucket: this.#config.bucket }))
    } catch (err) {
      throw setupError(err, this.#config)
    }
  }

  async put (localPath: string, digest: string, size: number): Promise<void> {
    const partSize = Math.max(MIN_PART, Math.ceil(size / MAX_PARTS / (1024 * 1024)) * 1024 * 1024)
    const upload = new Upload({
      client: this.#client,
      params: { Bucket: this.#config.bucket, Key: this.#key(digest), Body: createReadStream(localPath), ContentLength: size, ContentType: 'application/octet-stream' },
      partSize,
      queueSize: PARTS_AT_ONCE,
      leavePartsOnError: false // a failed multipart upload is aborted: no parts left behind
    })
    await upload.done()
    await rm(localPath, { force: true })
  }

  async openRead (digest: string, range: { start: number, end: number }): Promise<Readable | undefined> {
    let body: Readable
    let whole: boolean
    try {
      const res = await this.#client.send(new GetObjectCommand({ Bucket: this.#config.bucket, Key: this.#key(digest), Range: `bytes=${range.start}-${range.end}` }))
      body = res.Body as Readable
      whole = range.start === 0 && totalOf(res.ContentRange) === range.end + 1
    } catch (err) {
      if (isNotFound(err)) return undefined
      throw err
    }
    const wanted = range.end - range.start + 1
    const what = `object ${this.#key(digest)}`
    const check = new LengthCheck(wanted, what)
    // A client that goes away destroys the last stream, and pipeline lets the store's connection go with it.
    if (!whole) {
      pipeline(body, check, () => {})
      return check
    }
    // The whole blob: its bytes crossed a network from a store other nodes write to, so they are
    // hashed on the way, and the last chunk is held until they match (DigestMismatchError if not).
    const verified = new DigestCheck(digest, wanted, { what, holdLast: true })
    pipeline(body, check, verified, () => {})
    return verified
  }

  async stat (digest: string): Promise<number | undefined> {
    try {
      const res = await this.#client.send(new HeadObjectCommand({ Bucket: this.#config.bucket, Key: this.#key(digest) }))
      return res.ContentLength
    } catch (err) {
      if (isNotFound(err)) return undefined
      throw err
    }
  }

  async delete (digest: string): Promise<void> {
    try {
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.#config.bucket, Key: this.#key(digest) }))
    } catch (err) {
      if (!isNotFound(err)) throw err
    }
  }

  async * list (): AsyncIterable<StoredObject> {
    let token: string | undefined
    do {
      const page = await this.#client.send(new ListObjectsV2Command({ Bucket: this.#config.bucket, Prefix: this.#blobs, ContinuationToken: token }))
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue
        yield { key: object.Key, digest: digestFromKey(object.Key.slice(this.#blobs.length)), size: object.Size ?? 0, storedAt: object.LastModified?.getTime() }
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined
    } while (token !== undefined)
  }

  async removeObject (key: string): Promise<void> {
    if (!key.startsWith(this.#blobs)) throw new Error(`not a blob object of this store: ${key}`)
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.#config.bucket, Key: key }))
  }

  async checkReady (): Promise<void> {
    try {
      await this.#client.send(new HeadBucketCommand({ Bucket: this.#config.bucket }))
    } catch (err) {
      throw new Error(`${this.description}: ${describe(err)}`)
    }
  }

  /** A URL a client can GET the blob from for as long as a slow client needs for its size. */
  async presignedUrl (digest: string, size: number): Promise<string> {
    return await getSignedUrl(this.#presigner, new GetObjectCommand({ Bucket: this.#config.bucket, Key: this.#key(digest) }), { expiresIn: presignSeconds(size) })
  }

  holdMs (size: number): number {
    return presignSeconds(size) * 1000
  }

  #markKey (digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return `${this.#config.prefix}marks/${algorithm}/${hex}`
  }

  async mark (digest: string): Promise<void> {
    await this.#client.send(new PutObjectCommand({ Bucket: this.#config.bucket, Key: this.#markKey(digest), Body: Buffer.alloc(0), ContentLength: 0 }))
  }

  async markedAt (digest: string): Promise<number | undefined> {
    try {
      const res = await this.#client.send(new HeadObjectCommand({ Bucket: this.#config.bucket, Key: this.#markKey(digest) }))
      return res.LastModified?.getTime()
    } catch (err) {
      if (isNotFound(err)) return undefined
      throw err
    }
  }

  async * marks (): AsyncIterable<{ digest: string, at: number }> {
    const prefix = `${this.#config.prefix}marks/`
    for await (const object of this.#listKeys(prefix)) {
      const digest = digestFromKey(object.key.slice(prefix.length))
      if (digest !== undefined && object.at !== undefined) yield { digest, at: object.at }
    }
  }

  #pinKey (node: string, digest: string): string {
    const { algorithm, hex } = parseDigest(digest)
    return `${this.#config.prefix}pins/${encodeURIComponent(node)}/${algorithm}/${hex}`
  }

  async putPin (node: string, digest: string): Promise<void> {
    await this.#client.send(new PutObjectCommand({ Bucket: this.#config.bucket, Key: this.#pinKey(node, digest), Body: Buffer.alloc(0), ContentLength: 0 }))
  }

  async removePin (node: string, digest: string): Promise<void> {
    await this.#client.send(new DeleteObjectCommand({ Bucket: this.#config.bucket, Key: this.#pinKey(node, digest) }))
  }

  async * pins (): AsyncIterable<{ node: string, digest: string }> {
    const prefix = `${this.#config.prefix}pins/`
    for await (const object of this.#listKeys(prefix)) {
      const [node, ...rest] = object.key.slice(prefix.length).split('/')
      const digest = digestFromKey(rest.join('/'))
      if (node !== undefined && digest !== undefined) yield { node: decodeURIComponent(node), digest }
    }
  }

  async * #listKeys (prefix: string): AsyncIterable<{ key: string, at: number | undefined }> {
    let token: string | undefined
    do {
      const page = await this.#client.send(new ListObjectsV2Command({ Bucket: this.#config.bucket, Prefix: prefix, ContinuationToken: token }))
      for (const object of page.Contents ?? []) {
        if (object.Key !== undefined) yield { key: object.Key, at: object.LastModified?.getTime() }
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined
    } while (token !== undefined)
  }

  close (): void {
    this.#client.destroy()
    if (this.#presigner !== this.#client) this.#presigner.destroy()
  }
}

/** A presigned URL's life: long enough for a slow client to fetch a blob of this size. */
function presignSeconds (size: number): number {
  return Math.min(PRESIGN_MAX_SECONDS, PRESIGN_BASE_SECONDS + Math.ceil(size / SLOW_CLIENT_BYTES_PER_SECOND))
}

/** Errors a stream that ends before `wanted` bytes went through (a store that cut its answer). */
class LengthCheck extends Transform {
  readonly #wanted: number
  readonly #what: string
  #seen = 0

  constructor (wanted: number, what: string) {
    super()
    this.#wanted = wanted
    this.#what = what
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#seen += chunk.length
    if (this.#seen > this.#wanted) {
      callback(new ShortFileError(`${this.#what} sent more than the ${this.#wanted} bytes asked`))
      return
    }
    callback(null, chunk)
  }

  override _flush (callback: TransformCallback): void {
    callback(this.#seen === this.#wanted ? null : new ShortFileError(`${this.#what} ended after ${this.#seen} of ${this.#wanted} bytes`))
  }
}

/** The whole object's size from `bytes 0-99/12345`; undefined when the store did not say. */
function totalOf (contentRange: string | undefined): number | undefined {
  const m = /^bytes \d+-\d+\/(\d+)$/.exec(contentRange ?? '')
  return m?.[1] === undefined ? undefined : Number(m[1])
}

function digestFromKey (name: string): string | undefined {
  const [algorithm, hex, ...rest] = name.split('/')
  if (algorithm === undefined || hex === undefined || rest.length > 0) return undefined
  const length = DIGEST_ALGORITHMS.get(algorithm)
  return length !== undefined && hex.length === length && /^[a-f0-9]+$/.test(hex) ? `${algorithm}:${hex}` : undefined
}

function statusOf (err: unknown): number | undefined {
  return err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined
}

function isNotFound (err: unknown): boolean {
  if (!(err instanceof S3ServiceException)) return false
  return err.name === 'NoSuchKey' || err.name === 'NotFound' || (err.$metadata.httpStatusCode === 404 && err.name !== 'NoSuchBucket')
}

/** A store failure in a line: the S3 error code and status, or the network error. */
function describe (err: unknown): string {
  if (err instanceof S3ServiceException) return `${err.name} (HTTP ${err.$metadata.httpStatusCode ?? '?'})${err.message !== '' && err.message !== err.name && err.message !== 'UnknownError' ? `: ${err.message}` : ''}`
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code
    return `${err.name}${typeof code === 'string' ? ` ${code}` : ''}: ${err.message}`
  }
  return String(err)
}

function setupError (err: unknown, config: S3StorageConfig): BucketSetupError {
  const status = statusOf(err)
  const where = config.endpoint ?? `AWS S3 in ${config.region}`
  if (status === 404) return new BucketSetupError('storage.s3.bucket', `bucket "${config.bucket}" does not exist at ${where} (create it, or fix the name)`)
  if (status === 403 || status === 401) {
    return new BucketSetupError('storage.s3', `the store at ${where} refused the credentials for bucket "${config.bucket}" (${describe(err)}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance role, and that they may read and write the bucket`)
  }
  if (status === 301 || status === 400) return new BucketSetupError('storage.s3.region', `the store at ${where} refused the request for bucket "${config.bucket}" in region "${config.region}" (${describe(err)}): is the region right?`)
  if (err instanceof Error && err.name === 'CredentialsProviderError') {
    return new BucketSetupError('storage.s3', `no credentials for the bucket: ${err.message} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or pod role)`)
  }
  return new BucketSetupError(config.endpoint === undefined ? 'storage.s3' : 'storage.s3.endpoint', `cannot reach bucket "${config.bucket}" at ${where}: ${describe(err)}`)
}
