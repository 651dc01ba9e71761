/** The KV rules of applying announcements, on a real nats-server. */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { KV } from '@nats-io/kv';
import {
  Bitmap,
  chunkKeys,
  createLogger,
  decode,
  holderRecord,
  manifestRecord,
  memoryEventPublisher,
  MiB,
  openBuckets,
  type HolderRecord,
  type ManifestRecord,
} from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTombstones } from '../src/app.js';
import { createApplier, type Applier } from '../src/apply.js';
import { chunks, hashesFor, hashOf, hexOf, withdraw } from './fixtures.js';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';

let server: NatsServer;
let nc: NatsConnection;
let kv: KV;
let tombstones: KV;
const events = memoryEventPublisher('test-announcer');
let applier: Applier;
let clock = 1_000;
/** Publish times: each call is later than the previous, as the stream's timestamps are. */
const published = () => ({ publishedAt: ++clock });

async function manifestOf(n: number): Promise<ManifestRecord | null> {
  const entry = await kv.get(chunkKeys.manifest(hexOf(n)));
  return entry?.operation === 'PUT' ? decode(manifestRecord, entry.value, 'manifest') : null;
}

async function holderOf(n: number, node: string): Promise<HolderRecord | null> {
  const entry = await kv.get(chunkKeys.holder(hexOf(n), node));
  return entry?.operation === 'PUT' ? decode(holderRecord, entry.value, 'holder') : null;
}

const bits = (h: HolderRecord | null) => (h ? Bitmap.fromBase64(h.chunkCount, h.have).indices() : null);

beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  kv = (await openBuckets(nc)).chunks;
  tombstones = await openTombstones(nc, 120_000);
  applier = createApplier({
    chunks: kv,
    tombstones,
    events,
    log: createLogger('test', 'silent'),
    casAttempts: 50,
    now: () => 42,
  });
});

afterAll(async () => {
  await nc?.close();
  await server?.stop();
});

describe('applying chunks announcements', () => {
  it('creates the manifest from the first announcement, then the holder record', async () => {
    const outcome = await applier.apply(
      chunks('n1', 1, 5, [0, 2], { hashes: hashesFor(1, [0, 2]) }),
      published(),
    );
    expect(outcome).toEqual({ status: 'applied', conflicts: [] });
    expect(await manifestOf(1)).toEqual({
      blob: `sha256:${hexOf(1)}`,
      size: 4 * MiB,
      chunkSize: MiB,
      hashes: [hashOf(1, 0), '', hashOf(1, 2), ''],
    });
    const holder = await holderOf(1, 'n1');
    expect(holder).toMatchObject({ node: 'n1', seq: 5, chunkCount: 4, complete: false, at: 42 });
    expect(bits(holder)).toEqual([0, 2]);
  });

  it('merges hashes from other nodes; the first hash of a chunk wins and a conflict is reported', async () => {
    await applier.apply(chunks('n2', 1, 1, [1], { hashes: hashesFor(1, [1]) }), published());
    const conflicting = chunks('n3', 1, 1, [0, 1, 2, 3], { hashes: { 0: hashOf(1, 0, 9), 3: hashOf(1, 3) } });
    expect(await applier.apply(conflicting, published())).toEqual({ status: 'applied', conflicts: [0] });
    expect((await manifestOf(1))?.hashes).toEqual([hashOf(1, 0), hashOf(1, 1), hashOf(1, 2), hashOf(1, 3)]);
    // n3's chunk 0 does not match the manifest, so n3 is not advertised as holding it.
    const n3 = await holderOf(1, 'n3');
    expect(bits(n3)).toEqual([1, 2, 3]);
    expect(n3?.complete).toBe(false);
    expect(events.events.filter((e) => e.type === 'manifest_conflict')).toEqual([
      expect.objectContaining({
        type: 'manifest_conflict',
        blob: `sha256:${hexOf(1)}`,
        index: 0,
        node: 'n3',
        origin: 'test-announcer',
      }),
    ]);
  });

  it('keeps the newest snapshot of a node: an older seq is stale, a newer one replaces it', async () => {
    await applier.apply(chunks('n1', 2, 10, [0, 1], { hashes: hashesFor(2, [0, 1]) }), published());
    expect(
      await applier.apply(chunks('n1', 2, 9, [0, 1, 2, 3], { hashes: hashesFor(2, [2, 3]) }), published()),
    ).toMatchObject({
      status: 'stale',
    });
    expect(bits(await holderOf(2, 'n1'))).toEqual([0, 1]);
    // The stale snapshot's hashes are still facts about the blob, so the manifest keeps them.
    expect((await manifestOf(2))?.hashes.filter((h) => h !== '')).toHaveLength(4);
    expect(await applier.apply(chunks('n1', 2, 10, [0]), published())).toMatchObject({ status: 'stale' });
    expect(await applier.apply(chunks('n1', 2, 11, [0, 1, 2, 3]), published())).toMatchObject({
      status: 'applied',
    });
    expect(await holderOf(2, 'n1')).toMatchObject({ seq: 11, complete: true });
  });

  it('rejects an announcement whose size or chunk size contradicts the manifest, writing nothing', async () => {
    await applier.apply(chunks('n1', 3, 1, [0], { hashes: hashesFor(3, [0]) }), published());
    const other = chunks('n2', 3, 1, [0], { chunkSize: 2 * MiB, chunks: 2 });
    expect(await applier.apply(other, published())).toMatchObject({
      status: 'rejected',
      reason: 'manifest_mismatch',
    });
    const bigger = chunks('n2', 3, 2, [0], { size: 4 * MiB + 1, chunks: 5 });
    expect(await applier.apply(bigger, published())).toMatchObject({
      status: 'rejected',
      reason: 'manifest_mismatch',
    });
    expect(await holderOf(3, 'n2')).toBeNull();
    expect((await manifestOf(3))?.chunkSize).toBe(MiB);
  });

  it('rejects hashes for chunks beyond the end of the blob', async () => {
    const bad = chunks('n1', 4, 1, [0], { hashes: { 0: hashOf(4, 0), 4: hashOf(4, 4) } });
    expect(await applier.apply(bad, published())).toMatchObject({ status: 'rejected', reason: 'bad_index' });
    expect(await manifestOf(4)).toBeNull();
  });

  it('loses no hash when many nodes announce the same blob at once', async () => {
    const all = Array.from({ length: 16 }, (_, i) =>
      chunks(`c${i}`, 5, 1, [i], { chunks: 16, hashes: hashesFor(5, [i]) }),
    );
    const outcomes = await Promise.all(all.map((a) => applier.apply(a, published())));
    expect(outcomes.every((o) => o.status === 'applied')).toBe(true);
    expect((await manifestOf(5))?.hashes).toEqual(Array.from({ length: 16 }, (_, i) => hashOf(5, i)));
  });
});

