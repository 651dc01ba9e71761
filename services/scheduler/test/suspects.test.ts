import type { NodeRecord } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { Suspects } from '../src/suspects.js';

const record = (id: string, heartbeatMs?: number): NodeRecord => ({
  id,
  url: `http://${id}:65001`,
  zone: 'z',
  vswitch: 'v',
  pool: '',
  startedAt: 0,
  seenAt: 0,
  ...(heartbeatMs === undefined ? {} : { heartbeatMs }),
});

/** 'dead' heartbeats every 1 s and was last heard from at 1 s; the reporters were heard from at 1 s too. */
function setup() {
  const nodes = new Map<string, NodeRecord>([['dead', record('dead', 1_000)]]);
  for (const id of ['n1', 'n2', 'n3']) nodes.set(id, record(id, 3_600_000));
  const told: { node: string; reporters: string[] }[] = [];
  const suspects = new Suspects({
    forgetMs: 15_000,
    record: (node) => nodes.get(node),
    onDead: (node, reporters) => told.push({ node, reporters }),
  });
  for (const id of nodes.keys()) suspects.heardFrom(id, 1_000);
  return { nodes, suspects, told };
}

describe('suspects', () => {
  it('takes a node for dead once another could not connect to it and it missed its heartbeats', () => {
    const { suspects, told } = setup();
    expect(suspects.gone('dead', 5_000)).toBe(false);
    suspects.report('n1', ['dead'], ['dead'], 2_000);
    // Reported, but heard from 1.5 s ago: 1.5 heartbeat intervals are allowed.
    expect(suspects.gone('dead', 2_500)).toBe(false);
    expect(suspects.gone('dead', 2_501)).toBe(true);
    suspects.report('n2', ['dead'], ['dead'], 2_600);
    expect(suspects.gone('dead', 2_700)).toBe(true);
    expect(told).toEqual([{ node: 'dead', reporters: ['n1'] }]);
    expect(suspects.count(2_700)).toBe(1);
  });

  it('takes no node for dead on its silence alone, nor a node that keeps being heard from on reports alone', () => {
    const { nodes, suspects } = setup();
    expect(suspects.gone('dead', 60_000)).toBe(false);
    nodes.set('alive', record('alive', 1_000));
    suspects.heardFrom('alive', 10_000);
    suspects.report('n1', ['alive'], ['alive'], 10_100);
    suspects.report('n2', ['alive'], ['alive'], 10_200);
    expect(suspects.gone('alive', 10_900)).toBe(false);
    // A heartbeat, or a schedule request of its own.
    suspects.heardFrom('alive', 11_000);
    expect(suspects.gone('alive', 12_000)).toBe(false);
  });

  it('clears when the node is heard from, and counts reports afresh from there', () => {
    const { suspects } = setup();
    suspects.report('n1', ['dead'], ['dead'], 2_000);
    expect(suspects.gone('dead', 3_000)).toBe(true);
    suspects.heardFrom('dead', 3_100);
    expect(suspects.gone('dead', 5_000)).toBe(false);
    expect(suspects.count(5_000)).toBe(0);
    suspects.report('n1', ['dead'], ['dead'], 5_000);
    expect(suspects.gone('dead', 5_000)).toBe(true);
  });

  it('counts only reports of nodes the reporter avoids, by known reporters, about known nodes, not itself', () => {
    const { suspects } = setup();
    suspects.report('n1', ['dead'], [], 2_000);
    suspects.report('stranger', ['dead'], ['dead'], 2_000);
    suspects.report('dead', ['dead'], ['dead'], 2_000);
    expect(suspects.gone('dead', 3_000)).toBe(false);
    suspects.heardFrom('made-up', 2_000);
    suspects.report('n1', ['made-up'], ['made-up'], 2_000);
    expect(suspects.gone('made-up', 3_000)).toBe(false);
  });

  it('reads the agents default heartbeat interval for records that do not say theirs', () => {
    const { nodes, suspects } = setup();
    nodes.set('old', record('old'));
    suspects.heardFrom('old', 1_000);
    suspects.report('n1', ['old'], ['old'], 2_000);
    expect(suspects.gone('old', 5_500)).toBe(false);
    expect(suspects.gone('old', 5_501)).toBe(true);
  });

  it('counts a node whose record was deleted as gone until it is back', () => {
    const { nodes, suspects } = setup();
    nodes.delete('dead');
    suspects.nodeDeleted('dead', 2_000);
    expect(suspects.gone('dead', 2_000)).toBe(true);
    nodes.set('dead', record('dead'));
    suspects.heardFrom('dead', 5_000);
    expect(suspects.gone('dead', 5_000)).toBe(false);
    // A node never seen at all is not gone: it may not have been registered yet.
    expect(suspects.gone('new', 5_000)).toBe(false);
  });

  it('looks at the first entries of a report only', () => {
    const { nodes, suspects } = setup();
    const many = Array.from({ length: 20 }, (_, i) => `x${i}`);
    for (const id of many) {
      nodes.set(id, record(id, 1_000));
      suspects.heardFrom(id, 1_000);
    }
    suspects.report('n1', many, many, 2_000);
    expect(suspects.count(3_000)).toBe(8);
  });
});
