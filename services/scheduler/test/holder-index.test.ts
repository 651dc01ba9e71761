/** The per-chunk holder index must always equal what a full scan of holders and nodes would find. */
import { describe, expect, it } from 'vitest';
import { holderLists, tieredGroups } from '../src/holder-index.js';
import {
  applyIndexEvent,
  clearHolders,
  clearNodes,
  createIndexState,
  type IndexState,
} from '../src/index-state.js';
import { digestOf, hex, holder, node } from './fixtures.js';

const NOW = 1_700_000_000_000;
const blob = digestOf('a');

/** blob hex → chunk → sorted "zone/vswitch/node" entries, from the index. */
function fromIndex(state: IndexState): Map<string, Map<number, string[]>> {
  const out = new Map<string, Map<number, string[]>>();
  for (const [blobHex, index] of state.holderIndex) {
    const byChunk = new Map<number, string[]>();
    let length = 0;
    for (const placement of index.placed.values()) length = Math.max(length, placement.length);
    for (const byVswitch of index.groups.values()) {
      for (const group of byVswitch.values()) {
        for (let chunk = 0; chunk < length; chunk++) {
          for (const list of holderLists([group], chunk)) {
            for (const id of list) {
              const entries = byChunk.get(chunk) ?? [];
              entries.push(`${group.zone}/${group.vswitch}/${id}`);
              byChunk.set(chunk, entries);
            }
          }
        }
      }
    }
    for (const entries of byChunk.values()) entries.sort();
    out.set(blobHex, byChunk);
  }
  return out;
}

/** The same, by scanning every holder record whose node record is known. */
function fromScan(state: IndexState): Map<string, Map<number, string[]>> {
  const out = new Map<string, Map<number, string[]>>();
  for (const [blobHex, byNode] of state.holders) {
    const byChunk = new Map<number, string[]>();
    for (const entry of byNode.values()) {
      const record = state.nodes.get(entry.node);
      if (!record) continue;
      for (const chunk of entry.have.indices()) {
        const entries = byChunk.get(chunk) ?? [];
        entries.push(`${record.zone}/${record.vswitch}/${entry.node}`);
        byChunk.set(chunk, entries);
      }
    }
    if (byChunk.size === 0 && ![...byNode.keys()].some((n) => state.nodes.has(n))) continue;
    for (const entries of byChunk.values()) entries.sort();
    out.set(blobHex, byChunk);
  }
  return out;
}

/** Checks the index against a scan, and its internal bookkeeping (positions, counts, empty groups). */
function expectConsistent(state: IndexState): void {
  expect(fromIndex(state)).toEqual(fromScan(state));
  for (const index of state.holderIndex.values()) {
    expect(index.placed.size).toBeGreaterThan(0);
    let members = 0;
    for (const byVswitch of index.groups.values()) {
      expect(byVswitch.size).toBeGreaterThan(0);
      for (const group of byVswitch.values()) {
        expect(group.members).toBeGreaterThan(0);
        members += group.members;
        group.complete.forEach((id, at) => expect(index.placed.get(id)?.completeAt).toBe(at));
        group.partial.forEach((list, chunk) => {
          if (!list) return;
          expect(list.length).toBeGreaterThan(0);
          list.forEach((id, at) => expect(index.placed.get(id)?.positions?.[chunk]).toBe(at));
        });
      }
    }
    expect(members).toBe(index.placed.size);
  }
}

const putNode = (s: IndexState, id: string, zone: string, vswitch: string) =>
  applyIndexEvent(s, { type: 'node_put', node: node(id, zone, vswitch, NOW) });
const putHolder = (s: IndexState, id: string, chunks: number, have: number[] | 'all', b = 'a') =>
  applyIndexEvent(s, {
    type: 'holder_put',
    blobHex: hex(b),
    holder: holder(id, digestOf(b), chunks, have),
  });
const holdersOf = (s: IndexState, chunk: number) => {
  const index = s.holderIndex.get(hex('a'));
  if (!index) return [];
  const tiers = tieredGroups(index, undefined);
  return holderLists([...tiers.sameVswitch, ...tiers.sameZone, ...tiers.elsewhere], chunk)
    .flat()
    .sort();
};

