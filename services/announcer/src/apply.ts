/**
 * Applies one announcement to the chunk index in KV. Every write is compare-and-set against what was
 * read, so any number of announcer replicas can apply announcements concurrently without a leader:
 * a replica that loses a race reads again and re-decides.
 *
 * Ordering rules, and why:
 * - The manifest is written before the holder record, so that a watcher of the chunks bucket never
 *   sees a node holding a chunk whose hash is unknown (both live in one bucket, one ordered stream).
 * - Holder records carry the node's announcement `seq`; an older snapshot never replaces a newer one.
 * - A withdrawal leaves a tombstone (in a bucket of its own, with a TTL), and an invalidation leaves one
 *   for the whole blob, because a deleted KV key remembers nothing: without them, an older snapshot
 *   delivered late (a redelivery, another replica) would bring a withdrawn holder, or the manifest of
 *   an invalid blob, back to life. Readers check the key first and the tombstone second, and writers
 *   of tombstones write the tombstone first and the key second, so one of the two always notices.
 */
import {
  type Announcement,
  Bitmap,
  chunkCount,
  chunkKeys,
  type ChunksAnnouncement,
  decode,
  encode,
  type EventPublisher,
  type HolderRecord,
  holderRecord,
  isCasConflict,
  type Logger,
  type ManifestRecord,
  manifestRecord,
} from '@shoal/mesh';
import type { KV, KvEntry } from '@nats-io/kv';

export type RejectReason = 'invalid' | 'node_mismatch' | 'bad_index' | 'manifest_mismatch';

export type ApplyOutcome =
  | { status: 'applied'; conflicts: number[] }
  | { status: 'stale'; reason: string }
  | { status: 'rejected'; reason: RejectReason; message: string };

export interface AnnouncementMeta {
  /** When the stream stored the announcement (ms since the epoch, server clock). */
  publishedAt: number;
}

export interface ApplierDeps {
  chunks: KV;
  tombstones: KV;
  events: EventPublisher;
  log: Logger;
  casAttempts: number;
  now?: () => number;
}

export interface Applier {
  /** Resolves to the outcome; rejects only on errors worth retrying (KV unavailable, too many races). */
  apply(announcement: Announcement, meta: AnnouncementMeta): Promise<ApplyOutcome>;
}

/** Keys of the tombstone bucket. */
export const tombstoneKeys = {
  withdrawn: (blobHex: string, node: string) => `w.${blobHex}.${node}`,
  invalidated: (blobHex: string) => `x.${blobHex}`,
} as const;

export const TOMBSTONE_BUCKET = 'shoal_announcer_tombstones';

const decoder = new TextDecoder();
const live = (entry: KvEntry | null): entry is KvEntry => entry !== null && entry.operation === 'PUT';
const blobHexOf = (blob: string) => blob.slice('sha256:'.length);

/**
 * Reads a numeric field of a tombstone. `value` is null when there is none (or it is unreadable, which
 * protects nothing); `revision` is what a compare-and-set write of the key must expect.
 */
async function readTombstone(
  kv: KV,
  key: string,
  field: 'seq' | 'at',
): Promise<{ value: number | null; revision: number }> {
  const entry = await kv.get(key);
  if (!entry || entry.operation !== 'PUT') return { value: null, revision: entry?.revision ?? 0 };
  try {
    const parsed = JSON.parse(decoder.decode(entry.value)) as Record<string, unknown>;
    const value = parsed[field];
    return { value: typeof value === 'number' ? value : null, revision: entry.revision };
  } catch {
    return { value: null, revision: entry.revision };
  }
}

function tryDecode<T>(schema: Parameters<typeof decode<T>>[0], entry: KvEntry, what: string): T | undefined {
  try {
    return decode(schema, entry.value, what);
  } catch {
    return undefined;
  }
}

class RetriesExhausted extends Error {}

