import { MiB, isShoalError, type Assignment, type ScheduleRequest } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { memoryGrantStore, type GrantStore } from '../src/grants.js';
import { applyIndexEvent, createIndexState, type IndexState } from '../src/index-state.js';
import {
  decayingLoad,
  inflightLoad,
  planRequest,
  topologyTier,
  type LoadTracker,
  type PlanOptions,
} from '../src/planner.js';
import { digestOf, hex, holder, manifest, node } from './fixtures.js';

const NOW = 1_700_000_000_000;
const blob = digestOf('a');
const options: PlanOptions = { nodeTtlMs: 15_000, retryMs: 250, maxAlternates: 3, originMaxPerRequest: 0 };

function stateWith(setup: (s: IndexState) => void): IndexState {
  const state = createIndexState();
  setup(state);
  return state;
}

function addNode(s: IndexState, id: string, zone: string, vswitch: string, seenAt = NOW) {
  applyIndexEvent(s, { type: 'node_put', node: node(id, zone, vswitch, seenAt) });
}

function request(nodeId: string, need: number[], extra: Partial<ScheduleRequest> = {}): ScheduleRequest {
  return { v: 1, node: nodeId, blob, size: 8 * MiB, chunkSize: MiB, need, avoid: [], ...extra };
}

const grants = (perChunk = 1, leaseMs = 30_000) => memoryGrantStore({ perChunk, leaseMs });
const sourceOf = (a: Assignment | undefined) => a?.source;
const peerOf = (a: Assignment | undefined) => (a?.source.kind === 'peer' ? a.source.node : a?.source.kind);

/** Requester r in zone z1 / vswitch v1; parents on the same vswitch, same zone, and another zone. */
function topology(): IndexState {
  return stateWith((s) => {
    addNode(s, 'r', 'z1', 'v1');
    addNode(s, 'same-vsw', 'z1', 'v1');
    addNode(s, 'same-zone', 'z1', 'v2');
    addNode(s, 'other', 'z2', 'v3');
    applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8) });
    for (const id of ['same-vsw', 'same-zone', 'other']) {
      applyIndexEvent(s, { type: 'holder_put', blobHex: hex('a'), holder: holder(id, blob, 8, 'all') });
    }
  });
}

describe('topologyTier', () => {
  it('ranks same vswitch, then same zone, then anything; unknown requesters rank everyone alike', () => {
    const r = node('r', 'z1', 'v1');
    expect(topologyTier(r, node('x', 'z1', 'v1'))).toBe(0);
    expect(topologyTier(r, node('x', 'z1', 'v2'))).toBe(1);
    expect(topologyTier(r, node('x', 'z2', 'v1'))).toBe(2);
    expect(topologyTier(undefined, node('x', 'z1', 'v1'))).toBe(2);
    // Empty labels mean "unknown", which must not count as a match.
    expect(topologyTier(node('r', '', ''), node('x', '', ''))).toBe(2);
  });
});

