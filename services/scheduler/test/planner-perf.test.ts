/**
 * Micro-benchmark of one scheduler decision at the scale the scheduler is meant for: 5,000 nodes in
 * 3 zones × 2 vSwitches, one blob of 1,024 chunks, half of the chunks held by about 30% of the nodes each
 * (and a few of those only inside one zone, so the zone gate is exercised), and 2,000 requests of 8 chunks.
 * It prints decision latency percentiles but asserts only correctness: timings on a shared test machine
 * are too noisy to fail a build on, and the figure that matters is read from the output.
 */
import { MiB, type NodeRecord, type ScheduleRequest } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { memoryGrantStore } from '../src/grants.js';
import { applyIndexEvent, createIndexState } from '../src/index-state.js';
import { decayingLoad, planRequest, topologyTier, type PlanOptions } from '../src/planner.js';
import { digestOf, hex, holder, manifest, node } from './fixtures.js';

const NODES = 5_000;
const CHUNKS = 1_024;
const REQUESTS = 2_000;
const PER_REQUEST = 8;
const WARMUP = 200;
const NOW = 1_700_000_000_000;
const blob = digestOf('b');
const options: PlanOptions = { nodeTtlMs: 15_000, retryMs: 250, maxAlternates: 3, originMaxPerRequest: 0 };

/** mulberry32: a small seeded generator, so that every run measures the same workload. */
function seeded(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

describe('planner at 5,000 nodes', () => {
  it('plans 2,000 requests of 8 chunks, every assignment valid', async () => {
    const random = seeded(7);
    const state = createIndexState();
    const records: NodeRecord[] = [];
    for (let i = 0; i < NODES; i++) {
      // vSwitch names repeat across zones, so a same-named vSwitch in another zone must not count as local.
      records.push(node(`n${i}`, `z${i % 3}`, `v${Math.floor(i / 3) % 2}`, NOW));
    }

    // Which chunks exist anywhere, and for a few of them, the one zone that has them.
    const available = Array.from({ length: CHUNKS }, () => random() < 0.5);
    const onlyInZone = available.map((yes) =>
      yes && random() < 0.1 ? `z${Math.floor(random() * 3)}` : null,
    );
    const holdings: number[][] = records.map(() => []);
    const holdersOf: NodeRecord[][] = Array.from({ length: CHUNKS }, () => []);
    records.forEach((record, i) => {
      for (let chunk = 0; chunk < CHUNKS; chunk++) {
        if (!available[chunk] || random() >= 0.3) continue;
        const zone = onlyInZone[chunk];
        if (zone && record.zone !== zone) continue;
        holdings[i]!.push(chunk);
        holdersOf[chunk]!.push(record);
      }
    });

    const heapBefore = process.memoryUsage().heapUsed;
    const built = performance.now();
    applyIndexEvent(state, { type: 'manifest_put', blobHex: hex('b'), manifest: manifest(blob, CHUNKS) });
    for (const record of records) applyIndexEvent(state, { type: 'node_put', node: record });
    records.forEach((record, i) => {
      applyIndexEvent(state, {
        type: 'holder_put',
        blobHex: hex('b'),
        holder: holder(record.id, blob, CHUNKS, holdings[i]!),
      });
    });
    const buildMs = performance.now() - built;
    const heapMb = (process.memoryUsage().heapUsed - heapBefore) / MiB;

    const store = memoryGrantStore({ perChunk: 1, perZone: 1, leaseMs: 10_000 });
    const load = decayingLoad(5_000);
    const byId = new Map(records.map((r) => [r.id, r]));
    const requests: ScheduleRequest[] = [];
    for (let i = 0; i < WARMUP + REQUESTS; i++) {
      const requester = records[Math.floor(random() * NODES)]!;
      const held = new Set(holdings[Number(requester.id.slice(1))]);
      const need = new Set<number>();
      while (need.size < PER_REQUEST) {
        const chunk = Math.floor(random() * CHUNKS);
        if (!held.has(chunk)) need.add(chunk);
      }
      requests.push({
        v: 1,
        node: requester.id,
        blob,
        size: CHUNKS * MiB,
        chunkSize: MiB,
        need: [...need],
        avoid: [],
      });
    }

    const latencies: number[] = [];
    const kinds = { peer: 0, origin: 0, wait: 0, crossZone: 0 };
    for (let i = 0; i < requests.length; i++) {
      const request = requests[i]!;
      const now = NOW + i;
      const started = performance.now();
      const plan = await planRequest(state, request, store, load, options, now);
      const elapsed = performance.now() - started;
      if (i >= WARMUP) latencies.push(elapsed);

      kinds.peer += plan.counts.peer;
      kinds.origin += plan.counts.origin;
      kinds.wait += plan.counts.wait;
      kinds.crossZone += plan.crossZone;
      expect(plan.assignments.map((a) => a.index)).toEqual(request.need);
      const requester = byId.get(request.node)!;
      for (const a of plan.assignments) {
        const holders = holdersOf[a.index]!.filter((h) => h.id !== requester.id);
        const inZone = holders.some((h) => topologyTier(requester, h) < 2);
        const mine = plan.grants.filter((g) => g.index === a.index && g.node === requester.id);
        if (a.source.kind === 'peer') {
          const parent = a.source.node;
          const source = holders.find((h) => h.id === parent);
          expect(source, `chunk ${a.index} from ${parent}`).toBeDefined();
          // The chosen parent is on the best tier any holder of the chunk is on.
          const best = Math.min(...holders.map((h) => topologyTier(requester, h)));
          expect(topologyTier(requester, source!)).toBe(best);
          // Leaving the zone needs the zone lease.
          if (!inZone) expect(mine.some((g) => g.zone === requester.zone)).toBe(true);
          const alternates = a.alternates.map((x) => x.node);
          expect(new Set([parent, ...alternates]).size).toBe(alternates.length + 1);
          for (const x of alternates) expect(holders.some((h) => h.id === x)).toBe(true);
        } else if (a.source.kind === 'origin') {
          expect(holders, `chunk ${a.index} is held, yet sent to the origin`).toHaveLength(0);
          expect(mine.some((g) => g.zone === undefined)).toBe(true);
          expect(mine.some((g) => g.zone === requester.zone)).toBe(true);
        } else {
          // Waiting is right only when no one in the zone can serve and the zone's lease is someone else's.
          expect(inZone).toBe(false);
        }
      }
    }

    latencies.sort((a, b) => a - b);
    const fmt = (ms: number) => `${(ms * 1000).toFixed(0)} µs`;
    console.log(
      [
        `planner at ${NODES} nodes, ${CHUNKS} chunks, ${REQUESTS} requests × ${PER_REQUEST} chunks (after ${WARMUP} warm-up):`,
        `  p50 ${fmt(percentile(latencies, 50))}, p99 ${fmt(percentile(latencies, 99))}, max ${fmt(latencies.at(-1) ?? NaN)}`,
        `  assignments: ${kinds.peer} peer, ${kinds.origin} origin, ${kinds.wait} wait, ${kinds.crossZone} across a zone boundary`,
        `  index built in ${buildMs.toFixed(0)} ms, heap +${heapMb.toFixed(1)} MiB (records and index)`,
      ].join('\n'),
    );
    expect(kinds.peer).toBeGreaterThan(0);
    expect(kinds.origin).toBeGreaterThan(0);
    expect(kinds.crossZone).toBeGreaterThan(kinds.origin);
  });
});
