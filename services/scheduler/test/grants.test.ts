/** One conformance suite for both grant stores: the in-memory one must behave exactly like the KV one. */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  type BucketWatch,
  decode,
  grantKey,
  grantRecord,
  openBuckets,
  type MeshBuckets,
  watchBucket,
} from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  kvGrantStore,
  LeaseView,
  MAX_RENEWED_LEASES,
  memoryGrantStore,
  readLease,
  zoneGrantKey,
  type GrantStore,
  type GrantStoreOptions,
} from '../src/grants.js';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';

const NOW = 1_700_000_000_000;
const hexOf = (n: number) => n.toString(16).padStart(64, '0');

/** `seesLeases`: the store can tell a held lease without asking (memory, or KV with a lease view). */
function conformance(
  name: string,
  make: (options: GrantStoreOptions) => GrantStore | Promise<GrantStore>,
  seesLeases = true,
) {
  // Each test uses its own blob, so the KV-backed stores can share one bucket.
  let blobs = 0;
  const nextBlob = () => hexOf(++blobs + name.length * 1000);

  describe(`${name} grant store`, () => {
    it('gives a free chunk to the first node and refuses a second while the lease lasts', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const grant = await store.take(blob, 0, 'n1', NOW);
      expect(grant).toMatchObject({ blobHex: blob, index: 0, slot: 0, node: 'n1', expiresAt: NOW + 1_000 });
      expect(await store.take(blob, 0, 'n2', NOW + 999)).toBeNull();
      // Other chunks of the same blob are independent.
      expect(await store.take(blob, 1, 'n2', NOW)).toMatchObject({ index: 1, node: 'n2' });
    });

    it('renews the lease of the node that holds it', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const first = await store.take(blob, 0, 'n1', NOW);
      const renewed = await store.take(blob, 0, 'n1', NOW + 500);
      expect(renewed).toMatchObject({ slot: 0, expiresAt: NOW + 1_500 });
      expect(renewed!.revision).toBeGreaterThan(first!.revision);
      expect(await store.take(blob, 0, 'n2', NOW + 1_200)).toBeNull();
    });

    it('lets another node take an expired lease', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      await store.take(blob, 0, 'n1', NOW);
      expect(await store.take(blob, 0, 'n2', NOW + 1_000)).toMatchObject({
        node: 'n2',
        expiresAt: NOW + 2_000,
      });
    });

    it('hands out perChunk slots, then refuses', async () => {
      const store = await make({ perChunk: 3, leaseMs: 1_000 });
      const blob = nextBlob();
      const slots = [];
      for (const n of ['n1', 'n2', 'n3']) slots.push((await store.take(blob, 7, n, NOW))?.slot);
      expect(slots).toEqual([0, 1, 2]);
      expect(await store.take(blob, 7, 'n4', NOW)).toBeNull();
    });

    it('releases a lease so that it can be taken at once, but never a lease taken over since', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const grant = await store.take(blob, 0, 'n1', NOW);
      await store.release(grant!);
      expect(await store.take(blob, 0, 'n2', NOW)).toMatchObject({ node: 'n2' });

      const old = await store.take(blob, 1, 'n1', NOW);
      await store.take(blob, 1, 'n2', NOW + 2_000);
      await store.release(old!);
      expect(await store.take(blob, 1, 'n3', NOW + 2_001)).toBeNull();
    });

    it('keeps zone leases apart from origin leases and from other zones, with perZone slots each', async () => {
      const store = await make({ perChunk: 1, perZone: 2, leaseMs: 1_000 });
      const blob = nextBlob();
      const zone = 'eu-west 1a:x/ü';
      expect(await store.take(blob, 0, 'n1', NOW, zone)).toMatchObject({
        index: 0,
        slot: 0,
        node: 'n1',
        zone,
      });
      expect(await store.take(blob, 0, 'n2', NOW, zone)).toMatchObject({ slot: 1, node: 'n2', zone });
      expect(await store.take(blob, 0, 'n3', NOW, zone)).toBeNull();
      // The origin lease and another zone's lease of the same chunk are still free.
      const origin = await store.take(blob, 0, 'n3', NOW);
      expect(origin).toMatchObject({ slot: 0, node: 'n3' });
      expect(origin?.zone).toBeUndefined();
      expect(await store.take(blob, 0, 'n4', NOW, 'other')).toMatchObject({ node: 'n4', zone: 'other' });
      // An empty zone means no zone: it is the origin lease, which n3 holds.
      expect(await store.take(blob, 0, 'n5', NOW, '')).toBeNull();
    });

    it('renews a zone lease for its holder and releases it', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const first = await store.take(blob, 3, 'n1', NOW, 'z1');
      expect(await store.take(blob, 3, 'n2', NOW + 10, 'z1')).toBeNull();
      const renewed = await store.take(blob, 3, 'n1', NOW + 500, 'z1');
      expect(renewed).toMatchObject({ slot: 0, expiresAt: NOW + 1_500, zone: 'z1' });
      expect(renewed!.revision).toBeGreaterThan(first!.revision);
      await store.release(renewed!);
      expect(await store.take(blob, 3, 'n2', NOW + 600, 'z1')).toMatchObject({ node: 'n2' });
    });

    it('renews a lease for its node once less than two thirds are left, keeping when it was first granted', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const first = await store.take(blob, 0, 'n1', NOW);
      expect(first).toMatchObject({ grantedAt: NOW });
      // More than two thirds left: nothing to do.
      expect(await store.renew(blob, 0, 'n1', NOW + 300)).toBeNull();
      const renewed = await store.renew(blob, 0, 'n1', NOW + 600);
      expect(renewed).toMatchObject({ node: 'n1', slot: 0, expiresAt: NOW + 1_600, grantedAt: NOW });
      expect(renewed!.revision).toBeGreaterThan(first!.revision);
      await settle();
      expect(await store.take(blob, 0, 'n2', NOW + 1_200)).toBeNull();
      // Only its holder renews it, and only while it lasts.
      expect(await store.renew(blob, 0, 'n2', NOW + 1_200)).toBeNull();
      expect(await store.renew(blob, 0, 'n1', NOW + 1_600)).toBeNull();
      expect(await store.renew(blob, 1, 'n1', NOW + 600)).toBeNull();
      // A zone lease likewise, apart from the origin lease.
      await store.take(blob, 2, 'n1', NOW, 'z1');
      expect(await store.renew(blob, 2, 'n1', NOW + 700)).toBeNull();
      expect(await store.renew(blob, 2, 'n1', NOW + 700, 'z1')).toMatchObject({
        zone: 'z1',
        expiresAt: NOW + 1_700,
        grantedAt: NOW,
      });
    });

    it('renews a lease for at most MAX_RENEWED_LEASES leases from its first grant', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      await store.take(blob, 0, 'n1', NOW);
      let at = NOW;
      let expiresAt = NOW + 1_000;
      for (;;) {
        at = expiresAt - 400;
        const renewed = await store.renew(blob, 0, 'n1', at);
        await settle();
        if (!renewed) break;
        expiresAt = renewed.expiresAt;
      }
      expect(at - NOW).toBeGreaterThanOrEqual(MAX_RENEWED_LEASES * 1_000);
      expect(at - NOW).toBeLessThan((MAX_RENEWED_LEASES + 1) * 1_000);
      // The last renewal runs out, and the chunk goes to another node.
      expect(await store.take(blob, 0, 'n2', expiresAt)).toMatchObject({ node: 'n2' });
    });

    it('releases a lease renewed since for the same node, but not one another node took', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const first = await store.take(blob, 0, 'n1', NOW);
      await store.renew(blob, 0, 'n1', NOW + 600);
      await settle();
      // The grant as first written: what a replica that did not renew it still has.
      await store.release(first!);
      await settle();
      // Without a view of the bucket the store cannot tell the renewal is the same node's: it expires.
      if (seesLeases) expect(await store.take(blob, 0, 'n2', NOW + 700)).toMatchObject({ node: 'n2' });
      else expect(await store.take(blob, 0, 'n2', NOW + 700)).toBeNull();
      // Released and taken by n2: n1's grant no longer releases anything.
      const mine = await store.take(blob, 1, 'n1', NOW);
      await store.take(blob, 1, 'n2', NOW + 2_000);
      await settle();
      await store.release(mine!);
      expect(await store.take(blob, 1, 'n3', NOW + 2_001)).toBeNull();
    });

    it('grants a contended chunk exactly once', async () => {
      const store = await make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) => store.take(blob, 0, `n${i}`, NOW)),
      );
      expect(results.filter((r) => r !== null)).toHaveLength(1);
    });

    it('says a lease may be taken unless every slot is held by another node and unexpired', async () => {
      const store = await make({ perChunk: 2, perZone: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      expect(store.mayTake(blob, 0, 'n1', NOW)).toBe(true);
      await store.take(blob, 0, 'n1', NOW);
      await store.take(blob, 0, 'n2', NOW);
      await settle();
      // Without a view of the leases a store cannot tell, and says yes: the take itself decides.
      expect(store.mayTake(blob, 0, 'n3', NOW + 10)).toBe(!seesLeases);
      // Its own lease can be renewed, an expired one taken, and other scopes are independent.
      expect(store.mayTake(blob, 0, 'n1', NOW + 10)).toBe(true);
      expect(store.mayTake(blob, 0, 'n3', NOW + 1_000)).toBe(true);
      expect(store.mayTake(blob, 0, 'n3', NOW + 10, 'z1')).toBe(true);
      expect(store.mayTake(blob, 1, 'n3', NOW + 10)).toBe(true);
    });

    it('lets another node take the lease of a node that is gone, origin and zone alike, before it expires', async () => {
      const gone = new Set<string>();
      const t = Date.now();
      const store = await make({ perChunk: 1, perZone: 1, leaseMs: 5_000, gone: (node) => gone.has(node) });
      const blob = nextBlob();
      await settle();
      const before = store.liveOrigin(t);
      await store.take(blob, 0, 'gone-1', t);
      await store.take(blob, 0, 'gone-1', t, 'z1');
      await settle();
      expect(await store.take(blob, 0, 'n2', t + 10)).toBeNull();
      expect(await store.take(blob, 0, 'n2', t + 10, 'z1')).toBeNull();
      gone.add('gone-1');
      expect(store.mayTake(blob, 0, 'n2', t + 20)).toBe(true);
      // A gone node's lease does not count against the origin budget either.
      if (seesLeases) expect(store.liveOrigin(t + 20)?.total).toBe(before?.total);
      const taken = await store.take(blob, 0, 'n2', t + 20);
      expect(taken).toMatchObject({ node: 'n2', expiresAt: t + 5_020 });
      expect(await store.take(blob, 0, 'n2', t + 20, 'z1')).toMatchObject({ node: 'n2', zone: 'z1' });
      // Taken over exactly once: the next node is refused by the new holder's lease.
      await settle();
      expect(await store.take(blob, 0, 'n3', t + 30)).toBeNull();
    });

    it('counts the origin leases held now, by any node, and not the zone leases', async () => {
      // On the real clock: a lease view forgets leases that expired long ago.
      const t = Date.now();
      const store = await make({ perChunk: 2, perZone: 1, leaseMs: 5_000 });
      const blob = nextBlob();
      // Names of this run's own: the other stores' runs of this test share the bucket.
      const [c1, c2, c3] = [
        `count-${blob.slice(-6)}-1`,
        `count-${blob.slice(-6)}-2`,
        `count-${blob.slice(-6)}-3`,
      ];
      await settle();
      const before = store.liveOrigin(t);
      const taken = [
        await store.take(blob, 0, c1, t),
        await store.take(blob, 0, c2, t),
        await store.take(blob, 1, c1, t),
      ];
      await store.take(blob, 0, c3, t, 'z1');
      await settle();
      if (!seesLeases) {
        expect(store.liveOrigin(t)).toBeUndefined();
        return;
      }
      expect(store.liveOrigin(t)!.total - before!.total).toBe(3);
      // By node: c1 holds two, c2 one; c3's zone lease is not an origin lease.
      expect(store.liveOrigin(t, c1)?.held).toBe(2);
      expect(store.liveOrigin(t, c3)?.held).toBe(0);
      expect(store.liveOrigin(t)?.holders).toEqual(new Set([...before!.holders, c1, c2]));
      expect([store.holdsOrigin(blob, 0, c1, t), store.holdsOrigin(blob, 1, c2, t)]).toEqual([true, false]);
      expect(store.holdsOrigin(blob, 0, c3, t)).toBe(false);
      expect(store.holdsOrigin(blob, 0, c1, t + 60_000)).toBe(false);
      // A lease asked for and not yet answered counts for its node at once.
      const pending = store.take(blob, 2, c2, t);
      expect(store.liveOrigin(t, c2)?.held).toBe(2);
      await pending;
      await store.release(taken[0]!);
      await settle();
      // c2's two and c1's other.
      expect(store.liveOrigin(t)!.total - before!.total).toBe(3);
      // Expired leases are not held.
      expect(store.liveOrigin(t + 60_000)).toEqual({ total: 0, held: 0, holders: new Set() });
    });
  });
}