describe('applying withdrawals', () => {
  it('deletes the holder, and a snapshot older than the withdrawal cannot bring it back', async () => {
    await applier.apply(chunks('n1', 6, 3, [0, 1], { hashes: hashesFor(6, [0, 1]) }), published());
    expect(await applier.apply(withdraw('n1', 6, 5), published())).toMatchObject({ status: 'applied' });
    expect(await holderOf(6, 'n1')).toBeNull();
    // Delivered late (a redelivery, or another replica): published before the withdrawal, so ignored.
    expect(await applier.apply(chunks('n1', 6, 4, [0, 1, 2]), published())).toMatchObject({
      status: 'stale',
    });
    expect(await holderOf(6, 'n1')).toBeNull();
    // The node fetched the blob again: a newer snapshot is a holder again.
    expect(await applier.apply(chunks('n1', 6, 6, [2]), published())).toMatchObject({ status: 'applied' });
    expect(bits(await holderOf(6, 'n1'))).toEqual([2]);
  });

  it('ignores a withdrawal older than the holder record', async () => {
    await applier.apply(chunks('n2', 6, 8, [0]), published());
    expect(await applier.apply(withdraw('n2', 6, 7), published())).toMatchObject({ status: 'stale' });
    expect(await holderOf(6, 'n2')).toMatchObject({ seq: 8 });
  });

  it('records a withdrawal that arrives before the snapshot it withdraws', async () => {
    expect(await applier.apply(withdraw('n3', 6, 2), published())).toMatchObject({ status: 'applied' });
    expect(await applier.apply(chunks('n3', 6, 1, [0]), published())).toMatchObject({ status: 'stale' });
    expect(await holderOf(6, 'n3')).toBeNull();
  });

  it('drops the manifest and every holder of an invalid blob, and ignores what was published before', async () => {
    await applier.apply(chunks('a1', 7, 1, [0, 1], { hashes: hashesFor(7, [0, 1]) }), published());
    const beforeInvalidation = published();
    await applier.apply(chunks('a2', 7, 1, [0, 1]), published());
    await applier.apply(chunks('a3', 7, 1, [0]), published());
    const invalidation = published();
    expect(await applier.apply(withdraw('a2', 7, 2, true), invalidation)).toMatchObject({
      status: 'applied',
    });
    expect(await manifestOf(7)).toBeNull();
    for (const n of ['a1', 'a2', 'a3']) expect(await holderOf(7, n)).toBeNull();
    // Another blob is untouched.
    expect(await manifestOf(6)).not.toBeNull();

    // An announcement published before the invalidation, delivered late, must not restore the bad hashes.
    const late = chunks('a4', 7, 9, [0, 1], { hashes: { 0: hashOf(7, 0), 1: hashOf(7, 1) } });
    expect(await applier.apply(late, beforeInvalidation)).toMatchObject({ status: 'stale' });
    expect(await manifestOf(7)).toBeNull();
    // A redelivered invalidation does not wipe out what is rebuilt afterwards.
    const fresh = chunks('a1', 7, 3, [0], { hashes: { 0: hashOf(7, 0, 1) } });
    expect(await applier.apply(fresh, published())).toMatchObject({ status: 'applied' });
    expect(await applier.apply(withdraw('a2', 7, 2, true), invalidation)).toMatchObject({ status: 'stale' });
    expect((await manifestOf(7))?.hashes[0]).toBe(hashOf(7, 0, 1));
    expect(bits(await holderOf(7, 'a1'))).toEqual([0]);
  });
});