describe('planRequest', () => {
  it('prefers a parent on the same vswitch, then the same zone, then any, with the others as alternates', async () => {
    const state = topology();
    const load = decayingLoad(5_000);
    const plan = await planRequest(state, request('r', [0]), grants(), load, options, NOW);
    expect(plan.chunkSize).toBe(MiB);
    expect(plan.assignments).toHaveLength(1);
    const [a] = plan.assignments;
    expect(a?.source).toEqual({
      kind: 'peer',
      node: 'same-vsw',
      url: 'http://same-vsw.test:65001',
      locality: 'vswitch',
    });
    // Each parent says where it stands, so the agent can count bytes by locality.
    expect(a?.alternates.map((x) => [x.node, x.locality])).toEqual([
      ['same-zone', 'zone'],
      ['other', 'cross_zone'],
    ]);
    expect(a?.sha256).toBe(manifest(blob, 8).hashes[0]);

    applyIndexEvent(state, { type: 'holder_deleted', blobHex: hex('a'), node: 'same-vsw' });
    const second = await planRequest(state, request('r', [0]), grants(), load, options, NOW);
    expect(peerOf(second.assignments[0])).toBe('same-zone');

    applyIndexEvent(state, { type: 'holder_deleted', blobHex: hex('a'), node: 'same-zone' });
    const third = await planRequest(state, request('r', [0]), grants(), load, options, NOW);
    expect(peerOf(third.assignments[0])).toBe('other');
  });

  it('stays on the preferred tier even when that parent is loaded', async () => {
    const state = topology();
    const plan = await planRequest(
      state,
      request('r', [0, 1, 2, 3, 4, 5, 6, 7]),
      grants(),
      decayingLoad(5_000),
      options,
      NOW,
    );
    expect(plan.assignments.map(peerOf)).toEqual(Array(8).fill('same-vsw'));
  });

  it('spreads chunks over equally placed parents by recent load, within and across requests', async () => {
    const state = stateWith((s) => {
      for (const id of ['r1', 'r2', 'p1', 'p2', 'p3', 'p4']) addNode(s, id, 'z1', 'v1');
      applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8) });
      for (const id of ['p1', 'p2', 'p3', 'p4']) {
        applyIndexEvent(s, { type: 'holder_put', blobHex: hex('a'), holder: holder(id, blob, 8, 'all') });
      }
    });
    const load = decayingLoad(5_000);
    const first = await planRequest(
      state,
      request('r1', [0, 1, 2, 3, 4, 5, 6, 7]),
      grants(),
      load,
      options,
      NOW,
    );
    const counts = new Map<string, number>();
    for (const a of first.assignments)
      counts.set(String(peerOf(a)), (counts.get(String(peerOf(a))) ?? 0) + 1);
    expect([...counts.values()]).toEqual([2, 2, 2, 2]);

    // The counters carry over: a second request's four chunks again land on four different parents.
    const second = await planRequest(state, request('r2', [0, 1, 2, 3]), grants(), load, options, NOW + 10);
    expect(new Set(second.assignments.map(peerOf)).size).toBe(4);
    expect(second.counts).toEqual({ peer: 4, origin: 0, wait: 0 });
  });

  it('forgets old load: after many half-lives a busy parent is as good as an idle one', () => {
    const load = decayingLoad(1_000);
    for (let i = 0; i < 100; i++) load.add('busy', NOW);
    expect(load.load('busy', NOW)).toBeCloseTo(100);
    expect(load.load('busy', NOW + 1_000)).toBeCloseTo(50);
    expect(load.load('busy', NOW + 30_000)).toBeLessThan(0.001);
  });

  it('never offers nodes on the avoid list, the requester itself, or nodes whose heartbeat is stale', async () => {
    const state = topology();
    addNode(state, 'stale', 'z1', 'v1', NOW - 16_000);
    applyIndexEvent(state, {
      type: 'holder_put',
      blobHex: hex('a'),
      holder: holder('stale', blob, 8, 'all'),
    });
    applyIndexEvent(state, { type: 'holder_put', blobHex: hex('a'), holder: holder('r', blob, 8, 'all') });
    applyIndexEvent(state, {
      type: 'holder_put',
      blobHex: hex('a'),
      holder: holder('unknown-node', blob, 8, 'all'),
    });
    const plan = await planRequest(
      state,
      request('r', [0], { avoid: ['same-vsw'] }),
      grants(),
      decayingLoad(5_000),
      options,
      NOW,
    );
    expect(peerOf(plan.assignments[0])).toBe('same-zone');
    expect(plan.assignments[0]?.alternates.map((a) => a.node)).toEqual(['other']);

    const all = await planRequest(
      state,
      request('r', [0], { avoid: ['same-vsw', 'same-zone', 'other'] }),
      grants(),
      decayingLoad(5_000),
      options,
      NOW,
    );
    expect(sourceOf(all.assignments[0])).toEqual({ kind: 'origin', leaseMs: 30_000 });
  });

  it('offers a suspected node to nobody, and sends a chunk only it holds to the registry', async () => {
    const state = topology();
    const suspected = new Set(['same-vsw']);
    const withSuspects: PlanOptions = { ...options, suspected: (id) => suspected.has(id) };
    const plan = await planRequest(
      state,
      request('r', [0]),
      grants(),
      decayingLoad(5_000),
      withSuspects,
      NOW,
    );
    expect(peerOf(plan.assignments[0])).toBe('same-zone');
    expect(plan.assignments[0]?.alternates.map((a) => a.node)).toEqual(['other']);

    suspected.add('same-zone').add('other');
    const none = await planRequest(
      state,
      request('r', [0]),
      grants(),
      decayingLoad(5_000),
      withSuspects,
      NOW,
    );
    expect(sourceOf(none.assignments[0])).toEqual({ kind: 'origin', leaseMs: 30_000 });
  });

  it('does not serve a chunk from a peer while its hash is unknown', async () => {
    const state = stateWith((s) => {
      addNode(s, 'r', 'z1', 'v1');
      addNode(s, 'p', 'z1', 'v1');
      applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8, [0]) });
      applyIndexEvent(s, { type: 'holder_put', blobHex: hex('a'), holder: holder('p', blob, 8, [0, 1]) });
    });
    const plan = await planRequest(state, request('r', [0, 1]), grants(), decayingLoad(5_000), options, NOW);
    expect(peerOf(plan.assignments[0])).toBe('p');
    expect(plan.assignments[1]).toEqual({
      index: 1,
      sha256: null,
      source: { kind: 'origin', leaseMs: 30_000 },
      alternates: [],
    });

    // Without any manifest, nothing comes from peers and the request's chunk size is used.
    applyIndexEvent(state, { type: 'manifest_deleted', blobHex: hex('a') });
    const bare = await planRequest(
      state,
      request('r', [0], { chunkSize: 2 * MiB }),
      grants(),
      decayingLoad(5_000),
      options,
      NOW,
    );
    expect(bare.chunkSize).toBe(2 * MiB);
    expect(sourceOf(bare.assignments[0])?.kind).toBe('origin');
  });

  it('tells a node to wait while another holds the only origin lease, until the lease expires', async () => {
    const state = createIndexState();
    const store = grants(1, 30_000);
    const load = decayingLoad(5_000);
    const first = await planRequest(state, request('n1', [0, 1]), store, load, options, NOW);
    expect(first.counts).toEqual({ peer: 0, origin: 2, wait: 0 });
    // n1 is fetching both: n2 is queued for those fetches, not left waiting for a peer.
    const second = await planRequest(state, request('n2', [0, 1]), store, load, options, NOW + 1_000);
    expect(second.assignments.map(sourceOf)).toEqual([
      { kind: 'wait', retryMs: 250, queue: 'origin' },
      { kind: 'wait', retryMs: 250, queue: 'origin' },
    ]);
    // The lease holder asking again renews its lease rather than being told to wait.
    const renewed = await planRequest(state, request('n1', [0]), store, load, options, NOW + 2_000);
    expect(sourceOf(renewed.assignments[0])?.kind).toBe('origin');
    // Chunk 1 was not renewed: once its lease runs out, another node may take it; chunk 0 is still held.
    const later = await planRequest(state, request('n2', [0, 1]), store, load, options, NOW + 31_000);
    expect(later.assignments.map((a) => a.source.kind)).toEqual(['wait', 'origin']);
  });

  it('grants as many origin leases per chunk as perChunk allows', async () => {
    const store = grants(2);
    const kinds = [];
    for (const n of ['n1', 'n2', 'n3']) {
      const plan = await planRequest(
        createIndexState(),
        request(n, [5]),
        store,
        decayingLoad(5_000),
        options,
        NOW,
      );
      kinds.push(plan.assignments[0]?.source.kind);
    }
    expect(kinds).toEqual(['origin', 'origin', 'wait']);
  });

  it('limits origin grants per request when configured, leaving the rest for other nodes', async () => {
    const store = grants();
    const limited = { ...options, originMaxPerRequest: 3, grantConcurrency: 2 };
    const first = await planRequest(
      createIndexState(),
      request('n1', [0, 1, 2, 3, 4, 5, 6, 7]),
      store,
      decayingLoad(1),
      limited,
      NOW,
    );
    expect(first.assignments.map((a) => a.source.kind)).toEqual([
      'origin',
      'origin',
      'origin',
      'wait',
      'wait',
      'wait',
      'wait',
      'wait',
    ]);
    const second = await planRequest(
      createIndexState(),
      request('n2', [0, 1, 2, 3, 4, 5, 6, 7]),
      store,
      decayingLoad(1),
      limited,
      NOW,
    );
    expect(second.assignments.map((a) => a.source.kind)).toEqual([
      'wait',
      'wait',
      'wait',
      'origin',
      'origin',
      'origin',
      'wait',
      'wait',
    ]);
    expect(second.grants.map((g) => g.index)).toEqual([3, 4, 5]);
    // Chunks 0–2 are being fetched by n1 under its leases: n2 is queued for those fetches. Chunks 6 and 7
    // are held back by the per-request limit, not by the registry: they are not queued for the origin.
    expect(
      second.assignments.map((a) => (a.source.kind === 'wait' ? (a.source.queue ?? 'peer') : '-')),
    ).toEqual(['origin', 'origin', 'origin', '-', '-', '-', 'peer', 'peer']);
  });

  for (const max of [undefined, 8]) {
    it(`grants no more origin leases than the mesh's origin budget leaves (max ${max ?? 'unset'})`, async () => {
      const store = grants();
      const budgeted: PlanOptions = { ...options, originBudget: () => 4 };
      const ask = (node: string) =>
        planRequest(
          createIndexState(),
          request(node, [0, 1, 2, 3, 4, 5, 6, 7], max ? { max } : {}),
          store,
          decayingLoad(1),
          budgeted,
          NOW,
        );
      const kinds = (plan: Awaited<ReturnType<typeof ask>>) =>
        plan.assignments.filter((a) => a.source.kind === 'origin').map((a) => a.index);
      const first = await ask('n1');
      expect(kinds(first)).toHaveLength(4);
      // The budget is spent: the next node waits, whatever chunks it needs, and is told it is queued
      // for the origin rather than left waiting for a peer.
      const queued = await ask('n2');
      expect(kinds(queued)).toEqual([]);
      expect(queued.assignments.map((a) => a.source)).toContainEqual({
        kind: 'wait',
        retryMs: 250,
        queue: 'origin',
      });
      // One lease given back frees one grant.
      await store.release(first.grants[0]!);
      expect(kinds(await ask('n3'))).toEqual([first.grants[0]!.index]);
    });
  }

  for (const max of [undefined, 8]) {
    it(`grants a node no more origin leases than its share, and queues the rest for the origin (max ${max ?? 'unset'})`, async () => {
      const store = grants();
      const asked: { node: string; holders: string[] }[] = [];
      const shared: PlanOptions = {
        ...options,
        originBudget: () => 32,
        originShare: (node, live) => {
          asked.push({ node, holders: [...live.holders].sort() });
          return 3;
        },
      };
      const ask = (node: string, need: number[]) =>
        planRequest(
          createIndexState(),
          request(node, need, max ? { max } : {}),
          store,
          decayingLoad(1),
          shared,
          NOW,
        );
      const origins = (plan: Awaited<ReturnType<typeof ask>>) =>
        plan.assignments.filter((a) => a.source.kind === 'origin').map((a) => a.index);
      const first = await ask('n1', [0, 1, 2, 3, 4, 5, 6, 7]);
      expect(origins(first)).toHaveLength(3);
      // The share is asked with the mesh's holders, the asking node's leases counted as they are taken.
      expect(asked.at(-1)).toEqual({ node: 'n1', holders: ['n1'] });
      // Its share spent, n1 gets nothing more from the registry, and is told it is queued for it.
      const mine = first.grants.map((g) => g.index);
      const others = [0, 1, 2, 3, 4, 5, 6, 7].filter((i) => !mine.includes(i));
      const spent = await ask('n1', others.slice(0, 4));
      expect(origins(spent)).toEqual([]);
      expect(spent.assignments.length).toBe(max ? 1 : 4);
      for (const a of spent.assignments)
        expect(a.source).toEqual({ kind: 'wait', retryMs: 250, queue: 'origin' });
      for (const e of spent.explanations) expect(e).toMatchObject({ reason: 'origin_share' });
      // A chunk whose lease n1 holds (a fetch that failed, asked for again) is its own to fetch again.
      expect(origins(await ask('n1', [mine[1]!]))).toEqual([mine[1]]);
      // n2, with a share of its own, gets chunks from the registry.
      expect(origins(await ask('n2', others))).toHaveLength(3);
      expect(asked.at(-1)).toEqual({ node: 'n2', holders: ['n1', 'n2'] });
      // One of n1's leases given back: room for one more.
      const freed = first.grants[0]!.index;
      await store.release(first.grants[0]!);
      expect(origins(await ask('n1', [freed]))).toEqual([freed]);
    });
  }

  it('takes no zone lease for a chunk queued for the origin, so the zone is not held up by it', async () => {
    const store = grants();
    const state = stateWith((s) => addNode(s, 'n1', 'z1', 'v1'));
    const spent: PlanOptions = { ...options, originBudget: () => 0 };
    const plan = await planRequest(state, request('n1', [0], { max: 1 }), store, decayingLoad(1), spent, NOW);
    expect(plan.assignments.map((a) => a.source)).toEqual([{ kind: 'wait', retryMs: 250, queue: 'origin' }]);
    expect(plan.grants).toEqual([]);
    expect(store.size).toBe(0);
  });

  it('keeps to the origin budget when decisions run at once and leases take a round trip', async () => {
    const inner = grants();
    // Each lease is stored 20 ms after it is asked for, and counted from the moment it is asked for, as
    // the KV store does.
    let asking = 0;
    const slow: GrantStore = {
      leaseMs: inner.leaseMs,
      take: async (blobHex, index, node, now, zone) => {
        if (!zone) asking++;
        await new Promise((resolve) => setTimeout(resolve, 20));
        try {
          return await inner.take(blobHex, index, node, now, zone);
        } finally {
          if (!zone) asking--;
        }
      },
      renew: (blobHex, index, node, now, zone) => inner.renew(blobHex, index, node, now, zone),
      release: (grant) => inner.release(grant),
      mayTake: (...args) => inner.mayTake(...args),
      liveOrigin: (now, node) => {
        const live = inner.liveOrigin(now, node)!;
        return { ...live, total: live.total + asking };
      },
      holdsOrigin: (...args) => inner.holdsOrigin(...args),
    };
    const budgeted: PlanOptions = { ...options, originBudget: () => 4 };
    const plans = await Promise.all(
      ['n1', 'n2', 'n3', 'n4', 'n5', 'n6'].map((node) =>
        planRequest(
          createIndexState(),
          request(node, [0, 1, 2, 3, 4, 5, 6, 7]),
          slow,
          decayingLoad(1),
          budgeted,
          NOW,
        ),
      ),
    );
    expect(plans.reduce((sum, plan) => sum + plan.counts.origin, 0)).toBe(4);
    expect(inner.liveOrigin(NOW)?.total).toBe(4);
  });

  it('tells chunks to wait, and reports the error, when the grant store fails', async () => {
    const failing: GrantStore = {
      leaseMs: 1_000,
      take: () => Promise.reject(new Error('kv unavailable')),
      renew: () => Promise.reject(new Error('kv unavailable')),
      release: () => Promise.resolve(),
      mayTake: () => true,
      liveOrigin: () => undefined,
      holdsOrigin: () => false,
    };
    const plan = await planRequest(
      createIndexState(),
      request('n1', [0, 1]),
      failing,
      decayingLoad(1),
      options,
      NOW,
    );
    expect(plan.counts).toEqual({ peer: 0, origin: 0, wait: 2 });
    expect(plan.grantErrors).toHaveLength(2);
  });

  it('keeps the order of needed chunks and drops duplicates', async () => {
    const plan = await planRequest(
      createIndexState(),
      request('n1', [3, 1, 3, 2]),
      grants(),
      decayingLoad(1),
      options,
      NOW,
    );
    expect(plan.assignments.map((a) => a.index)).toEqual([3, 1, 2]);
  });

  it('rejects chunks beyond the end of the blob and sizes that contradict the manifest', async () => {
    const state = topology();
    const outOfRange = planRequest(state, request('r', [8]), grants(), decayingLoad(1), options, NOW);
    await expect(outOfRange).rejects.toSatisfy((err: unknown) => isShoalError(err, 'SHOAL_ERR_BAD_MESSAGE'));
    await expect(outOfRange).rejects.toThrow(/chunk 8 is out of range/);
    const wrongSize = planRequest(
      state,
      request('r', [0], { size: 9 * MiB }),
      grants(),
      decayingLoad(1),
      options,
      NOW,
    );
    await expect(wrongSize).rejects.toThrow(/differs from the manifest/);
  });
});

