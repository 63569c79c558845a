// A test's listener for the mirror's events: every event, in order, as data.

import type { AuthFailureReason, ConnectionRefusal, DenialReason, DownloadResult, EvictedItem, MirrorEvents, PassthroughResult, RefusalReason, RequestRecord, StoreUploadResult, UncachedResult, UpstreamAnswer } from '../../lib/events.js'

export type RecordedEvent =
  | { readonly event: 'upstreamResponse', readonly answer: UpstreamAnswer }
  | { readonly event: 'tokenFetched' | 'upstreamRetried', readonly upstream: string }
  | { readonly event: 'upstreamRefused', readonly upstream: string, readonly reason: RefusalReason }
  | { readonly event: 'authFailed', readonly reason: AuthFailureReason }
  | { readonly event: 'accessDenied', readonly reason: DenialReason }
  | { readonly event: 'passthroughChecked', readonly upstream: string, readonly result: PassthroughResult }
  | { readonly event: 'upstreamState', readonly upstream: string, readonly down: { since: number, until: number } | undefined }
  | { readonly event: 'downloadStarted', readonly digest: string, readonly upstream: string }
  | { readonly event: 'downloadEnded', readonly digest: string, readonly upstream: string, readonly result: DownloadResult, readonly bytes: number }
  | { readonly event: 'uncachedStarted', readonly digest: string, readonly upstream: string, readonly reason: string }
  | { readonly event: 'uncachedEnded', readonly digest: string, readonly upstream: string, readonly result: UncachedResult, readonly bytes: number }
  | { readonly event: 'evicted', readonly item: EvictedItem }
  | { readonly event: 'indexWriteFailed', readonly operation: string }
  | { readonly event: 'storeUpload', readonly result: StoreUploadResult, readonly bytes: number }
  | { readonly event: 'scrubbed', readonly bytes: number }
  | { readonly event: 'corruptRemoved', readonly kind: 'blob' | 'manifest', readonly digest: string }
  | { readonly event: 'connectionRefused', readonly reason: ConnectionRefusal }
  | { readonly event: 'requestFinished', readonly record: RequestRecord }

export class EventRecorder implements MirrorEvents {
  readonly events: RecordedEvent[] = []

  upstreamResponse (answer: UpstreamAnswer): void { this.events.push({ event: 'upstreamResponse', answer }) }
  tokenFetched (upstream: string): void { this.events.push({ event: 'tokenFetched', upstream }) }
  upstreamRetried (upstream: string): void { this.events.push({ event: 'upstreamRetried', upstream }) }
  upstreamRefused (upstream: string, reason: RefusalReason): void { this.events.push({ event: 'upstreamRefused', upstream, reason }) }
  authFailed (reason: AuthFailureReason): void { this.events.push({ event: 'authFailed', reason }) }
  accessDenied (reason: DenialReason): void { this.events.push({ event: 'accessDenied', reason }) }
  passthroughChecked (upstream: string, result: PassthroughResult): void { this.events.push({ event: 'passthroughChecked', upstream, result }) }
  upstreamState (upstream: string, down: { since: number, until: number } | undefined): void { this.events.push({ event: 'upstreamState', upstream, down }) }
  downloadStarted (digest: string, upstream: string): void { this.events.push({ event: 'downloadStarted', digest, upstream }) }
  downloadEnded (digest: string, upstream: string, result: DownloadResult, bytes: number): void {
    this.events.push({ event: 'downloadEnded', digest, upstream, result, bytes })
  }

  uncachedStarted (digest: string, upstream: string, reason: string): void { this.events.push({ event: 'uncachedStarted', digest, upstream, reason }) }
  uncachedEnded (digest: string, upstream: string, result: UncachedResult, bytes: number): void {
    this.events.push({ event: 'uncachedEnded', digest, upstream, result, bytes })
  }

  evicted (item: EvictedItem): void { this.events.push({ event: 'evicted', item }) }
  indexWriteFailed (operation: string): void { this.events.push({ event: 'indexWriteFailed', operation }) }
  storeUpload (result: StoreUploadResult, bytes: number): void { this.events.push({ event: 'storeUpload', result, bytes }) }
  scrubbed (bytes: number): void { this.events.push({ event: 'scrubbed', bytes }) }
  corruptRemoved (kind: 'blob' | 'manifest', digest: string): void { this.events.push({ event: 'corruptRemoved', kind, digest }) }
  connectionRefused (reason: ConnectionRefusal): void { this.events.push({ event: 'connectionRefused', reason }) }
  requestFinished (record: RequestRecord): void { this.events.push({ event: 'requestFinished', record }) }

  /** The events of one kind, in order. */
  of<K extends RecordedEvent['event']> (event: K): Array<Extract<RecordedEvent, { event: K }>> {
    return this.events.filter((e): e is Extract<RecordedEvent, { event: K }> => e.event === event)
  }
}