/** Lets a watch deliver what was just written (a view may lag; mayTake is allowed to say yes meanwhile). */
const settle = () => new Promise((resolve) => setTimeout(resolve, 50));

conformance('memory', (options) => memoryGrantStore(options));

let server: NatsServer;
let nc: NatsConnection;
let buckets: MeshBuckets;

beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  buckets = await openBuckets(nc);
});

afterAll(async () => {
  await nc?.close();
  await server?.stop();
});

conformance('kv', (options) => kvGrantStore(buckets.grants, options), false);

const watches: BucketWatch[] = [];
afterAll(() => watches.forEach((w) => w.stop()));

/** A KV store with a lease view fed by its own watch of the bucket, as a scheduler replica has. */
async function viewedStore(options: GrantStoreOptions, counts?: { calls: number }): Promise<GrantStore> {
  const view = new LeaseView(options.leaseMs);
  const watch = await watchBucket(buckets.grants, (e) =>
    view.saw(e.key, e.revision, e.operation === 'PUT' ? readLease(e.key, e.value) : undefined),
  );
  watches.push(watch);
  await watch.initialized;
  view.markLoaded();
  const kv = counts
    ? new Proxy(buckets.grants, {
        get(target, prop, receiver) {
          const value: unknown = Reflect.get(target, prop, receiver);
          if (typeof value !== 'function') return value;
          return (...args: unknown[]) => {
            counts.calls++;
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        },
      })
    : buckets.grants;
  return kvGrantStore(kv, options, view);
}

conformance('kv with a lease view', (options) => viewedStore(options));

describe('kv grant store', () => {
  it('writes the lease as a grantRecord under grantKey, and shares it between store instances', async () => {
    const a = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const b = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const blob = hexOf(424242);
    await a.take(blob, 3, 'n1', NOW);
    const entry = await buckets.grants.get(grantKey(blob, 3, 0));
    expect(decode(grantRecord, entry!.value, 'grant')).toEqual({
      node: 'n1',
      expiresAt: NOW + 5_000,
      grantedAt: NOW,
    });
    expect(await b.take(blob, 3, 'n2', NOW)).toBeNull();
  });

  it('writes a zone lease under a valid key that encodes the zone', async () => {
    const store = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const blob = hexOf(515151);
    const zone = 'cn-hangzhou.k: zone/1';
    const grant = await store.take(blob, 2, 'n1', NOW, zone);
    expect(grant?.key).toBe(zoneGrantKey(blob, 2, zone, 0));
    expect(grant?.key).toMatch(/^[0-9a-f]{64}\.2\.z\.[A-Za-z0-9_-]+\.0$/);
    const entry = await buckets.grants.get(grant!.key);
    expect(decode(grantRecord, entry!.value, 'grant')).toEqual({
      node: 'n1',
      expiresAt: NOW + 5_000,
      grantedAt: NOW,
    });
    expect(await buckets.grants.get(grantKey(blob, 2, 0))).toBeNull();
  });

  it('with a lease view, refuses a lease it sees held without asking the bucket, and takes a free one in one write', async () => {
    const counts = { calls: 0 };
    const mine = await viewedStore({ perChunk: 1, leaseMs: 5_000 }, counts);
    const other = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const blob = hexOf(999_001);
    await other.take(blob, 0, 'n1', NOW);
    await settle();
    counts.calls = 0;
    expect(await mine.take(blob, 0, 'n2', NOW + 10)).toBeNull();
    expect(counts.calls).toBe(0);
    expect(await mine.take(blob, 1, 'n2', NOW + 10)).toMatchObject({ node: 'n2' });
    expect(counts.calls).toBe(1);
  });

  it('with a lease view that lags, still never grants a slot twice', async () => {
    const mine = await viewedStore({ perChunk: 1, leaseMs: 5_000 });
    const other = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const blob = hexOf(999_002);
    // Written and raced at once: the view cannot have seen the other store's lease yet.
    await other.take(blob, 0, 'n1', NOW);
    expect(await mine.take(blob, 0, 'n2', NOW + 10)).toBeNull();
    // An expired lease renewed elsewhere after the view saw it: the write at the old revision fails.
    await other.take(blob, 1, 'n1', NOW);
    await settle();
    await other.take(blob, 1, 'n1', NOW + 6_000);
    expect(await mine.take(blob, 1, 'n2', NOW + 6_010)).toBeNull();
  });

  it('overwrites an unreadable lease instead of blocking the chunk forever', async () => {
    const store = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const blob = hexOf(777);
    await buckets.grants.put(grantKey(blob, 0, 0), 'not json');
    expect(await store.take(blob, 0, 'n1', NOW)).toMatchObject({ node: 'n1' });
  });
});
