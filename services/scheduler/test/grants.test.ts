/** One conformance suite for both grant stores: the in-memory one must behave exactly like the KV one. */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { decode, grantKey, grantRecord, openBuckets, type MeshBuckets } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  kvGrantStore,
  memoryGrantStore,
  zoneGrantKey,
  type GrantStore,
  type GrantStoreOptions,
} from '../src/grants.js';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';

const NOW = 1_700_000_000_000;
const hexOf = (n: number) => n.toString(16).padStart(64, '0');

function conformance(name: string, make: (options: GrantStoreOptions) => GrantStore) {
  // Each test uses its own blob, so the KV-backed stores can share one bucket.
  let blobs = 0;
  const nextBlob = () => hexOf(++blobs + name.length * 1000);

  describe(`${name} grant store`, () => {
    it('gives a free chunk to the first node and refuses a second while the lease lasts', async () => {
      const store = make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const grant = await store.take(blob, 0, 'n1', NOW);
      expect(grant).toMatchObject({ blobHex: blob, index: 0, slot: 0, node: 'n1', expiresAt: NOW + 1_000 });
      expect(await store.take(blob, 0, 'n2', NOW + 999)).toBeNull();
      // Other chunks of the same blob are independent.
      expect(await store.take(blob, 1, 'n2', NOW)).toMatchObject({ index: 1, node: 'n2' });
    });

    it('renews the lease of the node that holds it', async () => {
      const store = make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const first = await store.take(blob, 0, 'n1', NOW);
      const renewed = await store.take(blob, 0, 'n1', NOW + 500);
      expect(renewed).toMatchObject({ slot: 0, expiresAt: NOW + 1_500 });
      expect(renewed!.revision).toBeGreaterThan(first!.revision);
      expect(await store.take(blob, 0, 'n2', NOW + 1_200)).toBeNull();
    });

    it('lets another node take an expired lease', async () => {
      const store = make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      await store.take(blob, 0, 'n1', NOW);
      expect(await store.take(blob, 0, 'n2', NOW + 1_000)).toMatchObject({
        node: 'n2',
        expiresAt: NOW + 2_000,
      });
    });

    it('hands out perChunk slots, then refuses', async () => {
      const store = make({ perChunk: 3, leaseMs: 1_000 });
      const blob = nextBlob();
      const slots = [];
      for (const n of ['n1', 'n2', 'n3']) slots.push((await store.take(blob, 7, n, NOW))?.slot);
      expect(slots).toEqual([0, 1, 2]);
      expect(await store.take(blob, 7, 'n4', NOW)).toBeNull();
    });

    it('releases a lease so that it can be taken at once, but never a lease taken over since', async () => {
      const store = make({ perChunk: 1, leaseMs: 1_000 });
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
      const store = make({ perChunk: 1, perZone: 2, leaseMs: 1_000 });
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
      const store = make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const first = await store.take(blob, 3, 'n1', NOW, 'z1');
      expect(await store.take(blob, 3, 'n2', NOW + 10, 'z1')).toBeNull();
      const renewed = await store.take(blob, 3, 'n1', NOW + 500, 'z1');
      expect(renewed).toMatchObject({ slot: 0, expiresAt: NOW + 1_500, zone: 'z1' });
      expect(renewed!.revision).toBeGreaterThan(first!.revision);
      await store.release(renewed!);
      expect(await store.take(blob, 3, 'n2', NOW + 600, 'z1')).toMatchObject({ node: 'n2' });
    });

    it('grants a contended chunk exactly once', async () => {
      const store = make({ perChunk: 1, leaseMs: 1_000 });
      const blob = nextBlob();
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) => store.take(blob, 0, `n${i}`, NOW)),
      );
      expect(results.filter((r) => r !== null)).toHaveLength(1);
    });
  });
}

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

conformance('kv', (options) => kvGrantStore(buckets.grants, options));

describe('kv grant store', () => {
  it('writes the lease as a grantRecord under grantKey, and shares it between store instances', async () => {
    const a = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const b = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const blob = hexOf(424242);
    await a.take(blob, 3, 'n1', NOW);
    const entry = await buckets.grants.get(grantKey(blob, 3, 0));
    expect(decode(grantRecord, entry!.value, 'grant')).toEqual({ node: 'n1', expiresAt: NOW + 5_000 });
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
    expect(decode(grantRecord, entry!.value, 'grant')).toEqual({ node: 'n1', expiresAt: NOW + 5_000 });
    expect(await buckets.grants.get(grantKey(blob, 2, 0))).toBeNull();
  });

  it('overwrites an unreadable lease instead of blocking the chunk forever', async () => {
    const store = kvGrantStore(buckets.grants, { perChunk: 1, leaseMs: 5_000 });
    const blob = hexOf(777);
    await buckets.grants.put(grantKey(blob, 0, 0), 'not json');
    expect(await store.take(blob, 0, 'n1', NOW)).toMatchObject({ node: 'n1' });
  });
});
