/**
 * What a decision records about itself (the `chunks_assigned` event): for a peer, the candidates in rank
 * order and the rule that chose it; for the origin, that no live holder existed and whether a zone lease
 * gated it; for a wait, why. And the ranking function `shoalctl explain` re-runs on those candidates.
 */
import { MiB, type AssignmentRecord, type ScheduleRequest } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { memoryGrantStore, type GrantStore } from '../src/grants.js';
import { applyIndexEvent, createIndexState, type IndexState } from '../src/index-state.js';
import {
  assignmentRecords,
  inflightLoad,
  planRequest,
  type LoadTracker,
  type PlanOptions,
} from '../src/planner.js';
import { chooseParent, compareCandidates, rankedLoad } from '@shoal/mesh';
import { digestOf, hex, holder, manifest, node } from './fixtures.js';

const NOW = 1_700_000_000_000;
const blob = digestOf('a');
const options: PlanOptions = { nodeTtlMs: 15_000, retryMs: 250, maxAlternates: 3, originMaxPerRequest: 0 };
const grants = (perChunk = 1) => memoryGrantStore({ perChunk, leaseMs: 30_000 });

function request(nodeId: string, need: number[], extra: Partial<ScheduleRequest> = {}): ScheduleRequest {
  return { v: 1, node: nodeId, blob, size: 8 * MiB, chunkSize: MiB, need, avoid: [], ...extra };
}

/** Nodes as [id, zone, vswitch]; holders as id → chunks; the manifest knows the hashes of `known`. */
function mesh(
  nodes: [string, string, string][],
  holders: Record<string, number[] | 'all'> = {},
  known: number[] | 'all' = 'all',
): IndexState {
  const state = createIndexState();
  for (const [id, zone, vswitch] of nodes)
    applyIndexEvent(state, { type: 'node_put', node: node(id, zone, vswitch, NOW) });
  applyIndexEvent(state, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 8, known) });
  for (const [id, have] of Object.entries(holders))
    applyIndexEvent(state, { type: 'holder_put', blobHex: hex('a'), holder: holder(id, blob, 8, have) });
  return state;
}

async function records(
  state: IndexState,
  req: ScheduleRequest,
  store: GrantStore = grants(),
  load: LoadTracker = inflightLoad(60_000),
  planOptions: PlanOptions = options,
): Promise<AssignmentRecord[]> {
  const plan = await planRequest(state, req, store, load, planOptions, NOW);
  expect(plan.explanations).toHaveLength(plan.assignments.length);
  return assignmentRecords(plan).assignments;
}

/** The parent the ranking chooses from a record's candidates, listed in reverse to show order does not matter. */
const rerank = (record: AssignmentRecord | undefined) =>
  chooseParent([...(record?.candidates ?? [])].reverse())?.parent.node;

describe('chooseParent', () => {
  it('chooses by tier, then load, then tie, whatever order the candidates come in, and names the rule', () => {
    const c = (node: string, tier: number, load: number, tie: number) => ({ node, tier, load, tie });
    expect(chooseParent([])).toBeUndefined();
    expect(chooseParent([c('a', 2, 0, 0)])).toEqual({ parent: c('a', 2, 0, 0), rule: 'only' });
    expect(chooseParent([c('far', 1, 0, 0), c('near', 0, 5, 1)])).toMatchObject({
      parent: { node: 'near' },
      rule: 'tier',
    });
    expect(chooseParent([c('busy', 0, 2, 0), c('idle', 0, 1, 1), c('far', 1, 0, 2)])).toMatchObject({
      parent: { node: 'idle' },
      rule: 'load',
    });
    expect(chooseParent([c('second', 0, 1, 1), c('first', 0, 1, 0)])).toMatchObject({
      parent: { node: 'first' },
      rule: 'tie',
    });
    // The same order the planner sorts with.
    const list = [c('x', 1, 0, 0), c('y', 0, 3, 1), c('z', 0, 3, 2), c('w', 0, 0.5, 3)];
    expect([...list].sort(compareCandidates).map((x) => x.node)).toEqual(['w', 'y', 'z', 'x']);
    expect(rankedLoad(1 / 3)).toBe(0.33);
  });
});

