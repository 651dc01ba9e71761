/** The scheduler on a real nats-server: index rebuilt from KV, two replicas in the queue group, leases. */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  chunkKeys,
  connectMesh,
  createLogger,
  decode,
  encode,
  ensureStreams,
  jetStreamOf,
  MiB,
  openBuckets,
  scheduleReply,
  subjects,
  type MeshBuckets,
  type MeshConnection,
  type ScheduleReply,
  type ScheduleRequest,
  type ShoalEvent,
} from '@shoal/mesh';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createScheduler, type Scheduler } from '../src/app.js';
import type { SchedulerSettings } from '../src/config.js';
import { zoneGrantKey } from '../src/grants.js';
import { bucketKeys, chooseParent } from '@shoal/mesh';
import { digestOf, hex, holder, manifest, node } from './fixtures.js';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';

const settings: SchedulerSettings = {
  nodeTtl: 15_000,
  originPerChunk: 1,
  originPerZone: 1,
  originLease: 30_000,
  originMaxPerRequest: 0,
  originBudgetMax: 256,
  originBudgetMin: 4,
  originTarget: 5_000,
  originPerNode: 256,
  waitRetry: 250,
  parentSlots: 16,
  parentExpire: 10_000,
  inOrder: 2,
  alternates: 3,
};

let server: NatsServer;
let nc: NatsConnection;
let buckets: MeshBuckets;
const replicas: { scheduler: Scheduler; mesh: MeshConnection; registry: Registry }[] = [];

async function startReplica(
  instance: string,
  overrides: Partial<SchedulerSettings> = {},
  now?: () => number,
) {
  const mesh = connectMesh({ servers: [server.url], name: instance, log: createLogger('test', 'silent') });
  const registry = new Registry();
  const scheduler = createScheduler({
    mesh,
    log: createLogger(instance, 'silent'),
    registry,
    config: { ...settings, ...overrides },
    instance,
    ...(now ? { now } : {}),
  });
  const replica = { scheduler, mesh, registry };
  replicas.push(replica);
  await scheduler.start();
  return replica;
}

async function stopReplica(replica: (typeof replicas)[number]) {
  await replica.scheduler.stop();
  await replica.mesh.close();
  replicas.splice(replicas.indexOf(replica), 1);
}

async function ask(
  request: Omit<ScheduleRequest, 'v' | 'avoid'> & { avoid?: string[] },
): Promise<ScheduleReply> {
  const msg = await nc.request(subjects.schedule, encode({ v: 1, avoid: [], ...request }), {
    timeout: 3_000,
  });
  return decode(scheduleReply, msg.data, 'reply');
}

function ok(reply: ScheduleReply) {
  if (!reply.ok) throw new Error(`scheduler refused: ${reply.error.code} ${reply.error.message}`);
  return reply;
}

async function eventually<T>(probe: () => Promise<T>, accept: (value: T) => boolean, ms = 5_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last = await probe();
  while (!accept(last)) {
    if (Date.now() > deadline) return last;
    await new Promise((r) => setTimeout(r, 50));
    last = await probe();
  }
  return last;
}

const blobA = digestOf('a');
const sourceKind = (r: ScheduleReply) =>
  r.ok ? r.assignments.map((a) => (a.source.kind === 'peer' ? a.source.node : a.source.kind)) : [];

beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  await ensureStreams(await jetStreamOf(nc).jsm);
  buckets = await openBuckets(nc);
});

afterAll(async () => {
  for (const replica of [...replicas]) await stopReplica(replica);
  await nc?.close();
  await server?.stop();
});