/** Wraps a load tracker to count how many candidates a decision examined. */
function countingLoad(inner = decayingLoad(5_000)): LoadTracker & { examined: number } {
  const tracker = {
    examined: 0,
    load(nodeId: string, now: number) {
      tracker.examined++;
      return inner.load(nodeId, now);
    },
    add(nodeId: string, now: number, amount?: number) {
      inner.add(nodeId, now, amount);
    },
    get size() {
      return inner.size;
    },
  };
  return tracker;
}

function putHolder(s: IndexState, id: string, have: number[] | 'all') {
  applyIndexEvent(s, { type: 'holder_put', blobHex: hex('a'), holder: holder(id, blob, 8, have) });
}

describe('planRequest with many holders', () => {
  it('examines a bounded sample of candidates, however many nodes hold the chunk', async () => {
    const state = stateWith((s) => {
      addNode(s, 'r', 'z1', 'v1');
      applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8) });
      for (let i = 0; i < 4_000; i++) {
        addNode(s, `p${i}`, 'z1', 'v1');
        putHolder(s, `p${i}`, i % 2 ? 'all' : [0, 1, 2, 3]);
      }
    });
    const load = countingLoad();
    const plan = await planRequest(state, request('r', [0, 1, 2, 3]), grants(), load, options, NOW);
    expect(plan.counts.peer).toBe(4);
    expect(load.examined).toBeLessThanOrEqual(4 * 8);
    for (const a of plan.assignments) expect(a.alternates).toHaveLength(3);

    const wider = countingLoad();
    await planRequest(state, request('r', [0]), grants(), wider, { ...options, sampleSize: 16 }, NOW);
    expect(wider.examined).toBe(16);
  });

  it('spreads 1,000 requests for one chunk over all of its 100 same-zone holders', async () => {
    const state = stateWith((s) => {
      applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8) });
      for (let i = 0; i < 100; i++) {
        addNode(s, `p${i}`, 'z1', `v${i % 2}`);
        putHolder(s, `p${i}`, i % 3 ? 'all' : [0]);
      }
      for (let i = 0; i < 1_000; i++) addNode(s, `r${i}`, 'z1', 'v9');
    });
    const load = decayingLoad(60_000);
    const store = grants();
    const served = new Map<string, number>();
    for (let i = 0; i < 1_000; i++) {
      const plan = await planRequest(state, request(`r${i}`, [0]), store, load, options, NOW + i);
      const parent = String(peerOf(plan.assignments[0]));
      served.set(parent, (served.get(parent) ?? 0) + 1);
    }
    expect(served.size).toBe(100);
    expect(Math.min(...served.values())).toBeGreaterThanOrEqual(1);
    expect(Math.max(...served.values())).toBeLessThanOrEqual(30);
  });

  it('finds the one live holder among many stale or avoided ones', async () => {
    const state = stateWith((s) => {
      addNode(s, 'r', 'z1', 'v1');
      applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8) });
      for (let i = 0; i < 300; i++) {
        addNode(s, `stale${i}`, 'z1', 'v1', NOW - 60_000);
        putHolder(s, `stale${i}`, 'all');
      }
      addNode(s, 'live', 'z1', 'v1');
      putHolder(s, 'live', [5]);
      for (let i = 0; i < 300; i++) {
        addNode(s, `avoided${i}`, 'z1', 'v1');
        putHolder(s, `avoided${i}`, 'all');
      }
    });
    const avoid = Array.from({ length: 300 }, (_, i) => `avoided${i}`);
    const plan = await planRequest(
      state,
      request('r', [5], { avoid }),
      grants(),
      decayingLoad(5_000),
      options,
      NOW,
    );
    expect(peerOf(plan.assignments[0])).toBe('live');
    expect(plan.assignments[0]?.alternates).toEqual([]);
  });
});

