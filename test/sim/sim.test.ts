/**
 * The simulator on small rollouts. Its clock is simulated and its randomness seeded, so these figures are
 * deterministic: they check the scheduler's behaviour (everyone completes, each chunk leaves the registry
 * about once, each zone pulls from outside about once), not the speed of this machine.
 */
import { describe, expect, it } from 'vitest';
import { schedulerSpec } from '@shoal/scheduler';
import { type SimConfig, simulate } from './sim.js';

const MiB = 1024 * 1024;
const base: SimConfig = {
  nodes: 120,
  zones: 3,
  vswitchesPerZone: 2,
  layers: 2,
  layerSize: 128 * MiB,
  nodeUp: 125e6,
  nodeDown: 125e6,
  originUp: 1.25e9,
  crossZone: 1.25e9,
  slots: 8,
  planAhead: 8,
  announceMs: 50,
  staggerS: 0,
  failFraction: 0,
  failAtS: 1,
  originPerChunk: schedulerSpec.originPerChunk.default,
  originMaxPerRequest: schedulerSpec.originMaxPerRequest.default,
  choose: true,
  retryMs: schedulerSpec.waitRetry.default,
  parentSlots: schedulerSpec.parentSlots.default,
  inOrder: schedulerSpec.inOrder.default,
  askWhenFree: 2,
  seed: 7,
};

describe('simulated rollouts', () => {
  it('completes every node near the bound with each chunk leaving the registry once', async () => {
    const result = await simulate(base, 'shoal');
    expect(result.incomplete).toBe(0);
    expect(result.completions).toHaveLength(120);
    expect(result.registryBytes / result.imageBytes).toBeLessThanOrEqual(1.1);
    for (const bytes of result.crossZoneBytesPerZone)
      expect(bytes / result.imageBytes).toBeLessThanOrEqual(1.2);
    expect(Math.max(...result.completions) / result.tMin).toBeLessThan(1.8);
  });

  it('beats both baselines on the same network', async () => {
    const [shoal, direct, wholeLayer] = await Promise.all([
      simulate(base, 'shoal'),
      simulate(base, 'direct'),
      simulate(base, 'whole-layer'),
    ]);
    const worst = (r: { completions: number[] }) => Math.max(...r.completions);
    expect(direct.registryBytes / direct.imageBytes).toBeCloseTo(120, 0);
    expect(worst(shoal)).toBeLessThan(worst(direct) / 2);
    expect(worst(shoal)).toBeLessThan(worst(wholeLayer));
  });

  it('completes every surviving node when a tenth of them fail mid-pull', async () => {
    const result = await simulate({ ...base, failFraction: 0.1, failAtS: 1 }, 'shoal');
    expect(result.failed).toBe(12);
    expect(result.incomplete).toBe(0);
    expect(result.completions).toHaveLength(108);
  });
});
