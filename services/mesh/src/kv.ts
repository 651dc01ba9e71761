/** Key-value helpers shared by the services: compare-and-set conflicts and whole-bucket watches. */
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import type { Bucket, KV, KvEntry, KvWatchEntry } from '@nats-io/kv';

/** Recognises the error JetStream returns when a compare-and-set write loses a race. */

export function isCasConflict(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence ||
      err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

/**
 * Watches a whole KV bucket: first the current value of every key (deletions included), then changes
 * as they happen. `initialized` resolves once the current values have all been delivered, which is when
 * an index built from them is complete enough to answer from.
 */
export interface BucketWatch {
  readonly initialized: Promise<void>;
  /** Resolves when the watch ends: after stop(), or when the connection closes. */
  readonly ended: Promise<void>;
  stop(): void;
}

export async function watchBucket(kv: KV, onEntry: (entry: KvWatchEntry) => void): Promise<BucketWatch> {
  // nats.js v3 has no "initial values done" callback; it marks the last initial value with isUpdate. An
  // empty bucket has no such entry, so emptiness is read from the stream first. A value written between
  // the two calls is simply applied as an update, which is equally correct.
  const status = await kv.status();
  const iterator = await kv.watch({ key: '>' });
  let resolveInit!: () => void;
  let rejectInit!: (err: Error) => void;
  const initialized = new Promise<void>((resolve, reject) => {
    resolveInit = resolve;
    rejectInit = reject;
  });
  // A caller that stops before initialisation must not see an unhandled rejection.
  initialized.catch(() => undefined);
  if (status.values === 0) resolveInit();
  const ended = (async () => {
    try {
      for await (const entry of iterator) {
        onEntry(entry);
        if (entry.isUpdate) resolveInit();
      }
    } finally {
      rejectInit(new Error(`watch of bucket ${status.bucket} ended before its current values were loaded`));
    }
  })();
  return {
    initialized,
    ended: ended.catch(() => undefined),
    stop: () => iterator.stop(),
  };
}

/** What listing needs of a bucket from Kvm: its stream, the subject prefix of its keys, and its manager. */
type ListableBucket = KV & Pick<Bucket, 'jsm' | 'stream' | 'prefix' | 'prefixLen' | 'decodeKey'>;

function listable(kv: KV): kv is ListableBucket {
  // Checked by shape rather than `instanceof Bucket`, which two copies of the library would defeat.
  const bucket = kv as Partial<ListableBucket>;
  return (
    typeof bucket.stream === 'string' &&
    typeof bucket.prefix === 'string' &&
    typeof bucket.decodeKey === 'function' &&
    bucket.jsm !== undefined
  );
}

/**
 * The current entry of every key in a bucket that holds a value (deleted and purged keys left out), of
 * the keys `only` accepts when it is given (the others are not read at all).
 *
 * The keys are read from the stream's subject list, one request (paged by the server for big buckets),
 * not with `kv.keys()`: on nats-server 2.9 that listing waits forever once a key has been deleted while
 * another keeps being written, because it ends on a pending count that then never reaches zero and on an
 * idle heartbeat that the writes keep away. A key written or deleted meanwhile is read as it is then.
 */
export async function bucketEntries(kv: KV, only?: (key: string) => boolean): Promise<KvEntry[]> {
  if (!listable(kv)) throw new TypeError('bucketEntries needs a bucket opened with Kvm');
  const info = await kv.jsm.streams.info(kv.stream, { subjects_filter: `${kv.prefix}.>` });
  const entries: KvEntry[] = [];
  for (const subject of Object.keys(info.state.subjects ?? {})) {
    const key = kv.decodeKey(subject.substring(kv.prefixLen));
    if (only && !only(key)) continue;
    const entry = await kv.get(key);
    if (entry?.operation === 'PUT') entries.push(entry);
  }
  return entries;
}

/** The keys of a bucket that hold a value, of those `only` accepts; see bucketEntries. */
export async function bucketKeys(kv: KV, only?: (key: string) => boolean): Promise<string[]> {
  return (await bucketEntries(kv, only)).map((entry) => entry.key);
}
