/** Key-value helpers shared by the services: compare-and-set conflicts and whole-bucket watches. */
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import type { KV, KvWatchEntry } from '@nats-io/kv';

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