describe('holder index', () => {
  it('lists each chunk’s holders, and follows a holder’s snapshots as chunks come and go', () => {
    const s = createIndexState();
    putNode(s, 'n1', 'z1', 'v1');
    putNode(s, 'n2', 'z1', 'v2');
    putHolder(s, 'n1', 16, [0, 1, 2]);
    putHolder(s, 'n2', 16, [2, 3]);
    expect(holdersOf(s, 2)).toEqual(['n1', 'n2']);
    expect(holdersOf(s, 0)).toEqual(['n1']);
    expect(holdersOf(s, 9)).toEqual([]);
    expectConsistent(s);

    // A newer snapshot replaces the old one: chunk 0 is gone, 9 and 15 are new.
    putHolder(s, 'n1', 16, [1, 2, 9, 15]);
    expect(holdersOf(s, 0)).toEqual([]);
    expect(holdersOf(s, 9)).toEqual(['n1']);
    expect(holdersOf(s, 15)).toEqual(['n1']);
    expectConsistent(s);

    applyIndexEvent(s, { type: 'holder_deleted', blobHex: hex('a'), node: 'n1' });
    expect(holdersOf(s, 2)).toEqual(['n2']);
    expectConsistent(s);
    applyIndexEvent(s, { type: 'holder_deleted', blobHex: hex('a'), node: 'n2' });
    expect(s.holderIndex.size).toBe(0);
    expect(s.blobsOf.size).toBe(0);
  });

  it('keeps a complete holder once per blob, and moves it back to per-chunk lists if it loses a chunk', () => {
    const s = createIndexState();
    putNode(s, 'n1', 'z1', 'v1');
    putHolder(s, 'n1', 10, [0, 1, 2]);
    putHolder(s, 'n1', 10, 'all');
    const group = s.holderIndex.get(hex('a'))?.groups.get('z1')?.get('v1');
    expect(group?.complete).toEqual(['n1']);
    expect(group?.partial.every((list) => list === undefined)).toBe(true);
    expect(holdersOf(s, 7)).toEqual(['n1']);
    expectConsistent(s);

    putHolder(s, 'n1', 10, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(group?.complete).toEqual([]);
    expect(holdersOf(s, 9)).toEqual([]);
    expect(holdersOf(s, 8)).toEqual(['n1']);
    expectConsistent(s);
  });

  it('places holders only while their node record is known, and follows a node that changes zone', () => {
    const s = createIndexState();
    // The chunks and nodes buckets are watched separately, so a holder may arrive before its node.
    putHolder(s, 'n1', 8, [0, 1]);
    expect(holdersOf(s, 0)).toEqual([]);
    putNode(s, 'n1', 'z1', 'v1');
    expect(holdersOf(s, 0)).toEqual(['n1']);
    expectConsistent(s);

    putNode(s, 'n1', 'z2', 'v9');
    expect(s.holderIndex.get(hex('a'))?.groups.get('z1')).toBeUndefined();
    expect(s.holderIndex.get(hex('a'))?.groups.get('z2')?.get('v9')?.partial[1]).toEqual(['n1']);
    expectConsistent(s);

    applyIndexEvent(s, { type: 'node_deleted', node: 'n1' });
    expect(holdersOf(s, 0)).toEqual([]);
    // The holder record is kept, so the node is a parent again as soon as it is back.
    expect(s.holders.get(hex('a'))?.has('n1')).toBe(true);
    putNode(s, 'n1', 'z1', 'v1');
    expect(holdersOf(s, 1)).toEqual(['n1']);
    expectConsistent(s);
  });

  it('ignores bits past the end of the blob in a holder record', () => {
    const s = createIndexState();
    putNode(s, 'n1', 'z1', 'v1');
    // 10 chunks take two bytes; 0xffff sets bits 10-15 too, which name no chunk.
    applyIndexEvent(s, {
      type: 'holder_put',
      blobHex: hex('a'),
      holder: { ...holder('n1', blob, 10, []), have: Buffer.from([0xff, 0xff]).toString('base64') },
    });
    expect(s.holderIndex.get(hex('a'))?.groups.get('z1')?.get('v1')?.complete).toEqual(['n1']);
    expectConsistent(s);
  });

  it('forgets everything derived when a bucket is reloaded', () => {
    const s = createIndexState();
    putNode(s, 'n1', 'z1', 'v1');
    putHolder(s, 'n1', 8, [0]);
    clearNodes(s);
    expect(s.holderIndex.size).toBe(0);
    putNode(s, 'n1', 'z1', 'v1');
    expect(holdersOf(s, 0)).toEqual(['n1']);
    clearHolders(s);
    expect(s.holderIndex.size).toBe(0);
    expect(s.blobsOf.size).toBe(0);
    putHolder(s, 'n1', 8, [3]);
    expect(holdersOf(s, 3)).toEqual(['n1']);
    expectConsistent(s);
  });

  it('stays equal to a full scan through a long random sequence of events', () => {
    let seed = 42;
    const random = () => {
      // mulberry32: a small, seeded generator, so that a failure reproduces.
      seed = (seed + 0x6d2b79f5) | 0;
      let t = seed;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
    const s = createIndexState();
    const ids = Array.from({ length: 12 }, (_, i) => `n${i}`);
    for (let step = 0; step < 3_000; step++) {
      const roll = random();
      const id = pick(ids);
      const b = pick(['a', 'b']);
      if (roll < 0.55) {
        const have =
          random() < 0.15 ? 'all' : Array.from({ length: 20 }, (_, i) => i).filter(() => random() < 0.5);
        putHolder(s, id, 20, have, b);
      } else if (roll < 0.7) {
        applyIndexEvent(s, { type: 'holder_deleted', blobHex: hex(b), node: id });
      } else if (roll < 0.9) {
        putNode(s, id, pick(['z1', 'z2', '']), pick(['v1', 'v2', '']));
      } else {
        applyIndexEvent(s, { type: 'node_deleted', node: id });
      }
      if (step % 25 === 0) expectConsistent(s);
    }
    expectConsistent(s);
  });
});