describe('scheduler', () => {
  it('starts on empty buckets and answers at once', async () => {
    const replica = await startReplica('sched-empty');
    expect(replica.scheduler.serving()).toBe(true);
    expect(replica.scheduler.sizes()).toEqual({ blobs: 0, holders: 0, nodes: 0 });
    const reply = ok(
      await ask({ node: 'n1', blob: digestOf('e'), size: 2 * MiB, chunkSize: MiB, need: [0, 1] }),
    );
    expect(reply).toMatchObject({ chunkSize: MiB, scheduler: 'sched-empty' });
    expect(sourceKind(reply)).toEqual(['origin', 'origin']);
    await stopReplica(replica);
  });

  it('loads every current value before it starts answering', async () => {
    const now = Date.now();
    const writes: Promise<number>[] = [];
    for (const [id, zone, vswitch] of [
      ['n1', 'z1', 'v1'],
      ['n2', 'z1', 'v1'],
      ['n3', 'z1', 'v2'],
      ['n4', 'z2', 'v3'],
    ] as const) {
      writes.push(buckets.nodes.put(id, encode(node(id, zone, vswitch, now))));
    }
    writes.push(buckets.chunks.put(chunkKeys.manifest(hex('a')), encode(manifest(blobA, 4, [0, 1, 2]))));
    writes.push(buckets.chunks.put(chunkKeys.holder(hex('a'), 'n2'), encode(holder('n2', blobA, 4, 'all'))));
    writes.push(buckets.chunks.put(chunkKeys.holder(hex('a'), 'n3'), encode(holder('n3', blobA, 4, [0, 1]))));
    // Filler: 400 holders of other blobs, so that an index that answered early would be visibly short.
    for (let i = 0; i < 400; i++) {
      const b = i.toString(16).padStart(64, '0');
      writes.push(
        buckets.chunks.put(chunkKeys.holder(b, 'n4'), encode(holder('n4', `sha256:${b}`, 4, 'all'))),
      );
    }
    // A deleted key is delivered as a deletion and must not count.
    writes.push(
      buckets.chunks.put(chunkKeys.holder(hex('f'), 'n1'), encode(holder('n1', digestOf('f'), 4, 'all'))),
    );
    await Promise.all(writes);
    await buckets.chunks.delete(chunkKeys.holder(hex('f'), 'n1'));

    const a = await startReplica('sched-a');
    expect(a.scheduler.sizes()).toEqual({ blobs: 1, holders: 402, nodes: 4 });
    const b = await startReplica('sched-b');
    expect(b.scheduler.sizes()).toEqual({ blobs: 1, holders: 402, nodes: 4 });
  });

  it('plans from the index: same-vswitch parent first, unknown hash from the origin', async () => {
    const reply = ok(
      await ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: 2 * MiB, need: [0, 1, 2, 3] }),
    );
    // The manifest's chunk size wins over the one the node proposed.
    expect(reply.chunkSize).toBe(MiB);
    expect(sourceKind(reply)).toEqual(['n2', 'n2', 'n2', 'origin']);
    expect(reply.assignments[0]?.alternates.map((a) => a.node)).toEqual(['n3']);
    expect(reply.assignments[0]?.sha256).toBe(manifest(blobA, 4).hashes[0]);
    expect(reply.assignments[3]?.sha256).toBeNull();

    const avoiding = ok(
      await ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [0, 2], avoid: ['n2'] }),
    );
    // Chunk 3's lease is held by n1 now; chunk 2 is held only by the avoided n2, so it goes to the origin.
    expect(sourceKind(avoiding)).toEqual(['n3', 'origin']);
  });

  it('answers from both replicas of the queue group', async () => {
    const names = new Set<string>();
    for (let i = 0; i < 30; i++) {
      names.add(
        ok(await ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [0] })).scheduler,
      );
    }
    expect([...names].sort()).toEqual(['sched-a', 'sched-b']);
  });

  it('answers malformed requests with SHOAL_ERR_BAD_MESSAGE and keeps serving', async () => {
    const notJson = await nc.request(subjects.schedule, 'not json', { timeout: 3_000 });
    expect(decode(scheduleReply, notJson.data, 'reply')).toMatchObject({
      ok: false,
      error: { code: 'SHOAL_ERR_BAD_MESSAGE', message: expect.stringMatching(/not JSON/) as unknown },
    });
    const badField = await nc.request(
      subjects.schedule,
      encode({ v: 1, node: 'n1', blob: 'sha256:zz', size: 1, chunkSize: MiB, need: [] }),
      {
        timeout: 3_000,
      },
    );
    expect(decode(scheduleReply, badField.data, 'reply')).toMatchObject({
      ok: false,
      error: { message: expect.stringMatching(/blob/) as unknown },
    });
    const outOfRange = await ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [9] });
    expect(outOfRange).toMatchObject({ ok: false, error: { code: 'SHOAL_ERR_BAD_MESSAGE' } });
    // Fire-and-forget garbage (no reply subject) must not hurt either.
    nc.publish(subjects.schedule, '{"v":2}');
    expect(
      ok(await ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [0] })).assignments,
    ).toHaveLength(1);
  });

  it('follows live changes: a new holder becomes a parent, a deleted node stops being one', async () => {
    await buckets.nodes.put('n5', encode(node('n5', 'z1', 'v1')));
    await buckets.chunks.put(chunkKeys.holder(hex('a'), 'n5'), encode(holder('n5', blobA, 4, [2])));
    const withN5 = await eventually(
      () => ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [2], avoid: ['n2'] }),
      (r) => sourceKind(r)[0] === 'n5',
    );
    expect(sourceKind(withN5)).toEqual(['n5']);
    // Both replicas must see it, not just the one that happened to answer.
    for (const r of replicas)
      expect(
        await eventually(
          async () => r.scheduler.sizes().nodes,
          (n) => n === 5,
        ),
      ).toBe(5);

    await buckets.nodes.delete('n2');
    const without = await eventually(
      () => ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [1] }),
      (r) => sourceKind(r)[0] === 'n3',
    );
    expect(sourceKind(without)).toEqual(['n3']);
    await buckets.nodes.put('n2', encode(node('n2', 'z1', 'v1')));
    for (const r of replicas)
      expect(
        await eventually(
          async () => r.scheduler.sizes().nodes,
          (n) => n === 5,
        ),
      ).toBe(5);
  });

  it('rebuilds its index after a restart and answers correctly', async () => {
    const [a, b] = replicas;
    await stopReplica(a!);
    // Written while the replica is down: the rebuilt index must include it.
    await buckets.chunks.put(chunkKeys.holder(hex('a'), 'n4'), encode(holder('n4', blobA, 4, [3])));
    await buckets.chunks.put(chunkKeys.manifest(hex('a')), encode(manifest(blobA, 4)));
    const restarted = await startReplica('sched-a');
    await stopReplica(b!);
    const reply = ok(await ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [0, 3] }));
    expect(reply.scheduler).toBe('sched-a');
    expect(sourceKind(reply)).toEqual(['n2', 'n2']);
    const viaOtherZone = ok(
      await ask({ node: 'n1', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [3], avoid: ['n2'] }),
    );
    expect(sourceKind(viaOtherZone)).toEqual(['n4']);
    expect(restarted.scheduler.sizes()).toEqual({ blobs: 1, holders: 404, nodes: 5 });
    await startReplica('sched-b');
  });

  it('grants one origin lease for a chunk that five nodes ask for at once', async () => {
    const blob = digestOf('c');
    const replies = await Promise.all(
      ['n1', 'n2', 'n3', 'n4', 'n5'].map((n) => ask({ node: n, blob, size: MiB, chunkSize: MiB, need: [0] })),
    );
    const kinds = replies.map((r) => sourceKind(r)[0]);
    expect(kinds.filter((k) => k === 'origin')).toHaveLength(1);
    expect(kinds.filter((k) => k === 'wait')).toHaveLength(4);
    expect(new Set(replies.map((r) => ok(r).scheduler)).size).toBeGreaterThanOrEqual(1);
    const waiting = replies.find((r) => sourceKind(r)[0] === 'wait');
    // Queued for the lease holder's fetch, not left waiting for a peer.
    expect(ok(waiting!).assignments[0]?.source).toEqual({ kind: 'wait', retryMs: 250, queue: 'origin' });
  });

  it('releases the origin and zone leases once their holder announces the chunk', async () => {
    const blob = digestOf('d');
    const first = ok(await ask({ node: 'n1', blob, size: MiB, chunkSize: MiB, need: [0] }));
    expect(sourceKind(first)).toEqual(['origin']);
    // n1 is in zone z1, so it needed z1's zone lease as well as the origin lease.
    const keys = [`${hex('d')}.0.0`, zoneGrantKey(hex('d'), 0, 'z1', 0)];
    for (const key of keys) expect((await buckets.grants.get(key))?.operation).toBe('PUT');
    // The leases were granted by one replica; only that one remembers them, and it deletes the keys.
    await buckets.chunks.put(chunkKeys.holder(hex('d'), 'n1'), encode(holder('n1', blob, 1, 'all')));
    for (const key of keys) {
      const gone = await eventually(
        async () => (await buckets.grants.get(key))?.operation ?? 'none',
        (op) => op !== 'PUT',
      );
      expect(gone).not.toBe('PUT');
    }
  });

  it('frees a parent as soon as its child asks again without the chunk among those it is fetching', async () => {
    for (const replica of [...replicas]) await stopReplica(replica);
    const replica = await startReplica('sched-slots', { parentSlots: 1 });
    const blob = digestOf('9');
    const now = Date.now();
    await Promise.all([
      ...['k1', 'k2', 'k3'].map((id) => buckets.nodes.put(id, encode(node(id, 'z1', 'v1', now)))),
      buckets.chunks.put(chunkKeys.manifest(hex('9')), encode(manifest(blob, 4))),
      buckets.chunks.put(chunkKeys.holder(hex('9'), 'k2'), encode(holder('k2', blob, 4, 'all'))),
    ]);
    const request = { blob, size: 4 * MiB, chunkSize: MiB, max: 1 };
    const first = ok(
      await eventually(
        () => ask({ ...request, node: 'k1', need: [0, 1, 2, 3], fetching: [] }),
        (r) => sourceKind(r)[0] === 'k2',
      ),
    );
    expect(sourceKind(first)).toEqual(['k2']);
    const index = first.assignments[0]!.index;
    const rest = [0, 1, 2, 3].filter((i) => i !== index);
    // k2's one slot is taken: k3, receiving chunk 3 from elsewhere, waits, and so does k1 while it is
    // still fetching the chunk.
    expect(sourceKind(ok(await ask({ ...request, node: 'k3', need: [0, 1, 2], fetching: [3] })))).toEqual([
      'wait',
    ]);
    expect(sourceKind(ok(await ask({ ...request, node: 'k1', need: rest, fetching: [index] })))).toEqual([
      'wait',
    ]);
    // k1 asks again without it: the transfer is over, so k2 is free again before any announcement.
    expect(sourceKind(ok(await ask({ ...request, node: 'k1', need: rest, fetching: [] })))).toEqual(['k2']);
    expect(sourceKind(ok(await ask({ ...request, node: 'k3', need: [0, 1, 2], fetching: [3] })))).toEqual([
      'wait',
    ]);
    await stopReplica(replica);
    await startReplica('sched-after-slots');
  });

  it('holds the origin leases of the mesh to its budget, and frees one as its chunk is announced', async () => {
    for (const replica of [...replicas]) await stopReplica(replica);
    // Leases left by earlier tests would count against the budget.
    for (const key of await bucketKeys(buckets.grants)) await buckets.grants.purge(key);
    const replica = await startReplica('sched-budget', { originBudgetMax: 3, originBudgetMin: 1 });
    const blob = digestOf('b');
    const request = { blob, size: 6 * MiB, chunkSize: MiB };
    const first = ok(await ask({ ...request, node: 'b1', need: [0, 1, 2, 3, 4] }));
    expect(sourceKind(first)).toEqual(['origin', 'origin', 'origin', 'wait', 'wait']);
    // The budget is spent, for every node and blob.
    expect(sourceKind(ok(await ask({ ...request, node: 'b2', need: [5] })))).toEqual(['wait']);
    expect(
      sourceKind(ok(await ask({ node: 'b2', blob: digestOf('e'), size: MiB, chunkSize: MiB, need: [0] }))),
    ).toEqual(['wait']);
    // b1 announces chunk 0, in time: its lease is released and another origin fetch may start.
    await buckets.chunks.put(chunkKeys.holder(hex('b'), 'b1'), encode(holder('b1', blob, 6, [0])));
    const next = await eventually(
      async () => sourceKind(ok(await ask({ ...request, node: 'b2', need: [5] }))),
      (kinds) => kinds[0] === 'origin',
    );
    expect(next).toEqual(['origin']);
    const text = await replica.registry.metrics();
    expect(text).toMatch(/shoal_scheduler_origin_budget 3/);
    // Counted after the last decision: b1's two leases and b2's new one.
    expect(text).toMatch(/shoal_scheduler_origin_leases 3/);
    await stopReplica(replica);
    await startReplica('sched-after-budget');
  });

  it("shares the origin budget among the nodes waiting for it, and widens a node's share as its chunks arrive in time", async () => {
    for (const replica of [...replicas]) await stopReplica(replica);
    for (const key of await bucketKeys(buckets.grants)) await buckets.grants.purge(key);
    const targetMs = 5_000;
    // The scheduler's clock, moved on past origin.target below rather than slept through.
    let skew = 0;
    const replica = await startReplica(
      'sched-shares',
      { originBudgetMax: 6, originBudgetMin: 1, originPerNode: 2, originTarget: targetMs },
      () => Date.now() + skew,
    );
    const blob = digestOf('5');
    const request = { blob, size: 12 * MiB, chunkSize: MiB };
    const kinds = (reply: ScheduleReply) => sourceKind(ok(reply));
    const announce = async (node: string, have: number[]) => {
      await buckets.chunks.put(chunkKeys.holder(hex('5'), node), encode(holder(node, blob, 12, have)));
      // Released once the replica has seen the announcement.
      for (const index of have) {
        const key = `${hex('5')}.${index}.0`;
        await eventually(
          async () => (await buckets.grants.get(key))?.operation ?? 'none',
          (op) => op !== 'PUT',
        );
      }
    };
    // s1 may hold two origin leases to begin with, however large the budget; the rest of its chunks are
    // queued for the origin.
    const first = ok(await ask({ ...request, node: 's1', need: [0, 1, 2, 3, 4, 5] }));
    expect(sourceKind(first)).toEqual(['origin', 'origin', 'wait', 'wait', 'wait', 'wait']);
    expect(first.assignments[2]!.source).toMatchObject({ kind: 'wait', queue: 'origin' });
    expect(kinds(await ask({ ...request, node: 's2', need: [6, 7] }))).toEqual(['origin', 'origin']);
    // s3 wants only what s2 is fetching: it is queued for s2's fetches, but needs no share of its own.
    const behind = ok(await ask({ ...request, node: 's3', need: [6, 7] }));
    expect(behind.assignments.map((a) => a.source)).toEqual([
      { kind: 'wait', retryMs: 250, queue: 'origin' },
      { kind: 'wait', retryMs: 250, queue: 'origin' },
    ]);
    // s1's two chunks arrive in time: its own limit is now four, but s1 (waiting) and s2 (holding) share
    // the budget of six: three each.
    await announce('s1', [0, 1]);
    expect(kinds(await ask({ ...request, node: 's1', need: [2, 3, 4, 5] }))).toEqual([
      'origin',
      'origin',
      'origin',
      'wait',
    ]);
    expect(await replica.registry.metrics()).toMatch(/shoal_scheduler_origin_contenders 2\n/);
    await announce('s2', [6, 7]);
    await announce('s1', [0, 1, 2, 3, 4]);
    // Once no one else has waited for the origin for origin.target, s1 alone may take the whole budget.
    skew += targetMs + 100;
    expect(kinds(await ask({ ...request, node: 's1', need: [5, 8, 9, 10, 11] }))).toEqual([
      'origin',
      'origin',
      'origin',
      'origin',
      'origin',
    ]);
    expect(await replica.registry.metrics()).toMatch(/shoal_scheduler_origin_contenders 1\n/);
    await stopReplica(replica);
    await startReplica('sched-after-shares');
  });

  it('keeps the origin lease of a node still fetching the chunk past origin.lease, on either replica', async () => {
    for (const replica of [...replicas]) await stopReplica(replica);
    const leaseMs = 2_000;
    const pair = [
      await startReplica('sched-renew-1', { originLease: leaseMs }),
      await startReplica('sched-renew-2', { originLease: leaseMs }),
    ];
    const blob = digestOf('8');
    const request = { blob, size: MiB, chunkSize: MiB };
    expect(sourceKind(ok(await ask({ ...request, node: 'w1', need: [0] })))).toEqual(['origin']);
    // w1 is still fetching chunk 0 (a slow registry) and says so every 150 ms or so, needing nothing
    // else; the requests land on either replica. For two and a half leases, no one else is sent to the
    // registry.
    const began = Date.now();
    while (Date.now() - began < 2.5 * leaseMs) {
      await ask({ ...request, node: 'w1', need: [], fetching: [0] });
      expect(sourceKind(ok(await ask({ ...request, node: 'w2', need: [0] })))).toEqual(['wait']);
      await new Promise((r) => setTimeout(r, 150));
    }
    let renewals = 0;
    for (const { registry } of pair)
      renewals += Number(
        /shoal_scheduler_lease_renewals_total (\d+)/.exec(await registry.metrics())?.[1] ?? 0,
      );
    // Once less than two thirds of the lease is left: at least once per lease.
    expect(renewals).toBeGreaterThanOrEqual(2);
    // Once w1 stops asking, the lease runs out and the chunk goes to another node.
    const next = await eventually(
      async () => sourceKind(ok(await ask({ ...request, node: 'w2', need: [0] }))),
      (kinds) => kinds[0] === 'origin',
      2 * leaseMs,
    );
    expect(next).toEqual(['origin']);
    for (const replica of pair) await stopReplica(replica);
    await startReplica('sched-after-renew');
  });

  it('publishes a schedule_decided event per request and counts requests in its metrics', async () => {
    const sub = nc.subscribe(subjects.eventsOfType('schedule_decided'));
    await nc.flush();
    const reply = ok(await ask({ node: 'n3', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [0, 1] }));
    const events: unknown[] = [];
    for await (const msg of sub) {
      events.push(JSON.parse(new TextDecoder().decode(msg.data)));
      break;
    }
    expect(events[0]).toMatchObject({
      type: 'schedule_decided',
      scheduler: reply.scheduler,
      origin: reply.scheduler,
      node: 'n3',
      blob: blobA,
      peer: 2,
      wait: 0,
    });
    const text = (await Promise.all(replicas.map((r) => r.registry.metrics()))).join('\n');
    expect(text).toMatch(/shoal_scheduler_requests_total\{outcome="ok"\} [1-9]/);
    expect(text).toMatch(/shoal_scheduler_assignments_total\{kind="peer"\} [1-9]/);
    expect(text).toMatch(/shoal_scheduler_index_holders \d+/);
    expect(text).toMatch(/shoal_scheduler_decision_duration_seconds_count [1-9]/);
  });

  it('publishes a chunks_assigned event per decision with the candidates each parent was ranked among', async () => {
    const sub = nc.subscribe(subjects.eventsOfType('chunks_assigned'));
    await nc.flush();
    const reply = ok(await ask({ node: 'n3', blob: blobA, size: 4 * MiB, chunkSize: MiB, need: [0, 1] }));
    let event: (ShoalEvent & { type: 'chunks_assigned' }) | undefined;
    for await (const msg of sub) {
      event = msg.json();
      break;
    }
    expect(event).toMatchObject({
      type: 'chunks_assigned',
      scheduler: reply.scheduler,
      node: 'n3',
      blob: blobA,
      size: 4 * MiB,
      chunkSize: MiB,
    });
    expect(event?.truncated).toBeUndefined();
    expect(event?.assignments.map((a) => a.index)).toEqual([0, 1]);
    reply.assignments.forEach((assignment, i) => {
      const record = event?.assignments[i];
      expect(assignment.source.kind).toBe('peer');
      if (assignment.source.kind !== 'peer') return;
      expect(record).toMatchObject({ source: 'peer', peer: assignment.source.node });
      expect(chooseParent(record?.candidates ?? [])?.parent.node).toBe(assignment.source.node);
    });
  });

  it('takes a node others cannot connect to and that missed its heartbeats for dead: leases free, no parent', async () => {
    // One replica, so that every report reaches the replica that decides.
    for (const replica of [...replicas]) await stopReplica(replica);
    const replica = await startReplica('sched-suspects');
    const now = Date.now();
    // 'dead' heartbeats every 100 ms, so it is quiet 150 ms after it was last heard from; the others
    // every hour, so they never are during the test.
    await buckets.nodes.put('dead', encode({ ...node('dead', 'z1', 'v1', now), heartbeatMs: 100 }));
    for (const id of ['alive', 'r1', 'r2', 'r3'])
      await buckets.nodes.put(id, encode({ ...node(id, 'z1', 'v1', now), heartbeatMs: 3_600_000 }));
    const blob = digestOf('f');
    const size = 2 * MiB;
    // A second blob that only 'dead' holds.
    const held = digestOf('7');
    await buckets.chunks.put(chunkKeys.manifest(hex('7')), encode(manifest(held, 2)));
    await buckets.chunks.put(chunkKeys.holder(hex('7'), 'dead'), encode(holder('dead', held, 2, 'all')));
    await eventually(
      async () => replica.scheduler.sizes(),
      (sizes) => sizes.nodes >= 5 && sizes.holders >= 1,
    );
    const fromHolder = async (index: number) =>
      sourceKind(ok(await ask({ node: 'r3', blob: held, size, chunkSize: MiB, need: [index] })));
    const events = nc.subscribe(subjects.eventsOfType('node_suspected'));
    await nc.flush();
    const origin = (node: string, index: number, extra = {}) =>
      ask({ node, blob, size, chunkSize: MiB, need: [index], ...extra });
    expect(sourceKind(ok(await origin('dead', 0)))).toEqual(['origin']);
    expect(sourceKind(ok(await origin('alive', 1)))).toEqual(['origin']);
    // Both hold their chunk's leases for 30 s; a report about the live one changes nothing.
    expect(sourceKind(await origin('r1', 1, { avoid: ['alive'], unreachable: ['alive'] }))).toEqual(['wait']);
    expect(sourceKind(await origin('r1', 0))).toEqual(['wait']);
    expect(await fromHolder(0)).toEqual(['dead']);
    // Reported, and quiet since its own request above: taken for dead. Its lease is free, and it is no
    // parent for anyone.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(sourceKind(await origin('r2', 0, { avoid: ['dead'], unreachable: ['dead'] }))).toEqual(['origin']);
    let event: (ShoalEvent & { type: 'node_suspected' }) | undefined;
    for await (const msg of events) {
      event = msg.json();
      break;
    }
    expect(event).toMatchObject({ type: 'node_suspected', node: 'dead', reporters: ['r2'] });
    const metrics = await replica.registry.metrics();
    expect(metrics).toMatch(/shoal_scheduler_node_suspicions_total 1\n/);
    expect(metrics).toMatch(/shoal_scheduler_nodes_suspected 1\n/);
    expect(await fromHolder(1)).toEqual(['origin']);

    // Heard from again: counted on again.
    await buckets.nodes.put(
      'dead',
      encode({ ...node('dead', 'z1', 'v1', Date.now()), heartbeatMs: 3_600_000 }),
    );
    const text = await eventually(
      async () => await replica.registry.metrics(),
      (m) => /shoal_scheduler_nodes_suspected 0\n/.test(m),
    );
    expect(text).toMatch(/shoal_scheduler_nodes_suspected 0\n/);
    // Chunk 0 of the held blob: r3 already fetches chunk 1 from the origin.
    expect(await fromHolder(0)).toEqual(['dead']);
    events.unsubscribe();
  });
});
