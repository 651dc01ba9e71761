import { MiB, type AssignmentRecord, type EventInput, type ShoalEvent } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import {
  checkAssignment,
  describeAssignment,
  explainPull,
  formatExplanation,
  formatLoad,
} from '../src/timeline/explain.js';
import { formatEntryLine, formatPull, formatSummary } from '../src/timeline/format.js';
import { buildTimeline } from '../src/timeline/timeline.js';
import { buildTrace, type TraceEvent } from '../src/timeline/trace.js';
import { parseUntil } from '../src/timeline/window.js';

const blob = `sha256:${'c'.repeat(64)}`;
const T0 = 1_700_000_000_000;
/** 5.5 MiB in 1 MiB chunks: six chunks, the last of half a MiB. */
const SIZE = 5.5 * MiB;

const at = (ms: number, origin: string, event: EventInput): ShoalEvent => ({ ...event, at: T0 + ms, origin });

const started = (ms: number, node: string): ShoalEvent =>
  at(ms, node, { type: 'pull_started', node, blob, registry: 'reg', repository: 'team/app', size: SIZE });
const fetched = (ms: number, node: string, index: number, peer?: string, took = 10): ShoalEvent =>
  at(ms, node, {
    type: 'chunk_fetched',
    node,
    blob,
    index,
    source: peer ? 'peer' : 'origin',
    ...(peer ? { peer } : {}),
    bytes: index === 5 ? MiB / 2 : MiB,
    ms: took,
  });
const finished = (ms: number, node: string, took: number, cache = 0): ShoalEvent =>
  at(ms, node, {
    type: 'pull_finished',
    node,
    blob,
    size: SIZE,
    ms: took,
    ok: true,
    bytes: { peer: 0, origin: 0, cache: cache ? SIZE : 0 },
    chunks: { peer: 0, origin: 0, cache },
  });
const assigned = (ms: number, node: string, assignments: AssignmentRecord[]): ShoalEvent =>
  at(ms, 'sched-1', {
    type: 'chunks_assigned',
    scheduler: 'sched-1',
    node,
    blob,
    size: SIZE,
    chunkSize: MiB,
    assignments,
  });
const cand = (node: string, tier: number, load: number, tie: number) => ({ node, tier, load, tie });

/** Node b: six chunks from a, c and the origin, with a failure, a dropped parent and a fallback. */
const pullB: ShoalEvent[] = [
  started(0, 'b'),
  assigned(2, 'b', [
    {
      index: 0,
      source: 'peer',
      peer: 'a',
      locality: 'vswitch',
      candidates: [cand('a', 0, 0, 0)],
      reason: 'only',
    },
    {
      index: 1,
      source: 'peer',
      peer: 'a',
      locality: 'vswitch',
      candidates: [cand('a', 0, 1, 1), cand('c', 0, 2, 0)],
      reason: 'load',
    },
    { index: 2, source: 'origin', zoneLease: true, reason: 'no_live_holder' },
    { index: 3, source: 'wait', reason: 'origin_lease_held' },
  ]),
  at(3, 'sched-1', {
    type: 'schedule_decided',
    scheduler: 'sched-1',
    node: 'b',
    blob,
    peer: 2,
    originGrants: 1,
    wait: 1,
    ms: 0.2,
  }),
  fetched(15, 'b', 0, 'a'),
  at(20, 'b', {
    type: 'chunk_failed',
    node: 'b',
    blob,
    index: 1,
    source: 'peer',
    peer: 'a',
    reason: 'timeout',
  }),
  at(20, 'b', { type: 'parent_dropped', node: 'b', blob, peer: 'a', why: 'slow', reason: 'too slow' }),
  assigned(252, 'b', [
    { index: 3, source: 'wait', reason: 'origin_lease_held' },
    { index: 1, source: 'peer', peer: 'c', candidates: [cand('c', 0, 2, 0)], reason: 'only' },
  ]),
  fetched(270, 'b', 1, 'c'),
  fetched(280, 'b', 2),
  at(300, 'b', { type: 'fallback', node: 'b', blob, reason: 'waited too long for a peer' }),
  fetched(320, 'b', 3, undefined, 20),
  fetched(330, 'b', 4, undefined, 20),
  fetched(340, 'b', 5, undefined, 30),
  finished(400, 'b', 398),
  at(401, 'announcer-1', { type: 'manifest_conflict', blob, index: 2, node: 'z' }),
];

/** Node c: chunk 0 fetched twice, chunk 5 assigned and never fetched. */
const pullC: ShoalEvent[] = [
  started(1000, 'c'),
  assigned(1001, 'c', [{ index: 5, source: 'origin', zoneLease: false, reason: 'no_live_holder' }]),
  ...[0, 0, 1, 2, 3, 4].map((index, i) => fetched(1010 + i, 'c', index, 'b')),
  finished(1100, 'c', 100),
];

