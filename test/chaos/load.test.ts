/**
 * Load on one agent: 300 clients GET the same blob at once. The agent must fetch each chunk from the
 * registry once however many clients ask, give every client the right bytes, and hold memory to a few
 * chunks' worth rather than a copy per client.
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { Agent, get } from 'node:http';
import { availableParallelism } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  startNats,
  startRegistry,
} from '../kit/index.js';
import {
  type ControlPlane,
  type ShoalService,
  startAgent,
  startControlPlane,
  waitForNodes,
} from '../support/shoal.js';
import { BLOB_GETS, MiB, percentile, round, writeReport } from './harness.js';

const CLIENTS = 300;
const BLOB_SIZE = 8 * MiB;
/** What the agent may hold per response while sending it: two 1 MiB buffers. */
const SEND_BUFFERS_PER_RESPONSE = 2 * MiB;

/** A field of /proc/<pid>/status in bytes (the kernel reports kB). */
async function procStatus(pid: number, field: 'VmRSS' | 'VmHWM'): Promise<number> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1];
  if (kb === undefined) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(kb) * 1024;
}

/** GETs `url` on its own connection and returns the sha256 and length of the body, and how long it took. */
function getBlob(
  url: string,
  agent: Agent,
): Promise<{ digest: string; bytes: number; status: number; ms: number }> {
  const began = performance.now();
  return new Promise((resolve, reject) => {
    const req = get(url, { agent }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (piece: Buffer) => {
        hash.update(piece);
        bytes += piece.length;
      });
      res.on('end', () =>
        resolve({
          digest: `sha256:${hash.digest('hex')}`,
          bytes,
          status: res.statusCode ?? 0,
          ms: Math.round(performance.now() - began),
        }),
      );
      res.on('error', reject);
    });
    req.setTimeout(120_000, () => req.destroy(new Error('timed out')));
    req.on('error', reject);
  });
}

describe('chaos: load on one agent', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let agent: ShoalService;

  beforeAll(async () => {
    dir = await makeTempDir('chaos-load');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
    // The same registry link as the rollouts: 1 MiB/s per blob request.
    registry.setFault({ bytesPerSecond: MiB, ...BLOB_GETS });
    control = await startControlPlane(nats.url, dir, [registry.url]);
    agent = await startAgent({ id: 'loaded', natsUrl: nats.url, registries: [registry.url], dir });
    await waitForNodes(nats.url, ['loaded']);
  });

  afterAll(async () => {
    await agent?.stop();
    await control?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it(`${CLIENTS} concurrent GETs of one blob: one registry fetch per chunk, every client the right bytes`, async () => {
    const [alone, shared] = await Promise.all([
      buildAndPushImage({ registry, repo: 'chaos/load', tag: 'alone', layers: 1, layerSize: BLOB_SIZE }),
      buildAndPushImage({ registry, repo: 'chaos/load', tag: 'shared', layers: 1, layerSize: BLOB_SIZE }),
    ]);
    const http = new Agent({ keepAlive: false, maxSockets: Infinity });
    const urlOf = (image: typeof alone) => `${agent.url}/v2/${image.repo}/blobs/${image.layers[0]!.digest}`;

    // The reference: one client alone on a blob no one has.
    const single = await getBlob(urlOf(alone), http);
    expect(single.digest).toBe(alone.layers[0]!.digest);

    const pid = agent.process.pid;
    const rssBefore = await procStatus(pid, 'VmRSS');
    // Resets the peak (VmHWM) to the current size, so the peak read afterwards is this test's.
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    let sampledPeak = rssBefore;
    const sampler = setInterval(() => {
      void procStatus(pid, 'VmRSS').then(
        (rss) => (sampledPeak = Math.max(sampledPeak, rss)),
        () => undefined,
      );
    }, 20);
    const layer = shared.layers[0]!;
    const began = performance.now();
    let results: Awaited<ReturnType<typeof getBlob>>[];
    try {
      results = await Promise.all(Array.from({ length: CLIENTS }, () => getBlob(urlOf(shared), http)));
    } finally {
      clearInterval(sampler);
    }
    const wallMs = Math.round(performance.now() - began);
    const peak = await procStatus(pid, 'VmHWM');
    http.destroy();

    const right = results.filter(
      (r) => r.status === 200 && r.digest === layer.digest && r.bytes === layer.size,
    );
    const gets = registry.blobGets(layer.digest);
    const ranges = gets.map((g) => {
      const [, start, end] = /^bytes=(\d+)-(\d+)$/.exec(g.range ?? '') ?? [];
      return { start: Number(start), end: Number(end) };
    });
    const rangeBytes = ranges.reduce((sum, r) => sum + (r.end - r.start + 1), 0);
    const times = results.map((r) => r.ms);
    const p99 = percentile(times, 99);

    const figures = {
      fault: 'load-300-gets',
      description: `${CLIENTS} concurrent GETs of one cold ${BLOB_SIZE / MiB} MiB blob against one agent (plain HTTP clients).`,
      nodes: 1,
      pullsTried: CLIENTS,
      pullsCompleted: right.length,
      pullsLost: CLIENTS - right.length,
      corruptBytesDelivered: results
        .filter((r) => r.status === 200 && r.digest !== layer.digest)
        .reduce((sum, r) => sum + r.bytes, 0),
      p50Ms: percentile(times, 50),
      p99Ms: p99,
      baselineP99Ms: single.ms,
      p99PenaltyMs: p99 - single.ms,
      registryEgressImages: round(
        registry
          .requests()
          .filter((r) => r.method === 'GET' && r.path.includes(layer.digest))
          .reduce((sum, r) => sum + r.bytes, 0) / layer.size,
        2,
      ),
      injectedAtMs: 0,
      pullsDoneBeforeInjection: 0,
      counters: {},
      extra: {
        wallMs,
        registryRangeGets: gets.length,
        registryRangeBytes: rangeBytes,
        blobBytes: layer.size,
        agentRssBeforeMiB: round(rssBefore / MiB, 1),
        agentPeakRssMiB: round(peak / MiB, 1),
        agentSampledPeakRssMiB: round(sampledPeak / MiB, 1),
        agentRssGrowthPerClientMiB: round((peak - rssBefore) / CLIENTS / MiB, 2),
        bytesServedMiB: round((right.length * layer.size) / MiB, 0),
      },
      machine: { cpus: availableParallelism() },
      at: new Date().toISOString(),
    };
    await writeReport(figures);

    expect(right).toHaveLength(CLIENTS);
    // Each chunk was fetched from the registry once: distinct ranges that add up to the blob, and nothing else.
    expect(gets.every((g) => g.range !== undefined)).toBe(true);
    expect(new Set(ranges.map((r) => r.start)).size).toBe(ranges.length);
    expect(rangeBytes).toBe(layer.size);
    // Memory stays within what the agent budgets per response (two 1 MiB send buffers, see
    // services/agent/src/file-sender.ts) plus some slack, far from a copy of the blob per client (2.4 GiB).
    expect(peak - rssBefore).toBeLessThan(CLIENTS * SEND_BUFFERS_PER_RESPONSE + 256 * MiB);
  });
});
