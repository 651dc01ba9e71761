import { describe, expect, it } from 'vitest';
import { cdfChart } from './chart.js';

describe('cdfChart', () => {
  it('draws one step curve per scenario, stopping short for nodes that failed, and marks T_min', () => {
    const svg = cdfChart(
      [
        { name: 'shoal', values: [2, 1, 3] },
        { name: 'direct <a&b>', values: [10, Number.NaN] },
      ],
      { tMin: 1.5, title: 'test' },
    );
    expect(svg.startsWith('<svg')).toBe(true);
    const curves = [...svg.matchAll(/<polyline [^>]*points="([^"]+)"/g)].map((m) => m[1]!.split(' '));
    expect(curves).toHaveLength(2);
    // Start at 0, two points per node, then flat to the right edge.
    expect(curves[0]).toHaveLength(1 + 3 * 2 + 1);
    const topOf = (points: string[]) => Math.min(...points.map((p) => Number(p.split(',')[1])));
    // The failed node keeps the second curve at half height: its top is lower (a larger y) than the first's.
    expect(topOf(curves[1]!)).toBeGreaterThan(topOf(curves[0]!));
    expect(svg).toContain('T_min 1.5 s');
    expect(svg).toContain('direct &lt;a&amp;b&gt;');
  });
});