/** Node d: from its cache. */
const pullD: ShoalEvent[] = [started(2000, 'd'), finished(2001, 'd', 1, 6)];

describe('replay timeline', () => {
  it('rebuilds each pull in time order, and counts its chunks by source', () => {
    // Stream order differs from time order: the scheduler's events may arrive a little late.
    const shuffled = [...pullC, ...pullB.slice(6), ...pullB.slice(0, 6), ...pullD];
    const { entries, pulls } = buildTimeline(shuffled);
    expect(pulls.map((p) => [p.node, p.status])).toEqual([
      ['b', 'consistent'],
      ['c', 'inconsistent'],
      ['d', 'cached'],
    ]);
    const [b, c] = pulls;
    expect(b).toMatchObject({
      chunks: 6,
      chunkSize: MiB,
      ms: 398,
      ok: true,
      fetched: { peer: { chunks: 2, bytes: 2 * MiB }, origin: { chunks: 4, bytes: 3.5 * MiB } },
      byPeer: { a: { chunks: 1, bytes: MiB }, c: { chunks: 1, bytes: MiB } },
      failures: 1,
      parentsDropped: ['a'],
      fallbacks: 1,
      assignedNotFetched: [],
      fetchedTwice: [],
      missing: [],
    });
    const steps = entries.filter((e) => e.node === 'b');
    // The repeated wait for chunk 3 is shown once; events that are not steps of a pull are left out.
    expect(
      steps.map((e) =>
        [e.t, e.kind, e.index, [e.source, e.peer].filter(Boolean).join(' ')]
          .filter((x) => x !== undefined && x !== '')
          .join(' '),
      ),
    ).toEqual([
      '0 started',
      '2 assigned 0 peer a',
      '2 assigned 1 peer a',
      '2 assigned 2 origin',
      '2 assigned 3 wait',
      '15 fetched 0 peer a',
      '20 failed 1 peer a',
      '20 dropped a',
      '252 assigned 1 peer c',
      '270 fetched 1 peer c',
      '280 fetched 2 origin',
      '300 fallback',
      '320 fetched 3 origin',
      '330 fetched 4 origin',
      '340 fetched 5 origin',
      '400 finished',
    ]);
    expect(steps.find((e) => e.kind === 'assigned')).toMatchObject({ scheduler: 'sched-1', reason: 'only' });
    expect(c).toMatchObject({ fetchedTwice: [0], assignedNotFetched: [5], missing: [5] });
  });

  it('tells a pull still going from a finished one, and infers the chunk size without the scheduler', () => {
    const going = buildTimeline([started(0, 'e'), fetched(10, 'e', 0), fetched(20, 'e', 1)]).pulls[0];
    expect(going).toMatchObject({ status: 'in_progress', chunkSize: MiB, chunks: 6, missing: [2, 3, 4, 5] });
    expect(going?.ok).toBeUndefined();
    const cut = buildTimeline([fetched(10, 'f', 0), fetched(20, 'f', 1)]).pulls[0];
    expect(cut?.status).toBe('unknown');
  });

  it('prints a table with relative times and a summary naming what is unaccounted for', () => {
    const { entries, pulls } = buildTimeline([...pullB, ...pullC]);
    const [b, c] = pulls;
    const table = formatPull(
      b!,
      entries.filter((e) => e.node === 'b'),
    );
    expect(table).toMatch(/^b {2}sha256:c{64} {2}5\.5 MiB in 6 chunks of 1\.0 MiB/);
    expect(table).toMatch(/^TIME\s+EVENT\s+CHUNK\s+SOURCE\s+DETAIL$/m);
    expect(table).toMatch(/^\+0\.002s\s+assigned\s+1\s+peer a\s+least loaded \(sched-1\)$/m);
    expect(table).toMatch(/^\+0\.015s\s+fetched\s+0\s+peer a\s+1\.0 MiB in 10 ms$/m);
    expect(table).toMatch(/^\+0\.020s\s+dropped\s+peer a\s+slow: too slow$/m);
    expect(table).toMatch(
      /^summary: 6 of 6 chunks fetched \(every chunk fetched exactly once\): 2 from peers \(2\.0 MiB: a 1, c 1\), 4 from the origin \(3\.5 MiB\); 398 ms, ok$/m,
    );
    expect(table).toMatch(/1 failed fetch, 1 parent dropped \(a\), 1 fallback/);
    // Followed, each step is one line naming its pull, as pulls interleave.
    const line = formatEntryLine(entries.find((e) => e.node === 'b' && e.kind === 'fetched')!);
    expect(line).toMatch(/^ +\+0\.015s {2}b +sha256:c{12}… {2}fetched +0 {2}peer a +1\.0 MiB in 10 ms$/);
    const summary = formatSummary(c!);
    expect(summary).toMatch(/INCONSISTENT/);
    expect(summary).toMatch(/fetched more than once: 0$/m);
    expect(summary).toMatch(/assigned but never fetched: 5$/m);
    expect(summary).toMatch(/never fetched: 5$/m);
  });
});

