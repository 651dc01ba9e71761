/**
 * Listing a bucket against a real nats-server while its keys change: the listing ends, and holds the
 * keys that have a value at the time, whatever was deleted before.
 */
import { Kvm, type KV } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bucketEntries, bucketKeys } from '../src/kv.js';
import { type NatsServer, startNatsServer } from '../src/testing/index.js';

describe('bucketKeys', () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let kv: KV;

  beforeAll(async () => {
    server = await startNatsServer();
    nc = await connect({ servers: server.url });
    kv = await new Kvm(nc).create('listing', { history: 1 });
  });

  afterAll(async () => {
    await nc?.close();
    await server?.stop();
  });

  it('ends, with the live keys, while one key is rewritten and after others were deleted and purged', async () => {
    for (const key of ['n1', 'n2', 'n3', 'n4', 'a.b']) await kv.put(key, 'x');
    await kv.delete('n2');
    await kv.purge('n4');
    // A node heartbeating every few milliseconds: kv.keys() never sees an idle moment to end on.
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        await kv.put('n1', String(i));
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    try {
      for (let round = 0; round < 150; round++) {
        const keys = await bucketKeys(kv);
        expect(keys.sort(), `round ${round}`).toEqual(['a.b', 'n1', 'n3']);
      }
    } finally {
      writing = false;
      await writer;
    }
  });

  it('gives each live entry its current value, and nothing for an empty bucket', async () => {
    const other = await new Kvm(nc).create('listing-values', { history: 1 });
    expect(await bucketEntries(other)).toEqual([]);
    await other.put('k1', 'one');
    await other.put('k2', 'two');
    await other.put('k1', 'uno');
    await other.delete('k2');
    const entries = await bucketEntries(other);
    expect(entries.map((e) => [e.key, e.string()])).toEqual([['k1', 'uno']]);
    await other.put('k3', 'three');
    // `only` sees every key; only the keys it accepts are read (k1 is not).
    const asked: string[] = [];
    const only = (key: string) => {
      asked.push(key);
      return key !== 'k1';
    };
    expect((await bucketEntries(other, only)).map((e) => e.key)).toEqual(['k3']);
    expect(asked.sort()).toEqual(['k1', 'k2', 'k3']);
  });

  it('says the bucket is not found when its stream is missing', async () => {
    const missing = await new Kvm(nc).open('never-created');
    await expect(bucketKeys(missing)).rejects.toThrow(/not found/i);
  });
});
