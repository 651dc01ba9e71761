import { describe, expect, it } from 'vitest';
import type { ShoalEvent } from '@shoal/mesh';
import { matches } from '../src/events.js';
import { formatPulls, summarisePulls } from '../src/report.js';

const blob = `sha256:${'c'.repeat(64)}`;
const other = `sha256:${'d'.repeat(64)}`;
const at = 1_700_000_000_000;

const fetched = (node: string, index: number, source: 'peer' | 'origin', peer?: string): ShoalEvent => ({
  type: 'chunk_fetched',
  at,
  origin: node,
  node,
  blob,
  index,
  source,
  ...(peer ? { peer } : {}),
  bytes: 100,
  ms: 3,
});

describe('pull summaries', () => {
  it('attributes each chunk to the peer or origin it came from', () => {
    const events: ShoalEvent[] = [
      fetched('b', 0, 'peer', 'a'),
      fetched('b', 1, 'peer', 'a'),
      fetched('b', 2, 'origin'),
      {
        type: 'pull_finished',
        at,
        origin: 'b',
        node: 'b',
        blob,
        size: 300,
        ms: 42,
        ok: true,
        bytes: { peer: 200, origin: 100, cache: 0 },
        chunks: { peer: 2, origin: 1, cache: 0 },
      },
    ];
    const [pull] = summarisePulls(events);
    expect(pull).toMatchObject({
      node: 'b',
      blob,
      size: 300,
      ms: 42,
      ok: true,
      chunksBySource: { a: 2, origin: 1 },
    });
    expect(formatPulls(summarisePulls(events))).toMatch(
      /^b\s+sha256:cccccccccccc…\s+300 B\s+42 ms\s+ok\s+2 from a, 1 from origin$/m,
    );
  });

  it('reports a pull served entirely from the cache', () => {
    const [pull] = summarisePulls([
      {
        type: 'pull_finished',
        at,
        origin: 'a',
        node: 'a',
        blob,
        size: 300,
        ms: 2,
        ok: true,
        bytes: { peer: 0, origin: 0, cache: 300 },
        chunks: { peer: 0, origin: 0, cache: 3 },
      },
    ]);
    expect(pull?.chunksBySource).toEqual({ cache: 3 });
  });

  it('filters events by node, blob and type', () => {
    const event = fetched('b', 0, 'peer', 'a');
    expect(matches(event, { sinceMs: 0, node: 'b' })).toBe(true);
    expect(matches(event, { sinceMs: 0, node: 'a' })).toBe(false);
    expect(matches(event, { sinceMs: 0, blob: other })).toBe(false);
    expect(matches(event, { sinceMs: 0, type: 'chunk_failed' })).toBe(false);
  });
});
