/** Announcer replicas on a real nats-server: one durable consumer, each announcement applied once. */
import { jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream';
import type { KvWatchEntry } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  Bitmap,
  chunkKeys,
  connectMesh,
  consumers,
  createLogger,
  decode,
  encode,
  ensureStreams,
  holderRecord,
  manifestRecord,
  memoryEventPublisher,
  openBuckets,
  streams,
  subjects,
  type Announcement,
  type MeshBuckets,
  type MeshConnection,
} from '@shoal/mesh';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAnnouncer, type Announcer } from '../src/app.js';
import type { AnnouncerSettings } from '../src/config.js';
import { blobOf, chunks, hashesFor, hexOf, withdraw } from './fixtures.js';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';

const settings: AnnouncerSettings = {
  batch: 10,
  concurrency: 8,
  ackWait: 30_000,
  retryDelay: 100,
  casAttempts: 50,
  tombstoneTtl: 120_000,
};

let server: NatsServer;
let nc: NatsConnection;
let js: JetStreamClient;
let buckets: MeshBuckets;
const running: { announcer: Announcer; mesh: MeshConnection; registry: Registry }[] = [];

async function startAnnouncer(
  instance: string,
  wrap?: (b: MeshBuckets) => MeshBuckets,
  config: AnnouncerSettings = settings,
) {
  const mesh = connectMesh({ servers: [server.url], name: instance, log: createLogger('test', 'silent') });
  const registry = new Registry();
  const own = await openBuckets(await mesh.ready());
  const announcer = createAnnouncer({
    mesh,
    log: createLogger(instance, 'silent'),
    registry,
    config,
    instance,
    buckets: wrap ? wrap(own) : own,
    events: memoryEventPublisher(instance),
  });
  await announcer.start();
  const entry = { announcer, mesh, registry };
  running.push(entry);
  return entry;
}

async function stopAll() {
  for (const r of running.splice(0)) {
    await r.announcer.stop();
    await r.mesh.close();
  }
}

async function publish(a: Announcement, subjectNode = a.node) {
  await js.publish(subjects.announce(subjectNode), encode(a));
}

