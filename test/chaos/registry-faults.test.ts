/**
 * Faults of the registry during a rollout: a share of blob requests answered 5xx, connections reset
 * before an answer, and a registry far slower than usual. Every pull must complete; the figures say how
 * many requests were retried and what the registry sent.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RegistryFault } from '../kit/index.js';
import {
  measureBaseline,
  BLOB_GETS,
  type Harness,
  MiB,
  report,
  type RolloutResult,
  startHarness,
  writeReport,
} from './harness.js';

describe('chaos: faults of the registry during a rollout', () => {
  let h: Harness;
  let baseline: RolloutResult;

  beforeAll(async () => {
    // Layers of 8 MiB: more ranges from the registry for its faults to land on.
    h = await startHarness({ name: 'registry', layerSize: 8 * MiB });
    baseline = await measureBaseline(
      h,
      'baseline-registry',
      'No fault: the reference for the registry faults.',
    );
  });

  afterEach(async () => {
    await h?.heal();
  });

  afterAll(async () => {
    await h?.stop();
  });

  /**
   * Runs a rollout with `fault` on the registry's blob GETs from its start (the first copy of each chunk
   * is what the registry serves; later the mesh does), and reports what the agents retried.
   */
  async function underFault(name: string, description: string, fault: RegistryFault) {
    const image = await h.pushImage(name);
    const digests = [image.config.digest, ...image.layers.map((l) => l.digest)];
    const seen = h.registry.requests().length;
    const result = await h.rollout(image, {
      fault: { atFraction: 0, inject: async () => h.registry.setFault({ ...BLOB_GETS, ...fault }) },
    });
    h.registry.setFault(h.baseFault);
    const requests = h.registry
      .requests()
      .slice(seen)
      .filter((r) => digests.some((d) => r.path.includes(d)));
    const verify = await h.verifyAgents(image);
    const originStatus = Object.fromEntries(
      Object.entries(result.counters).filter(([k]) => k.startsWith('shoal_agent_origin_requests_total')),
    );
    const faultedRanges = requests.filter((x) => x.fault !== undefined && x.range !== undefined).length;
    const originChunkFailures =
      result.counters['shoal_agent_chunk_failures_total{reason="error",source="origin"}'] ?? 0;
    const r = report(name, description, result, baseline, verify, {
      extra: {
        blobRequests: requests.length,
        injected5xx: requests.filter((x) => x.fault === '5xx').length,
        injectedResets: requests.filter((x) => x.fault === 'reset').length,
        faultedRanges,
        // Range GETs without a Range header come from containerd going to the registry itself.
        runtimeDirectGets: requests.filter((x) => x.method === 'GET' && x.range === undefined).length,
        originChunkFailures:
          result.counters['shoal_agent_chunk_failures_total{reason="error",source="origin"}'] ?? 0,
        originRequests: originStatus,
      },
    });
    await writeReport(r);
    for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
    expect(verify.corruptBytes).toBe(0);
    // Every refused range was noticed and asked for again by the agent that got it; none reached
    // containerd, which never had to go to the registry by itself.
    expect(originChunkFailures).toBe(faultedRanges);
    expect(requests.filter((x) => x.method === 'GET' && x.range === undefined)).toEqual([]);
    // The first copy of each layer's chunks still left the registry about once, not once per node (the
    // config blob, under origin.directMax, once per node).
    expect(r.registryEgressImages).toBeLessThan(1.5);
    return { result, report: r, requests };
  }

  it('10% of blob GETs answered 503: pulls complete, refused ranges retried', async () => {
    await underFault(
      'registry-5xx',
      '10% of blob GETs answered 503 by the registry, from the start of the rollout.',
      { status5xxRatio: 0.1, bytesPerSecond: h.baseFault.bytesPerSecond },
    );
  });

  it('10% of blob GETs reset before an answer: pulls complete, reset ranges retried', async () => {
    await underFault(
      'registry-resets',
      '10% of blob GETs had their connection reset by the registry before any answer, from the start of the rollout.',
      { resetRatio: 0.1, bytesPerSecond: h.baseFault.bytesPerSecond },
    );
  });

  it('a registry four times slower: pulls complete, the registry still sends each layer about once', async () => {
    await underFault(
      'registry-slow',
      'Blob GETs served at 256 KiB/s per request (four times slower than the baseline), from the start.',
      { bytesPerSecond: MiB / 4 },
    );
  });

  // The HEAD with which an agent authorises a blob is retried like a range: were it not, its 5xx or reset
  // would reach containerd, which would fetch the whole blob from the registry itself, outside the mesh
  // (and lose the pull when the registry refused that too). underFault checks that containerd never did.
  it('10% of every blob request, the authorising HEAD included, refused: pulls complete', async () => {
    await underFault(
      'registry-5xx-head',
      '10% of blob GETs and HEADs answered 503 by the registry, from the start of the rollout.',
      { status5xxRatio: 0.1, bytesPerSecond: h.baseFault.bytesPerSecond, methods: ['GET', 'HEAD'] },
    );
  });

  it('the first HEAD of every blob reset: each agent asks again, containerd never sees it', async () => {
    const { requests } = await underFault(
      'registry-head-resets',
      'The first HEAD for each blob in each repository had its connection reset, from the start of the rollout.',
      { resetRatio: 1, firstOnly: true, bytesPerSecond: h.baseFault.bytesPerSecond, methods: ['HEAD'] },
    );
    expect(requests.filter((x) => x.method === 'HEAD' && x.fault === 'reset').length).toBeGreaterThan(0);
  });
});
