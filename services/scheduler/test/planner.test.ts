import { MiB, isShoalError, type Assignment, type ScheduleRequest } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { memoryGrantStore, type GrantStore } from '../src/grants.js';
import { applyIndexEvent, createIndexState, type IndexState } from '../src/index-state.js';
import { decayingLoad, planRequest, topologyTier, type PlanOptions } from '../src/planner.js';
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
    expect(a?.source).toEqual({ kind: 'peer', node: 'same-vsw', url: 'http://same-vsw.test:65001' });
    expect(a?.alternates.map((x) => x.node)).toEqual(['same-zone', 'other']);
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
    const second = await planRequest(state, request('n2', [0, 1]), store, load, options, NOW + 1_000);
    expect(second.assignments.map(sourceOf)).toEqual([
      { kind: 'wait', retryMs: 250 },
      { kind: 'wait', retryMs: 250 },
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
  });

  it('tells chunks to wait, and reports the error, when the grant store fails', async () => {
    const failing: GrantStore = {
      leaseMs: 1_000,
      take: () => Promise.reject(new Error('kv unavailable')),
      release: () => Promise.resolve(),
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
