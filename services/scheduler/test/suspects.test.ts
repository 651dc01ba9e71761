import type { NodeRecord } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { Suspects } from '../src/suspects.js';

const record = (id: string, seenAt: number): NodeRecord => ({
  id,
  url: `http://${id}:65001`,
  zone: 'z',
  vswitch: 'v',
  pool: '',
  startedAt: 0,
  seenAt,
});

function setup(quorum = 2) {
  const nodes = new Map<string, NodeRecord>([
    ['dead', record('dead', 1_000)],
    ['a', record('a', 1_000)],
  ]);
  const suspected: { node: string; reporters: string[] }[] = [];
  const suspects = new Suspects({
    quorum,
    forgetMs: 15_000,
    record: (node) => nodes.get(node),
    onSuspected: (node, reporters) => suspected.push({ node, reporters }),
  });
  return { nodes, suspects, suspected };
}

describe('suspects', () => {
  it('frees the leases of a node one node could not connect to, and suspects it once a quorum did', () => {
    const { suspects, suspected } = setup();
    expect(suspects.gone('dead')).toBe(false);
    suspects.report('n1', ['dead'], 2_000);
    suspects.report('n1', ['dead'], 2_100);
    expect(suspects.suspected('dead')).toBe(false);
    // One report frees its leases, a duplicate registry fetch at worst.
    expect(suspects.gone('dead')).toBe(true);
    suspects.report('n2', ['dead'], 2_200);
    expect(suspects.suspected('dead')).toBe(true);
    expect(suspects.gone('dead')).toBe(true);
    suspects.report('n3', ['dead'], 2_300);
    expect(suspected).toEqual([{ node: 'dead', reporters: ['n1', 'n2'] }]);
    expect(suspects.count()).toBe(1);
    expect(suspects.suspected('a')).toBe(false);
  });

  it('clears the suspicion when the node is heard from, and counts reports afresh from there', () => {
    const { nodes, suspects } = setup();
    suspects.report('n1', ['dead'], 2_000);
    suspects.report('n2', ['dead'], 2_000);
    expect(suspects.suspected('dead')).toBe(true);
    nodes.set('dead', record('dead', 3_000));
    expect(suspects.suspected('dead')).toBe(false);
    expect(suspects.gone('dead')).toBe(false);
    expect(suspects.count()).toBe(0);
    suspects.report('n1', ['dead'], 3_500);
    expect(suspects.suspected('dead')).toBe(false);
    suspects.report('n2', ['dead'], 3_600);
    expect(suspects.suspected('dead')).toBe(true);
  });

  it('starts over from reports older than forgetMs that never reached the quorum', () => {
    const { suspects } = setup();
    suspects.report('n1', ['dead'], 2_000);
    suspects.report('n2', ['dead'], 2_000 + 15_001);
    expect(suspects.suspected('dead')).toBe(false);
    suspects.report('n3', ['dead'], 2_000 + 15_002);
    expect(suspects.suspected('dead')).toBe(true);
  });

  it('takes no report of a node about itself', () => {
    const { suspects } = setup(1);
    suspects.report('dead', ['dead'], 2_000);
    expect(suspects.suspected('dead')).toBe(false);
    suspects.report('a', ['dead'], 2_000);
    expect(suspects.suspected('dead')).toBe(true);
  });

  it('counts a node whose record was deleted as gone until it is back, without suspecting it', () => {
    const { nodes, suspects } = setup();
    nodes.delete('dead');
    suspects.nodeDeleted('dead', 2_000);
    expect(suspects.gone('dead')).toBe(true);
    expect(suspects.suspected('dead')).toBe(false);
    nodes.set('dead', record('dead', 5_000));
    expect(suspects.gone('dead')).toBe(false);
    // A node never seen at all is not gone: it may not have been registered yet.
    expect(suspects.gone('new')).toBe(false);
  });

  it('keeps what it tracks bounded under a flood of made-up names', () => {
    const { suspects } = setup();
    for (let i = 0; i < 20_000; i++) suspects.report('n1', [`made-up-${i}`], 2_000);
    for (let i = 0; i < 20_000; i++) suspects.report('n2', [`made-up-${i}`], 2_000);
    expect(suspects.count()).toBeLessThanOrEqual(10_000);
  });
});