describe('chunks_assigned records', () => {
  it('records a peer chosen by tier, with every candidate in rank order', async () => {
    const state = mesh(
      [
        ['r', 'z1', 'v1'],
        ['vsw', 'z1', 'v1'],
        ['zone', 'z1', 'v2'],
        ['far', 'z2', 'v3'],
      ],
      { vsw: 'all', zone: 'all', far: 'all' },
    );
    const load = inflightLoad(60_000);
    // The same-vSwitch parent is the busiest, and still chosen: tier comes first.
    load.add('vsw', NOW, 3);
    const [record] = await records(state, request('r', [0]), grants(), load);
    expect(record).toEqual({
      index: 0,
      source: 'peer',
      peer: 'vsw',
      locality: 'vswitch',
      candidates: [
        { node: 'vsw', tier: 0, load: 3, tie: expect.any(Number) as number },
        { node: 'zone', tier: 1, load: 0, tie: expect.any(Number) as number },
        { node: 'far', tier: 2, load: 0, tie: expect.any(Number) as number },
      ],
      reason: 'tier',
    });
    expect(rerank(record)).toBe('vsw');
  });

  it('records a peer chosen by load, by the tie-break, and as the only candidate', async () => {
    const nodes: [string, string, string][] = [
      ['r', 'z1', 'v1'],
      ['p1', 'z1', 'v1'],
      ['p2', 'z1', 'v1'],
      ['p3', 'z1', 'v1'],
    ];
    const state = mesh(nodes, { p1: 'all', p2: 'all', p3: 'all' });
    const load = inflightLoad(60_000);
    load.add('p1', NOW, 2);
    load.add('p2', NOW, 1);
    const [byLoad] = await records(state, request('r', [0]), grants(), load);
    expect(byLoad).toMatchObject({ source: 'peer', peer: 'p3', reason: 'load' });
    expect(byLoad?.candidates?.map((c) => [c.node, c.load])).toEqual([
      ['p3', 0],
      ['p2', 1],
      ['p1', 2],
    ]);
    expect(rerank(byLoad)).toBe('p3');

    const [byTie] = await records(state, request('r', [1]), grants(), inflightLoad(60_000));
    expect(byTie).toMatchObject({ source: 'peer', reason: 'tie' });
    const ties = byTie?.candidates?.map((c) => c.tie) ?? [];
    expect(ties).toEqual([...ties].sort((a, b) => a - b));
    expect(byTie?.peer).toBe(byTie?.candidates?.[0]?.node);
    expect(rerank(byTie)).toBe(byTie?.peer);

    const single = mesh(nodes, { p2: [4] });
    const [only] = await records(single, request('r', [4]));
    expect(only).toMatchObject({ source: 'peer', peer: 'p2', reason: 'only' });
    expect(only?.candidates).toHaveLength(1);
  });

  it('records the busy holders a chosen-only decision passed over', async () => {
    const state = mesh(
      [
        ['r', 'z1', 'v1'],
        ['p1', 'z1', 'v1'],
        ['p2', 'z1', 'v1'],
      ],
      { p1: 'all', p2: 'all' },
    );
    const load = inflightLoad(60_000);
    load.add('p1', NOW, 2);
    const [record] = await records(state, request('r', [0], { max: 1, fetching: [1] }), grants(), load, {
      ...options,
      parentSlots: 2,
    });
    expect(record).toMatchObject({ source: 'peer', peer: 'p2', reason: 'only', busy: 1 });
  });

  it('records an origin grant: no live holder, and whether a zone lease gated it', async () => {
    const state = mesh(
      [
        ['placed', 'z1', 'v1'],
        ['unplaced', '', ''],
      ],
      {},
    );
    const store = grants(2);
    const [gated] = await records(state, request('placed', [0]), store);
    expect(gated).toEqual({ index: 0, source: 'origin', zoneLease: true, reason: 'no_live_holder' });
    const [ungated] = await records(state, request('unplaced', [0]), store);
    expect(ungated).toEqual({ index: 0, source: 'origin', zoneLease: false, reason: 'no_live_holder' });
  });

  it('records why chunks wait: origin lease, zone lease, origin budget, per-request limit', async () => {
    const state = mesh(
      [
        ['a0', 'A', 'va'],
        ['a1', 'A', 'va'],
        ['b0', 'B', 'vb'],
        ['b1', 'B', 'vb'],
        ['u1', '', ''],
      ],
      {},
    );
    const store = grants();
    expect((await records(state, request('a0', [0]), store))[0]?.source).toBe('origin');
    // Zone A's lease is a0's: a1 waits for it. Zone B's is free, but the origin lease is a0's. Either way
    // a0 is fetching the chunk, so the others are queued for that fetch, as for a turn of their own.
    for (const max of [undefined, 1]) {
      const limit = max ? { max } : {};
      // Choosing (`max`), the scheduler looks at the origin lease first.
      expect(await records(state, request('a1', [0], limit), store)).toEqual([
        { index: 0, source: 'wait', queue: 'origin', reason: max ? 'origin_lease_held' : 'zone_lease_held' },
      ]);
      expect(await records(state, request('b0', [0], limit), store)).toEqual([
        { index: 0, source: 'wait', queue: 'origin', reason: 'origin_lease_held' },
      ]);
      expect(await records(state, request('u1', [0], limit), store)).toEqual([
        { index: 0, source: 'wait', queue: 'origin', reason: 'origin_lease_held' },
      ]);
    }

    const spent: PlanOptions = { ...options, originBudget: () => 0 };
    for (const max of [undefined, 1]) {
      const queued = await records(state, request('u1', [5], max ? { max } : {}), grants(), undefined, spent);
      expect(queued).toEqual([{ index: 5, source: 'wait', queue: 'origin', reason: 'origin_budget' }]);
    }

    const limited = await records(state, request('u1', [1, 2]), grants(), undefined, {
      ...options,
      originMaxPerRequest: 1,
    });
    expect(limited.map((r) => `${r.index}:${r.source}:${r.reason}`)).toEqual([
      '1:origin:no_live_holder',
      '2:wait:origin_limit',
    ]);
  });

  it('sends a chunk held only without a hash to the origin, and waits for busy holders', async () => {
    const nodes: [string, string, string][] = [
      ['r', 'z1', 'v1'],
      ['p1', 'z1', 'v1'],
    ];
    // Chunk 3 is claimed, but with no hash in the manifest it cannot be verified, so it cannot come from
    // a peer; a claim no real holder makes must not keep it from the registry.
    const unknownHash = mesh(nodes, { p1: [3] }, [0]);
    expect(await records(unknownHash, request('r', [3], { max: 1 }))).toEqual([
      { index: 3, source: 'origin', reason: 'no_live_holder', zoneLease: true },
    ]);
    // Likewise a chunk whose only holder the requester avoids.
    const avoided = mesh(nodes, { p1: 'all' });
    expect(await records(avoided, request('r', [2], { max: 1, avoid: ['p1'] }))).toEqual([
      { index: 2, source: 'origin', reason: 'no_live_holder', zoneLease: true },
    ]);
    const load = inflightLoad(60_000);
    load.add('p1', NOW, 2);
    const busy = mesh(nodes, { p1: 'all' });
    expect(
      await records(busy, request('r', [0, 1], { max: 2, fetching: [5] }), grants(), load, {
        ...options,
        parentSlots: 2,
      }),
    ).toEqual([{ index: 0, source: 'wait', reason: 'parents_busy' }]);
  });

  it('records a failing lease store as the reason', async () => {
    const failing: GrantStore = {
      leaseMs: 1_000,
      take: () => Promise.reject(new Error('kv unavailable')),
      renew: () => Promise.reject(new Error('kv unavailable')),
      release: () => Promise.resolve(),
      mayTake: () => true,
      liveOrigin: () => undefined,
      holdsOrigin: () => false,
    };
    const state = mesh([['u1', '', '']], {});
    expect(await records(state, request('u1', [0]), failing)).toEqual([
      { index: 0, source: 'wait', reason: 'lease_error' },
    ]);
  });

  it('records a cross-zone peer admitted by the zone lease', async () => {
    const state = mesh(
      [
        ['a0', 'A', 'va'],
        ['b0', 'B', 'vb'],
      ],
      { b0: 'all' },
    );
    for (const max of [undefined, 1]) {
      const [record] = await records(state, request('a0', [max ?? 0], max ? { max } : {}));
      expect(record).toMatchObject({ source: 'peer', peer: 'b0', locality: 'cross_zone', zoneLease: true });
    }
  });

  it('caps an event at 64 assignments and 8 candidates each, and says what it left out', async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `p${i}`);
    const state = createIndexState();
    applyIndexEvent(state, { type: 'node_put', node: node('r', 'z1', 'v1', NOW) });
    for (const id of ids) applyIndexEvent(state, { type: 'node_put', node: node(id, 'z1', 'v1', NOW) });
    applyIndexEvent(state, { type: 'manifest_put', blobHex: hex('a'), manifest: manifest(blob, 100) });
    for (const id of ids)
      applyIndexEvent(state, { type: 'holder_put', blobHex: hex('a'), holder: holder(id, blob, 100, 'all') });
    const need = Array.from({ length: 100 }, (_, i) => i);
    const plan = await planRequest(
      state,
      request('r', need, { size: 100 * MiB }),
      grants(),
      inflightLoad(60_000),
      { ...options, sampleSize: 10 },
      NOW,
    );
    const { assignments, truncated } = assignmentRecords(plan);
    expect(assignments).toHaveLength(64);
    expect(assignments.map((a) => a.index)).toEqual(need.slice(0, 64));
    for (const a of assignments) {
      expect(a.candidates).toHaveLength(8);
      expect(rerank(a)).toBe(a.peer);
    }
    expect(truncated).toEqual({ assignments: 36, candidates: 64 * 2 });
    expect(JSON.stringify(assignments).length).toBeLessThan(64 * 1024);
  });
});
