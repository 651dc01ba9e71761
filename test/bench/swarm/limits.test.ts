/** How the limits scenario reads a rate off sampled counters. */
import { describe, expect, it } from 'vitest';
import { steadyRate } from './limits.js';

const MiB = 1024 * 1024;

/** A counter sampled every 500 ms that grows in whole chunks at `rate` after a burst and a late start. */
function sampled(rate: number, total: number, options: { startMs?: number; burst?: number } = {}) {
  const series: { t: number; bytes: number }[] = [];
  const startMs = options.startMs ?? 0;
  const burst = options.burst ?? 0;
  for (let t = 0; ; t += 500) {
    const flowing = Math.max(0, t - startMs) / 1000;
    const bytes = Math.min(total, t < startMs ? 0 : burst + Math.floor((flowing * rate) / MiB) * MiB);
    series.push({ t: 1_700_000_000_000 + t, bytes: 5 * MiB + bytes });
    if (bytes >= total) return series;
  }
}

describe('steadyRate', () => {
  it('reads the rate past the burst, the start-up and the tail, to within chunk rounding', () => {
    const rate = 1e6;
    const measured = steadyRate(sampled(rate, 64 * MiB, { startMs: 3_000, burst: 8 * MiB }));
    expect(Math.abs(measured / rate - 1)).toBeLessThan(0.02);
  });

  it('tells a counter held at half the rate from one at the rate', () => {
    const measured = steadyRate(sampled(2e6, 64 * MiB));
    expect(measured / 4e6).toBeCloseTo(0.5, 1);
  });

  it('gives NaN when too few samples fall in the middle of the transfer', () => {
    expect(steadyRate(sampled(64e6, 64 * MiB))).toBeNaN();
    expect(steadyRate([])).toBeNaN();
  });
});
