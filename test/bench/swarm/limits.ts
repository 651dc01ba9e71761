/**
 * The limits scenario of the swarm benchmark: the agents' rate limits, set at run time through their
 * limits API, measured on the emulated network while real pulls run through them.
 *
 * 1. **download.rate** — every node pulls the image with its download capped; each node's rate is read
 *    off its fetched-bytes counter (peers and registry together).
 * 2. **registry.rate** — one node pulls a second image, which nobody holds, with its registry traffic
 *    capped; its rate is read off its registry-fetched bytes.
 * 3. **peer.uploadRate** — that node, now the only holder of the second image, serves it to a few nodes
 *    that do not share (`share: false`) with its upload capped; its rate is read off its uploaded bytes.
 *
 * A sampler in the registry host's namespace reads every agent's counters twice a second. A rate is the
 * least-squares slope of a counter over the middle of its transfer (from 10% to 90% of the bytes, and
 * past the first burst), so the burst, the start-up and the tail do not count; bursts are set to one
 * chunk. Target: within ±5% of the configured rate.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { limitsPath, MESH_TOKEN_HEADER, peerTokenSource } from '@shoal/mesh';
import { runCommand, type BuiltImage } from '../../kit/index.js';
import { AGENT_PORT, scrape, startIn, type SwarmMesh } from './mesh.js';
import type { Network } from './network.js';

const MiB = 1024 * 1024;
const samplerScript = join(import.meta.dirname, 'sampler.mjs');
/** Bursts are one chunk (the default chunk size for these layers), so a rate is a rate from the start. */
const BURST = MiB;
const SAMPLE_MS = 500;
const TOLERANCE = 0.05;

const FETCHED = 'shoal_agent_fetch_bytes_total';
const FROM_REGISTRY = 'shoal_agent_fetch_bytes_total{source="origin"}';
const UPLOADED = 'shoal_agent_peer_upload_bytes_total';

export interface LimitsOptions {
  /** Where each phase's samples are kept (JSON lines), beside the results. */
  samplesDir: string;
  /** Bytes per second. */
  downloadRate: number;
  registryRate: number;
  uploadRate: number;
  /** Nodes that fetch the second image from its only holder in the upload phase. */
  uploadClients: number;
}

export interface LimitCheck {
  limit: 'download.rate' | 'registry.rate' | 'peer.uploadRate';
  /** Bytes per second. */
  configured: number;
  /** Measured bytes per second, per node measured. */
  measured: number[];
  /** The largest |measured / configured − 1| over the nodes measured. */
  worstDeviation: number;
  within: boolean;
  /** Seconds the pulls of the phase took, per node that pulled. */
  pullSeconds: number[];
  /**
   * What the pulling nodes' counters say about where their chunks came from and what went wrong, summed
   * over those nodes: bytes by source, failed chunk fetches and fallbacks to the registry by reason.
   */
  pulledBy: Record<string, number>;
}

/** Pulls `image` on the nodes with these indexes; resolves with each one's seconds (NaN: failed). */
export type PullOn = (image: BuiltImage, nodes: readonly number[]) => Promise<number[]>;

interface Sample {
  t: number;
  node: number;
  values: Record<string, number>;
}

export async function runLimits(
  network: Network,
  mesh: SwarmMesh,
  images: readonly [BuiltImage, BuiltImage],
  dir: string,
  pull: PullOn,
  options: LimitsOptions,
): Promise<LimitCheck[]> {
  const all = network.nodes.map((_, i) => i);
  const url = (i: number) => `http://${network.nodes[i]!.ip}:${AGENT_PORT}`;
  const setLimits = (nodes: readonly number[], change: Record<string, unknown>) =>
    putLimits(network, mesh.secret, nodes.map(url), change);
  const reset = { downloadRate: 0, registryRate: 0, uploadRate: 0, share: true };
  const checks: LimitCheck[] = [];

  const phase = async (
    limit: LimitCheck['limit'],
    configured: number,
    series: string,
    measuredOn: readonly number[],
    pulledOn: readonly number[],
    image: BuiltImage,
  ) => {
    const out = join(options.samplesDir, `samples-${limit}.jsonl`);
    const sampler = await startIn(
      network,
      network.registry,
      `sampler-${limit}`,
      process.execPath,
      [
        samplerScript,
        JSON.stringify({
          urls: network.nodes.map((_, i) => `${url(i)}/metrics`),
          names: [series],
          intervalMs: SAMPLE_MS,
          out,
        }),
      ],
      dir,
    );
    let pullSeconds: number[];
    const counters = () => pulledByCounters(network, pulledOn.map(url));
    const before = await counters();
    try {
      // One sample before the pulls, so each counter's starting value is known.
      await new Promise((resolve) => setTimeout(resolve, 2 * SAMPLE_MS));
      pullSeconds = await pull(image, pulledOn);
      await new Promise((resolve) => setTimeout(resolve, 2 * SAMPLE_MS));
    } finally {
      await sampler.stop('SIGTERM', 5_000);
    }
    const samples = (await readFile(out, 'utf8'))
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as Sample);
    const measured = measuredOn.map((node) =>
      steadyRate(
        samples.filter((s) => s.node === node).map((s) => ({ t: s.t, bytes: s.values[series] ?? 0 })),
      ),
    );
    const after = await counters();
    const pulledBy = Object.fromEntries(
      [...after]
        .map(([key, value]) => [key, value - (before.get(key) ?? 0)] as const)
        .filter(([, value]) => value > 0),
    );
    const worstDeviation = Math.max(...measured.map((rate) => Math.abs(rate / configured - 1)));
    checks.push({
      limit,
      configured,
      measured,
      worstDeviation,
      within: worstDeviation <= TOLERANCE,
      pullSeconds,
      pulledBy,
    });
  };

  // 1. Every node's download capped.
  await setLimits(all, { downloadRate: options.downloadRate, downloadBurst: BURST });
  await phase('download.rate', options.downloadRate, FETCHED, all, all, images[0]);
  await setLimits(all, reset);

  // 2. One node's registry traffic capped, on an image nobody holds.
  const seed = 0;
  await setLimits([seed], { registryRate: options.registryRate, registryBurst: BURST });
  await phase('registry.rate', options.registryRate, FROM_REGISTRY, [seed], [seed], images[1]);
  await setLimits([seed], reset);

  // 3. That node, the image's only holder, serves it to nodes that do not share, with its upload capped.
  const clients = all.slice(1, 1 + options.uploadClients);
  await setLimits(clients, { share: false });
  await setLimits([seed], { uploadRate: options.uploadRate, uploadBurst: BURST });
  await phase('peer.uploadRate', options.uploadRate, UPLOADED, [seed], clients, images[1]);
  await setLimits([...clients, seed], reset);
  return checks;
}