describe('explain', () => {
  const peer = (reason: AssignmentRecord['reason'], candidates: ReturnType<typeof cand>[], extra = {}) =>
    ({
      index: 0,
      source: 'peer',
      peer: candidates[0]?.node,
      candidates,
      reason,
      ...extra,
    }) as AssignmentRecord;

  it('puts each decision in words', () => {
    expect(formatLoad(0)).toBe('0.0');
    expect(formatLoad(0.25)).toBe('0.25');
    expect(
      describeAssignment(peer('load', [cand('n3', 0, 0, 2), cand('n1', 0, 1, 0), cand('n2', 0, 2, 1)])),
    ).toBe('peer n3: same vSwitch, least loaded of 3 (loads 0.0, 1.0, 2.0)');
    expect(describeAssignment(peer('tier', [cand('n3', 1, 4, 0), cand('n5', 2, 0, 1)]))).toBe(
      'peer n3: same zone, nearer than the other 1 candidate (elsewhere)',
    );
    expect(
      describeAssignment(peer('tie', [cand('n3', 0, 1, 0), cand('n4', 0, 1, 1), cand('n5', 0, 2, 2)])),
    ).toBe('peer n3: same vSwitch, first in walk order of 2 at load 1.0 (loads 1.0, 1.0, 2.0)');
    expect(describeAssignment(peer('only', [cand('b1', 2, 0, 0)], { busy: 2, zoneLease: true }))).toBe(
      "peer b1: elsewhere, the only candidate; 2 busy holders passed over; through the zone's lease",
    );
    expect(
      describeAssignment({ index: 1, source: 'origin', zoneLease: true, reason: 'no_live_holder' }),
    ).toBe("origin: no live holder with a known hash; origin lease granted, gated by the zone's lease");
    expect(describeAssignment({ index: 1, source: 'wait', queue: 'origin', reason: 'origin_budget' })).toBe(
      "wait: the mesh's origin budget is spent; queued for the registry",
    );
    expect(describeAssignment({ index: 1, source: 'wait', reason: 'zone_lease_held' })).toMatch(
      /^wait: zone lease held by another node/,
    );
  });

  it('re-ranks recorded candidates and flags a decision the ranking does not reproduce', () => {
    expect(checkAssignment(peer('load', [cand('n3', 0, 0, 2), cand('n1', 0, 1, 0)]))).toEqual({
      check: 'same',
    });
    // Recorded as chosen by tie, but the loads differ: the rule does not match.
    expect(checkAssignment(peer('tie', [cand('n3', 0, 0, 2), cand('n1', 0, 1, 0)]))).toEqual({
      check: 'differs',
      reranked: { peer: 'n3', rule: 'load' },
    });
    // A parent the ranking would not choose.
    expect(checkAssignment(peer('load', [cand('n3', 0, 2, 0), cand('n1', 0, 1, 1)]))).toEqual({
      check: 'differs',
      reranked: { peer: 'n1', rule: 'load' },
    });
    expect(checkAssignment({ index: 0, source: 'peer', peer: 'x', reason: 'only' })).toEqual({
      check: 'unchecked',
    });
    expect(checkAssignment({ index: 0, source: 'wait', reason: 'parents_busy' })).toBeUndefined();
  });

  it("explains every chunk of a node's pull, and reports agreement", () => {
    const e = explainPull([...pullB, ...pullC], 'b', blob);
    expect(e.chunks).toBe(6);
    expect(e.stories.map((s) => s.decisions.length)).toEqual([1, 2, 1, 1, 0, 0]);
    // Chunk 3 waited twice for the same reason: one decision, seen twice.
    expect(e.stories[3]?.decisions[0]).toMatchObject({ source: 'wait', repeats: 2 });
    expect(e).toMatchObject({ decisions: 5, checked: 3, differing: [] });
    const text = formatExplanation(e);
    expect(text).toMatch(/^b {2}sha256:c{64} {2}6 chunks of 1\.0 MiB, 5 decisions$/m);
    expect(text).toMatch(
      /^1\s+\+0\.002s\s+peer a: same vSwitch, least loaded of 2 \(loads 1\.0, 2\.0\)\s+same$/m,
    );
    expect(text).toMatch(
      /^1\s+\+0\.252s\s+peer c: same vSwitch, the only candidate\s+peer c, 10 ms\s+same$/m,
    );
    expect(text).toMatch(
      /^3\s+\+0\.002s\s+wait: origin lease held by another node \(×2\)\s+origin, 20 ms\s+-$/m,
    );
    expect(text).toMatch(/^4\s+-\s+no decision recorded \(fetched without the scheduler\)\s+origin, 20 ms/m);
    expect(text).toMatch(/all 3 peer decisions re-rank to the same parent by the same rule$/);
  });

  it('names each decision that differs', () => {
    const tampered = assigned(5, 'b', [
      {
        index: 4,
        source: 'peer',
        peer: 'a',
        candidates: [cand('a', 1, 0, 0), cand('c', 0, 3, 1)],
        reason: 'tier',
      },
    ]);
    const e = explainPull([...pullB, tampered], 'b', blob);
    expect(e.differing.map((d) => [d.index, d.reranked])).toEqual([[4, { peer: 'c', rule: 'tier' }]]);
    expect(formatExplanation(e)).toMatch(
      /1 of 4 peer decisions differ from the ranking of their recorded candidates:\n {2}chunk 4 at \+0\.005s: recorded a \(tier\), the ranking chooses c \(tier\)$/,
    );
  });
});