/** Waits until the consumer has nothing pending and nothing unacknowledged. */
async function drained(ms = 15_000) {
  const jsm = await jetstreamManager(nc);
  const deadline = Date.now() + ms;
  for (;;) {
    const info = await jsm.consumers.info(streams.announce, consumers.announcer);
    if (info.num_pending === 0 && info.num_ack_pending === 0) return info;
    if (Date.now() > deadline)
      throw new Error(`consumer not drained: ${info.num_pending} pending, ${info.num_ack_pending} unacked`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function counter(
  registry: Registry,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return 0;
  const { values } = await metric.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((sum, v) => sum + v.value, 0);
}

beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  js = jetstream(nc);
  await ensureStreams(await jetstreamManager(nc));
  buckets = await openBuckets(nc);
});

afterAll(async () => {
  await stopAll();
  await nc?.close();
  await server?.stop();
});

describe('announcer', () => {
  it('two replicas apply 200 shuffled announcements from 10 nodes exactly once, to the right final state', async () => {
    const a = await startAnnouncer('ann-a');
    const b = await startAnnouncer('ann-b');

    // Watch the chunks bucket from here on, to check the order in which the index changes.
    const seen: KvWatchEntry[] = [];
    const watch = await buckets.chunks.watch({ key: '>' });
    void (async () => {
      for await (const e of watch) seen.push(e);
    })();

    // Each node announces two blobs (100 and 101), 20 announcements with seq 1..20, holding more chunks as
    // seq grows; odd nodes end by withdrawing blob 101. Every snapshot carries the hashes of what it holds.
    const all: Announcement[] = [];
    const expected = new Map<string, { seq: number; have: number[] } | null>();
    for (let k = 0; k < 10; k++) {
      const node = `node-${k}`;
      for (let seq = 1; seq <= 20; seq++) {
        const n = 100 + (seq % 2);
        const have = Array.from({ length: Math.min(8, 1 + Math.floor(seq / 3)) }, (_, i) => (i + k) % 8);
        const last = seq >= 19;
        if (last && n === 101 && k % 2 === 1) {
          all.push(withdraw(node, n, seq));
          expected.set(`${n}/${node}`, null);
        } else {
          all.push(chunks(node, n, seq, have, { chunks: 8, hashes: hashesFor(n, have) }));
          if (last) expected.set(`${n}/${node}`, { seq, have: [...have].sort((x, y) => x - y) });
        }
      }
    }
    // A fixed shuffle, so that older snapshots often arrive after newer ones and withdrawals early.
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let i = all.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [all[i], all[j]] = [all[j]!, all[i]!];
    }
    expect(all).toHaveLength(200);
    await Promise.all(all.map((x) => publish(x)));
    await drained();

    for (const [key, want] of expected) {
      const [n, node] = key.split('/') as [string, string];
      const entry = await buckets.chunks.get(chunkKeys.holder(hexOf(Number(n)), node));
      if (want === null) {
        expect(entry?.operation ?? 'none', key).not.toBe('PUT');
        continue;
      }
      const record = decode(holderRecord, entry!.value, key);
      expect({ key, seq: record.seq, have: Bitmap.fromBase64(8, record.have).indices() }).toEqual({
        key,
        ...want,
      });
    }
    for (const n of [100, 101]) {
      const entry = await buckets.chunks.get(chunkKeys.manifest(hexOf(n)));
      expect(decode(manifestRecord, entry!.value, 'manifest').hashes).toEqual(
        Object.values(hashesFor(n, [0, 1, 2, 3, 4, 5, 6, 7])),
      );
    }

    // Every announcement was applied (or found stale) by exactly one replica, and both took part.
    const handled = async (r: Registry) =>
      (await counter(r, 'shoal_announcer_announcements_applied_total')) +
      (await counter(r, 'shoal_announcer_announcements_stale_total'));
    const [byA, byB] = [await handled(a.registry), await handled(b.registry)];
    expect(byA + byB).toBe(200);
    expect(byA).toBeGreaterThan(0);
    expect(byB).toBeGreaterThan(0);

    // In the bucket's own order, no holder record ever shows a chunk whose hash the manifest lacks.
    await new Promise((r) => setTimeout(r, 200));
    watch.stop();
    const manifests = new Map<string, string[]>();
    let holdersChecked = 0;
    for (const e of seen) {
      const key = chunkKeys.parse(e.key);
      if (!key || e.operation !== 'PUT') continue;
      if (key.kind === 'manifest') {
        manifests.set(key.blobHex, decode(manifestRecord, e.value, 'manifest').hashes);
        continue;
      }
      const record = decode(holderRecord, e.value, 'holder');
      const hashes = manifests.get(key.blobHex) ?? [];
      for (const i of Bitmap.fromBase64(record.chunkCount, record.have).indices()) {
        expect(hashes[i], `${e.key} rev ${e.revision} chunk ${i}`).toBeTruthy();
      }
      holdersChecked++;
    }
    expect(holdersChecked).toBeGreaterThan(20);
  });

  it('terminates invalid payloads and spoofed senders, counting them, and keeps going', async () => {
    const [r] = running;
    await js.publish(subjects.announce('node-x'), 'not json');
    await js.publish(subjects.announce('node-x'), encode({ type: 'chunks', node: 'node-x' }));
    await publish(chunks('node-y', 200, 1, [0]), 'node-x');
    await publish(chunks('node-x', 200, 1, [0], { hashes: hashesFor(200, [0]) }));
    await drained();
    const rejected = async (labels: Record<string, string>) =>
      (
        await Promise.all(
          running.map((x) => counter(x.registry, 'shoal_announcer_announcements_rejected_total', labels)),
        )
      ).reduce((s, v) => s + v, 0);
    expect(await rejected({ type: 'unknown', reason: 'invalid' })).toBe(2);
    expect(await rejected({ type: 'chunks', reason: 'node_mismatch' })).toBe(1);
    expect(await buckets.chunks.get(chunkKeys.holder(hexOf(200), 'node-y'))).toBeNull();
    expect((await buckets.chunks.get(chunkKeys.holder(hexOf(200), 'node-x')))?.operation).toBe('PUT');
    expect(r?.announcer.health().ok).toBe(true);
  });

  it('hands an announcement back on a transient KV error and applies it when redelivered', async () => {
    await stopAll();
    let failures = 2;
    const flaky = await startAnnouncer('ann-flaky', (b) => ({
      ...b,
      chunks: new Proxy(b.chunks, {
        get(target, prop, receiver) {
          if (prop === 'put' && failures > 0) {
            return () => {
              failures--;
              return Promise.reject(new Error('simulated: JetStream publish timed out'));
            };
          }
          const value: unknown = Reflect.get(target, prop, receiver);
          return typeof value === 'function'
            ? (value as (...args: unknown[]) => unknown).bind(target)
            : value;
        },
      }),
    }));
    await publish(chunks('node-z', 300, 1, [0, 1], { hashes: hashesFor(300, [0, 1]) }));
    await drained();
    expect(failures).toBe(0);
    expect(
      await counter(flaky.registry, 'shoal_announcer_announcements_retried_total', { type: 'chunks' }),
    ).toBe(2);
    expect(
      await counter(flaky.registry, 'shoal_announcer_announcements_applied_total', { type: 'chunks' }),
    ).toBe(1);
    const holder = await buckets.chunks.get(chunkKeys.holder(hexOf(300), 'node-z'));
    expect(decode(holderRecord, holder!.value, 'holder').seq).toBe(1);
    expect(blobOf(300)).toBe(decode(holderRecord, holder!.value, 'holder').blob);
    const text = await flaky.registry.metrics();
    expect(text).toMatch(/shoal_announcer_apply_duration_seconds_count\{type="chunks"\} [1-9]/);
  });
  it('keeps an announcement it is still applying from being delivered again, however short consumer.ackWait', async () => {
    await stopAll();
    // Every write to the chunks bucket takes 2.5 s, two and a half times consumer.ackWait.
    const slow = await startAnnouncer(
      'ann-slow',
      (b) => ({
        ...b,
        chunks: new Proxy(b.chunks, {
          get(target, prop, receiver) {
            const value: unknown = Reflect.get(target, prop, receiver);
            if (typeof value !== 'function') return value;
            const fn = (value as (...args: unknown[]) => unknown).bind(target);
            return prop === 'put' || prop === 'create' || prop === 'update'
              ? async (...args: unknown[]) => {
                  await new Promise((r) => setTimeout(r, 2_500));
                  return await fn(...args);
                }
              : fn;
          },
        }),
      }),
      { ...settings, ackWait: 1_000 },
    );
    await publish(chunks('node-s', 400, 1, [0], { hashes: hashesFor(400, [0]) }));
    await drained();
    // Delivered once: applied once (without the heartbeat: six times, once a second while the first ran).
    expect(
      (await counter(slow.registry, 'shoal_announcer_announcements_applied_total')) +
        (await counter(slow.registry, 'shoal_announcer_announcements_stale_total')),
    ).toBe(1);
    await stopAll();
  });
});