describe('planRequest zone gate', () => {
  /** 50 requesters a0..a49 in zone A (two vSwitches), one holder b1 in zone B. */
  function zones(holders: 'b1' | 'none'): IndexState {
    return stateWith((s) => {
      applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8) });
      for (let i = 0; i < 50; i++) addNode(s, `a${i}`, 'A', `va${i % 2}`);
      for (let i = 0; i < 50; i++) addNode(s, `b${i}`, 'B', 'vb');
      if (holders === 'b1') putHolder(s, 'b1', 'all');
    });
  }

  async function askAll(
    state: IndexState,
    ids: string[],
    store: GrantStore,
    need = [0],
    planOptions = options,
    at = NOW,
  ) {
    const plans = new Map<string, Awaited<ReturnType<typeof planRequest>>>();
    for (const id of ids) {
      plans.set(id, await planRequest(state, request(id, need), store, decayingLoad(5_000), planOptions, at));
    }
    return plans;
  }

  const zoneA = Array.from({ length: 50 }, (_, i) => `a${i}`);
  const zoneB = Array.from({ length: 50 }, (_, i) => `b${i}`);

  it('lets one node of a zone fetch a chunk from another zone; the rest wait for it, then use it', async () => {
    const state = zones('b1');
    const store = grants();
    const plans = await askAll(state, zoneA, store);
    const sources = [...plans.values()].map((p) => peerOf(p.assignments[0]));
    expect(sources.filter((s) => s === 'b1')).toHaveLength(1);
    expect(sources.filter((s) => s === 'wait')).toHaveLength(49);
    const importer = [...plans].find(([, p]) => peerOf(p.assignments[0]) === 'b1')![0];
    const plan = plans.get(importer)!;
    expect(plan.crossZone).toBe(1);
    expect(plan.grants).toEqual([expect.objectContaining({ index: 0, node: importer, zone: 'A' })]);

    // The importer asking again is not starved by its own lease: it gets the chunk again.
    const again = await planRequest(
      state,
      request(importer, [0]),
      store,
      decayingLoad(5_000),
      options,
      NOW + 100,
    );
    expect(peerOf(again.assignments[0])).toBe('b1');

    // Once the importer holds the chunk, every other node of zone A is served from it.
    putHolder(state, importer, [0]);
    const after = await askAll(
      state,
      zoneA.filter((id) => id !== importer),
      store,
      [0],
      options,
      NOW + 200,
    );
    for (const p of after.values()) {
      expect(peerOf(p.assignments[0])).toBe(importer);
      expect(p.crossZone).toBe(0);
      expect(p.grants).toEqual([]);
    }
  });

  it('gives one origin lease in all; each other zone’s lease holder then pulls from the first zone', async () => {
    const state = zones('none');
    const store = grants();
    const inA = await askAll(state, zoneA, store);
    const inB = await askAll(state, zoneB, store);
    const kindsOf = (plans: Map<string, { assignments: Assignment[] }>) =>
      [...plans.values()].map((p) => p.assignments[0]?.source.kind);
    expect(kindsOf(inA).filter((k) => k === 'origin')).toHaveLength(1);
    expect(kindsOf(inB).every((k) => k === 'wait')).toBe(true);
    // Exactly one node of B holds B's zone lease, waiting for the origin lease or for a holder elsewhere.
    const leaseHoldersB = [...inB].filter(([, p]) => p.grants.some((g) => g.zone === 'B'));
    expect(leaseHoldersB).toHaveLength(1);
    const importerB = leaseHoldersB[0]![0];
    const fetcherA = [...inA].find(([, p]) => p.assignments[0]?.source.kind === 'origin')![0];

    putHolder(state, fetcherA, [0]);
    const laterB = await askAll(state, zoneB, store, [0], options, NOW + 1_000);
    for (const [id, p] of laterB) expect(peerOf(p.assignments[0])).toBe(id === importerB ? fetcherA : 'wait');
    const laterA = await askAll(
      state,
      zoneA.filter((id) => id !== fetcherA),
      store,
      [0],
      options,
      NOW + 1_000,
    );
    for (const p of laterA.values()) expect(peerOf(p.assignments[0])).toBe(fetcherA);
  });

  it('admits perZone nodes of a zone at once', async () => {
    const state = zones('b1');
    const plans = await askAll(state, zoneA, memoryGrantStore({ perChunk: 1, perZone: 2, leaseMs: 30_000 }));
    expect([...plans.values()].filter((p) => peerOf(p.assignments[0]) === 'b1')).toHaveLength(2);
  });

  it('lets a new node take over a zone lease that expired', async () => {
    const state = zones('b1');
    const store = grants(1, 1_000);
    const first = await askAll(state, ['a0', 'a1'], store);
    expect([...first.values()].map((p) => peerOf(p.assignments[0]))).toEqual(['b1', 'wait']);
    const later = await askAll(state, ['a1'], store, [0], options, NOW + 1_000);
    expect(peerOf(later.get('a1')?.assignments[0])).toBe('b1');
  });

  it('does not gate nodes whose zone is unknown, or any node when the gate is off', async () => {
    const state = zones('b1');
    addNode(state, 'u1', '', 'va0');
    addNode(state, 'u2', '', '');
    const store = grants();
    const unknown = await askAll(state, ['u1', 'u2'], store);
    for (const p of unknown.values()) {
      expect(peerOf(p.assignments[0])).toBe('b1');
      expect(p.grants).toEqual([]);
    }
    const ungated = await askAll(state, zoneA, store, [0], { ...options, zoneGate: false });
    for (const p of ungated.values()) expect(peerOf(p.assignments[0])).toBe('b1');
  });

  it('gates a node whose only in-zone holders are on its avoid list, through the same zone lease', async () => {
    const state = zones('b1');
    putHolder(state, 'a1', 'all');
    const store = grants();
    const plan = (node: string, avoid?: string[]) =>
      planRequest(
        state,
        request(node, [0], avoid ? { avoid } : {}),
        store,
        decayingLoad(5_000),
        options,
        NOW,
      );
    const avoiding = await plan('a0', ['a1']);
    expect(peerOf(avoiding.assignments[0])).toBe('b1');
    expect(avoiding.grants.map((g) => g.zone)).toEqual(['A']);
    const other = await plan('a2', ['a1']);
    expect(peerOf(other.assignments[0])).toBe('wait');
    // Without the avoid list the in-zone holder serves, with no lease at all.
    const plain = await plan('a2');
    expect(peerOf(plain.assignments[0])).toBe('a1');
  });

  it('waits for busy in-zone holders once a zone has two copies, and goes out only before that', async () => {
    const state = zones('b1');
    putHolder(state, 'b2', 'all');
    putHolder(state, 'a1', 'all');
    const store = grants();
    const slots = { ...options, parentSlots: 1 };
    const load = decayingLoad(60_000);
    // Each node is receiving another chunk of the blob (one with nothing in flight gets a lane more).
    const ask = (node: string, avoid: string[] = []) =>
      planRequest(state, request(node, [0], { max: 1, avoid, fetching: [1] }), store, load, slots, NOW);
    expect(peerOf((await ask('a2')).assignments[0])).toBe('a1');
    // a1, the zone's only copy, is busy: one node may bring a second copy in from zone B.
    const second = await ask('a3');
    expect(peerOf(second.assignments[0])).toMatch(/^b[12]$/);
    expect(second.grants.map((g) => g.zone)).toEqual(['A']);
    putHolder(state, 'a3', [0]);
    expect(peerOf((await ask('a4')).assignments[0])).toBe('a3');
    // Both copies busy: the next node waits for them, though zone B has upload to spare and the lease is free.
    await store.release(second.grants[0]!);
    const busy = await ask('a5');
    expect(peerOf(busy.assignments[0])).toBe('wait');
    expect(busy.crossZone).toBe(0);
    // Copies this node cannot use (it failed them) do not count: it goes out under the zone lease.
    const avoiding = await ask('a6', ['a1', 'a3']);
    expect(peerOf(avoiding.assignments[0])).toMatch(/^b[12]$/);
  });

  it('takes zone leases only for chunks within the per-request origin limit', async () => {
    const state = zones('none');
    const store = grants();
    const limited = { ...options, originMaxPerRequest: 1 };
    const [first] = (await askAll(state, ['a0'], store, [0, 1, 2], limited)).values();
    expect(first?.assignments.map((a) => a.source.kind)).toEqual(['origin', 'wait', 'wait']);
    expect(first?.grants.map((g) => `${g.index}:${g.zone ?? 'origin'}`).sort()).toEqual(['0:A', '0:origin']);
    // Chunks 1 and 2 are still free for the next node of the same zone.
    const [second] = (await askAll(state, ['a1'], store, [0, 1, 2], limited)).values();
    expect(second?.assignments.map((a) => a.source.kind)).toEqual(['wait', 'origin', 'wait']);
  });

  it('prefers a same-zone holder over another zone without taking any lease', async () => {
    const state = zones('b1');
    putHolder(state, 'a3', [0]);
    const plan = await planRequest(state, request('a0', [0]), grants(), decayingLoad(5_000), options, NOW);
    expect(peerOf(plan.assignments[0])).toBe('a3');
    // The other zone's holder is still offered as a fallback if the first choice fails.
    expect(plan.assignments[0]?.alternates.map((a) => a.node)).toEqual(['b1']);
    expect(plan.grants).toEqual([]);
  });
});