/**
 * The least-squares slope, in bytes per second, of a counter over the middle of its growth: the samples
 * from 10% to 90% of what it grew by (and past its first two chunks), so the start-up, the first burst
 * and the tail are left out. NaN when fewer than four samples fall in that window.
 */
export function steadyRate(series: readonly { t: number; bytes: number }[]): number {
  if (series.length === 0) return Number.NaN;
  const start = series[0]!.bytes;
  const grown = series[series.length - 1]!.bytes - start;
  const low = start + Math.max(0.1 * grown, 2 * BURST);
  const high = start + 0.9 * grown;
  const window = series.filter((s) => s.bytes >= low && s.bytes <= high);
  if (window.length < 4) return Number.NaN;
  const n = window.length;
  const meanT = window.reduce((sum, s) => sum + s.t, 0) / n;
  const meanB = window.reduce((sum, s) => sum + s.bytes, 0) / n;
  let num = 0;
  let den = 0;
  for (const s of window) {
    num += (s.t - meanT) * (s.bytes - meanB);
    den += (s.t - meanT) ** 2;
  }
  return den === 0 ? Number.NaN : (num / den) * 1000;
}

/** The counters of the given agents that say where chunks came from and what failed, summed. */
async function pulledByCounters(
  network: Network,
  agentUrls: readonly string[],
): Promise<Map<string, number>> {
  const sum = new Map<string, number>();
  const wanted = /^shoal_agent_(fetch_bytes_total|chunk_failures_total|fallbacks_total)\{/;
  for (const agentUrl of agentUrls) {
    for (const [key, value] of await scrape(network, network.registry, `${agentUrl}/metrics`)) {
      if (!wanted.test(key)) continue;
      const short = key.replace(/,?service="[^"]*"/, '').replace('{,', '{');
      sum.set(short, (sum.get(short) ?? 0) + value);
    }
  }
  return sum;
}

/** PUTs a change of limits to each agent's limits API, from inside the registry host's namespace. */
async function putLimits(
  network: Network,
  secret: string,
  agentUrls: readonly string[],
  change: Record<string, unknown>,
): Promise<void> {
  const headers = {
    [MESH_TOKEN_HEADER]: peerTokenSource(secret, 'bench')(),
    'content-type': 'application/json',
  };
  const script = `
    const { urls, headers, body } = JSON.parse(process.argv[1]);
    const failed = [];
    await Promise.all(urls.map(async (url) => {
      const res = await fetch(url, { method: 'PUT', headers, body });
      if (res.status !== 200) failed.push(url + ': ' + res.status + ' ' + (await res.text()));
    }));
    if (failed.length > 0) { process.stderr.write(failed.join('\\n')); process.exit(1); }`;
  const [cmd, args] = network.exec(network.registry, process.execPath, [
    '--input-type=module',
    '-e',
    script,
    JSON.stringify({
      urls: agentUrls.map((u) => `${u}${limitsPath}`),
      headers,
      body: JSON.stringify(change),
    }),
  ]);
  const result = await runCommand(cmd, args, { timeoutMs: 30_000 });
  if (!result.ok) throw new Error(`setting limits ${JSON.stringify(change)}: ${result.stderr.trim()}`);
}