describe('trace', () => {
  const events = [...pullB, ...pullC, ...pullD];
  const trace = JSON.parse(JSON.stringify(buildTrace(events))) as { traceEvents: TraceEvent[] };
  const of = (ph: string, cat?: string) =>
    trace.traceEvents.filter((e) => e.ph === ph && (cat === undefined || e.cat?.startsWith(cat)));

  it('has one named track per node', () => {
    const names = of('M').filter((e) => e.name === 'process_name');
    expect(names.map((e) => [e.pid, e.args?.name])).toEqual([
      [1, 'b'],
      [2, 'c'],
      [3, 'd'],
    ]);
    const threads = of('M').filter((e) => e.name === 'thread_name');
    for (const e of of('X')) expect(threads.some((t) => t.pid === e.pid && t.tid === e.tid)).toBe(true);
  });

  it('has one slice per fetched chunk, timed by the fetch and categorised by source', () => {
    const slices = of('X', 'fetch');
    expect(slices).toHaveLength(events.filter((e) => e.type === 'chunk_fetched').length);
    const first = slices.find((e) => e.pid === 1 && e.args?.index === 0);
    // Microseconds from the first event (b's pull_started); the fetch ended at +15 ms and took 10.
    expect(first).toMatchObject({
      name: 'peer a',
      cat: 'fetch,peer',
      ts: 5_000,
      dur: 10_000,
      args: { peer: 'a', bytes: MiB, index: 0, blob },
    });
    expect(slices.filter((e) => e.cat === 'fetch,origin')).toHaveLength(4);
    expect(new Set(slices.map((e) => e.cname)).size).toBe(2);
  });

  it('encloses the fetches in pull slices, never overlaps slices on one thread, and marks fallbacks', () => {
    const pulls = of('X', 'pull');
    expect(pulls.map((e) => e.pid)).toEqual([1, 2, 3]);
    for (const pull of pulls) {
      for (const f of of('X', 'fetch').filter((e) => e.pid === pull.pid)) {
        expect(f.ts!).toBeGreaterThanOrEqual(pull.ts!);
        expect(f.ts! + f.dur!).toBeLessThanOrEqual(pull.ts! + pull.dur!);
      }
    }
    const byThread = new Map<string, TraceEvent[]>();
    for (const e of of('X'))
      byThread.set(`${e.pid}/${e.tid}`, [...(byThread.get(`${e.pid}/${e.tid}`) ?? []), e]);
    for (const slices of byThread.values()) {
      slices.sort((a, b) => a.ts! - b.ts!);
      for (let i = 1; i < slices.length; i++)
        expect(slices[i]!.ts!).toBeGreaterThanOrEqual(slices[i - 1]!.ts! + slices[i - 1]!.dur!);
    }
    // Chunks 3, 4 and 5 of b were in flight at once: three fetch lanes.
    expect(
      new Set(
        of('X', 'fetch')
          .filter((e) => e.pid === 1)
          .map((e) => e.tid),
      ).size,
    ).toBe(3);
    expect(of('i').map((e) => [e.pid, e.cat, e.name])).toEqual([
      [1, 'chunk_failed', 'chunk 1 failed'],
      [1, 'parent_dropped', 'dropped a'],
      [1, 'fallback', 'fallback'],
    ]);
  });
});

describe('--until', () => {
  it('takes a duration ago or an ISO time', () => {
    expect(parseUntil('', T0)).toBeUndefined();
    expect(parseUntil('10m', T0)).toBe(T0 - 600_000);
    expect(parseUntil('2023-11-14T22:13:20Z', T0)).toBe(T0);
    expect(() => parseUntil('2023-13-45T99:99Z', T0)).toThrow(/not a time/);
  });
});