describe('planRequest choosing which chunks (max)', () => {
  /** Requester r and parents p0..p3 in one zone; p0 holds chunks 0-5, p1 holds 0-3, p2 and p3 hold 0-1. */
  function swarm(): IndexState {
    return stateWith((s) => {
      addNode(s, 'r', 'z1', 'v1');
      applyIndexEvent(s, {
        type: 'manifest_put',
        blobHex: hex('a'),
        manifest: manifest(blob, 8, [0, 1, 2, 3, 4, 5]),
      });
      for (const [id, have] of [
        ['p0', [0, 1, 2, 3, 4, 5]],
        ['p1', [0, 1, 2, 3]],
        ['p2', [0, 1]],
        ['p3', [0, 1]],
      ] as const) {
        addNode(s, id, 'z1', 'v1');
        putHolder(s, id, [...have]);
      }
    });
  }
  const chooseOptions: PlanOptions = { ...options, parentSlots: 2, inOrder: 1, originMaxPerRequest: 1 };

  it('takes the next chunk in order, then the rarest, and no more than max', async () => {
    const plan = await planRequest(
      swarm(),
      request('r', [0, 1, 2, 3, 4, 5, 6, 7], { max: 3 }),
      grants(),
      inflightLoad(10_000),
      chooseOptions,
      NOW,
    );
    expect(plan.assignments).toHaveLength(3);
    const [first, ...others] = plan.assignments;
    expect(first?.index).toBe(0);
    // Chunks 6 and 7 have no holder at all (rarest): one of them goes to the origin (limit 1), then the
    // rarest held chunks (4 and 5, held by one node).
    const kinds = others.map((a) => `${a.index}:${a.source.kind}`).sort();
    expect(kinds.filter((k) => k.endsWith('origin'))).toHaveLength(1);
    expect(kinds.filter((k) => /^[45]:peer$/.test(k))).toHaveLength(1);
  });

  it('gives a busy parent no more, and tells the node to wait when nothing is left', async () => {
    const load = inflightLoad(10_000);
    const state = swarm();
    load.add('p0', NOW, 2);
    const plan = await planRequest(
      state,
      request('r', [4, 5], { max: 2, fetching: [1] }),
      grants(),
      load,
      chooseOptions,
      NOW,
    );
    expect(plan.assignments).toEqual([
      {
        index: 4,
        sha256: expect.any(String) as string,
        source: { kind: 'wait', retryMs: 250 },
        alternates: [],
      },
    ]);
    load.release?.('p0', NOW);
    const again = await planRequest(
      state,
      request('r', [4, 5], { max: 2, fetching: [1] }),
      grants(),
      load,
      chooseOptions,
      NOW,
    );
    expect(again.assignments.map(peerOf)).toEqual(['p0']);
  });

  it('lets a node with nothing in flight take a busy parent one lane past its slots, and no more', async () => {
    const load = inflightLoad(10_000);
    const state = swarm();
    load.add('p0', NOW, 2);
    const ask = (fetching: number[]) =>
      planRequest(state, request('r', [4, 5], { max: 2, fetching }), grants(), load, chooseOptions, NOW);
    // Receiving other chunks, the node waits for a lane like everyone else.
    expect((await ask([1])).assignments.map(peerOf)).toEqual(['wait']);
    // With nothing in flight, it gets the extra lane: p0 now serves 3 with 2 slots.
    expect((await ask([])).assignments.map(peerOf)).toEqual(['p0']);
    expect(load.load('p0', NOW)).toBe(3);
    // The extra lane is taken: the next node with nothing in flight waits too.
    expect((await ask([])).assignments.map(peerOf)).toEqual(['wait']);
    // One extra lane per decision, however many busy parents there are: one chunk to start on.
    const busyAll = inflightLoad(10_000);
    busyAll.add('p0', NOW, 2);
    busyAll.add('p1', NOW, 2);
    const one = await planRequest(
      state,
      request('r', [2, 3, 4, 5], { max: 2, fetching: [] }),
      grants(),
      busyAll,
      chooseOptions,
      NOW,
    );
    expect(one.assignments.map((a) => a.source.kind)).toEqual(['peer']);
  });
});