export function createApplier(deps: ApplierDeps): Applier {
  const { chunks, tombstones, events, log } = deps;
  const now = deps.now ?? Date.now;

  /** Runs `attempt` until it returns something other than 'retry' (a lost compare-and-set race). */
  async function withCas<T>(what: string, attempt: () => Promise<T | 'retry'>): Promise<T> {
    for (let i = 0; i < deps.casAttempts; i++) {
      try {
        const result = await attempt();
        if (result !== 'retry') return result;
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    }
    throw new RetriesExhausted(
      `${what}: still losing compare-and-set races after ${deps.casAttempts} attempts`,
    );
  }

  /** Raises a tombstone's field to at least `value`. */
  function raiseTombstone(key: string, field: 'seq' | 'at', value: number): Promise<void> {
    return withCas(`tombstone ${key}`, async () => {
      const current = await readTombstone(tombstones, key, field);
      if (current.value !== null && current.value >= value) return undefined;
      await tombstones.put(key, encode({ [field]: value }), { previousSeq: current.revision });
      return undefined;
    });
  }

  async function applyChunks(a: ChunksAnnouncement, meta: AnnouncementMeta): Promise<ApplyOutcome> {
    const hex = blobHexOf(a.blob);
    const count = chunkCount(a.size, a.chunkSize);
    const hashes = new Map<number, string>();
    for (const [key, hash] of Object.entries(a.hashes ?? {})) {
      const index = Number(key);
      if (index >= count) {
        return {
          status: 'rejected',
          reason: 'bad_index',
          message: `hashes: chunk ${index} is beyond the blob's ${count} chunks`,
        };
      }
      hashes.set(index, hash);
    }
    const manifestKey = chunkKeys.manifest(hex);
    const holderKey = chunkKeys.holder(hex, a.node);

    const outcome = await withCas<ApplyOutcome>(`announcement from ${a.node}`, async () => {
      // Keys first, tombstones second: see the module comment.
      const [manifestEntry, holderEntry] = await Promise.all([
        chunks.get(manifestKey),
        chunks.get(holderKey),
      ]);
      const invalidated = await readTombstone(tombstones, tombstoneKeys.invalidated(hex), 'at');
      if (invalidated.value !== null && meta.publishedAt <= invalidated.value) {
        return { status: 'stale', reason: 'published before the blob was invalidated' };
      }

      const existing = live(manifestEntry) ? tryDecode(manifestRecord, manifestEntry, 'manifest') : undefined;
      if (
        existing &&
        (existing.size !== a.size || existing.chunkSize !== a.chunkSize || existing.hashes.length !== count)
      ) {
        return {
          status: 'rejected',
          reason: 'manifest_mismatch',
          message: `size ${a.size} / chunk size ${a.chunkSize} contradict the manifest's ${existing.size} / ${existing.chunkSize}`,
        };
      }
      const merged = existing ? [...existing.hashes] : new Array<string>(count).fill('');
      let changed = existing === undefined;
      const conflicts: number[] = [];
      for (const [index, hash] of hashes) {
        const known = merged[index];
        if (known === '') {
          merged[index] = hash;
          changed = true;
        } else if (known !== hash) {
          conflicts.push(index);
        }
      }
      if (changed) {
        const manifest: ManifestRecord = {
          blob: a.blob,
          size: a.size,
          chunkSize: a.chunkSize,
          hashes: merged,
        };
        await chunks.put(manifestKey, encode(manifest), { previousSeq: manifestEntry?.revision ?? 0 });
      }

      const current = live(holderEntry) ? tryDecode(holderRecord, holderEntry, 'holder') : undefined;
      if (current && current.seq >= a.seq)
        return { status: 'stale', reason: `holder already at seq ${current.seq}` };
      if (!current) {
        const withdrawn = await readTombstone(tombstones, tombstoneKeys.withdrawn(hex, a.node), 'seq');
        if (withdrawn.value !== null && withdrawn.value >= a.seq)
          return { status: 'stale', reason: `withdrawn at seq ${withdrawn.value}` };
      }
      const have = Bitmap.fromBase64(count, a.have);
      // A node whose copy of a chunk hashes differently from the manifest must not serve it: peers would
      // reject it as corrupt.
      for (const index of conflicts) have.clear(index);
      const record: HolderRecord = {
        node: a.node,
        blob: a.blob,
        seq: a.seq,
        chunkCount: count,
        have: have.toBase64(),
        complete: a.complete && conflicts.length === 0 && have.isFull(),
        at: now(),
      };
      await chunks.put(holderKey, encode(record), { previousSeq: holderEntry?.revision ?? 0 });
      return { status: 'applied', conflicts };
    });

    if (outcome.status === 'applied') {
      for (const index of outcome.conflicts) {
        log.warn(
          { blob: a.blob, index, node: a.node },
          'announced chunk hash differs from the manifest; keeping the first',
        );
        events.publish({ type: 'manifest_conflict', blob: a.blob, index, node: a.node });
      }
    }
    return outcome;
  }

  async function applyWithdraw(
    a: Extract<Announcement, { type: 'withdraw' }>,
    meta: AnnouncementMeta,
  ): Promise<ApplyOutcome> {
    const hex = blobHexOf(a.blob);
    const holderKey = chunkKeys.holder(hex, a.node);
    if (a.invalid) {
      // The blob's content did not match its digest, so some hash in its manifest is wrong: drop the
      // manifest and every holder, and ignore anything published before now. A redelivered invalidation
      // must not wipe out what was rebuilt since, so one that is not newer than the tombstone is stale.
      const previous = await readTombstone(tombstones, tombstoneKeys.invalidated(hex), 'at');
      if (previous.value !== null && previous.value >= meta.publishedAt) {
        return { status: 'stale', reason: 'blob already invalidated since' };
      }
      await raiseTombstone(tombstoneKeys.invalidated(hex), 'at', meta.publishedAt);
      await chunks.delete(chunkKeys.manifest(hex));
      const keys: string[] = [];
      for await (const key of await chunks.keys(chunkKeys.holdersOf(hex))) keys.push(key);
      if (!keys.includes(holderKey)) keys.push(holderKey);
      await Promise.all(keys.map((key) => chunks.delete(key)));
      log.info(
        { blob: a.blob, node: a.node, holders: keys.length },
        'blob invalidated: manifest and holders dropped',
      );
      return { status: 'applied', conflicts: [] };
    }

    await raiseTombstone(tombstoneKeys.withdrawn(hex, a.node), 'seq', a.seq);
    return withCas<ApplyOutcome>(`withdrawal from ${a.node}`, async () => {
      const entry = await chunks.get(holderKey);
      const current = live(entry) ? tryDecode(holderRecord, entry, 'holder') : undefined;
      if (current && current.seq >= a.seq)
        return { status: 'stale', reason: `holder already at seq ${current.seq}` };
      // Even when the key is already gone, a fresh deletion marker is written: a replica applying an older
      // snapshot concurrently then fails its compare-and-set, re-reads, and finds the tombstone.
      if (entry) await chunks.delete(holderKey, { previousSeq: entry.revision });
      else await chunks.delete(holderKey);
      return { status: 'applied', conflicts: [] };
    });
  }

  return {
    async apply(announcement, meta) {
      switch (announcement.type) {
        case 'chunks':
          return applyChunks(announcement, meta);
        case 'withdraw':
          return applyWithdraw(announcement, meta);
        default: {
          const unreachable: never = announcement;
          throw new TypeError(`unknown announcement ${JSON.stringify(unreachable)}`);
        }
      }
    },
  };
}