describe('inflightLoad', () => {
  it('counts transfers until released or expired', () => {
    const load = inflightLoad(1_000);
    load.add('p', 0);
    load.add('p', 500);
    expect(load.load('p', 600)).toBe(2);
    load.release?.('p', 600);
    expect(load.load('p', 600)).toBe(1);
    expect(load.load('p', 1_600)).toBe(0);
  });
});

describe('planRequest when a holder appears while a lease is being taken', () => {
  /** A lease store that, while a lease is being taken, lets a holder record for chunk 0 arrive. */
  function racingStore(state: IndexState): GrantStore & { released: number } {
    const inner = memoryGrantStore({ perChunk: 1, leaseMs: 10_000 });
    let released = 0;
    return {
      leaseMs: inner.leaseMs,
      get released() {
        return released;
      },
      async take(blobHex, index, node, now, zone) {
        const grant = await inner.take(blobHex, index, node, now, zone);
        if (!zone) putHolder(state, 'early', [0]);
        return grant;
      },
      renew: (blobHex, index, node, now, zone) => inner.renew(blobHex, index, node, now, zone),
      async release(grant) {
        released++;
        await inner.release(grant);
      },
      mayTake: (...args) => inner.mayTake(...args),
      liveOrigin: (now, node) => inner.liveOrigin(now, node),
      holdsOrigin: (...args) => inner.holdsOrigin(...args),
    };
  }

  for (const max of [undefined, 1]) {
    it(`gives the origin lease back and does not send the chunk to the registry twice (max ${max ?? 'unset'})`, async () => {
      const state = stateWith((s) => {
        addNode(s, 'r', 'z1', 'v1');
        addNode(s, 'early', 'z1', 'v1');
        applyIndexEvent(s, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8, [0]) });
        putHolder(s, 'early', [7]);
      });
      const store = racingStore(state);
      const plan = await planRequest(
        state,
        request('r', [0], max === undefined ? {} : { max }),
        store,
        inflightLoad(10_000),
        { ...options, zoneGate: false },
        NOW,
      );
      expect(plan.counts.origin).toBe(0);
      expect(store.released).toBe(1);
      expect(plan.grants).toHaveLength(0);
    });
  }
});
