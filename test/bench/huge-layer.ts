/**
 * `npm run bench:huge`: one huge layer (5 GiB by default) pulled by containerd's own client through an
 * agent, to see that the agent's memory stays bounded by its buffers and tiers, not by the blob, and
 * that offsets past 4 GiB are right.
 *
 * The layer is a sparse file (zeros) with random marks at a few offsets, two of them past 4 GiB, pushed
 * with the registry's monolithic upload and wrapped in a one-layer OCI image (a config blob and a tagged
 * manifest). A private containerd fetches the image with `ctr content fetch` and a hosts.toml that names
 * the agent as mirror and the registry as fallback, as the Helm chart sets nodes up; the benchmark then
 * checks that the pull went through the agent (the registry saw only the agent's range GETs for the
 * layer and nothing from containerd, the agent served the whole layer, containerd stored it). An HTTP
 * client then reads the layer again from the agent's cache (bytes discarded, throughput timed) and asks
 * for ranges around the marks, which are compared byte for byte. Peak RSS is VmHWM from
 * /proc/<pid>/status. Everything started is stopped and every temp dir removed at the end, on failure
 * and on interrupt.
 *
 *   npm run bench:huge -- [--gib 5]
 */
import { randomBytes } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import {
  makeTempDir,
  removeTempDir,
  startContainerd,
  startNats,
  startRegistry,
  writeHostsToml,
} from '../kit/index.js';
import { pushBlobFile } from '../support/blobs.js';
import { type Janitor, startJanitor } from '../support/janitor.js';
import { pushImageManifest } from '../support/manifests.js';
import {
  CHART_AGENT_ARGS,
  CHART_AGENT_ENV,
  CHART_AGENT_NODE_OPTIONS,
  metricSum,
  startAgent,
} from '../support/shoal.js';
import { table } from './report.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const REPO = 'bench/huge';
const TAG = 'v1';
/** A whole 5 GiB layer through a loaded two-core machine takes minutes; this only catches a hang. */
const CTR_TIMEOUT_MS = 30 * 60_000;
const BLOB_PATH = /^\/v2\/.+\/blobs\/sha256:[0-9a-f]{64}(?:\?.*)?$/;

function flagGiB(argv: string[]): number {
  const at = argv.findIndex((arg) => arg === '--gib' || arg.startsWith('--gib='));
  if (at === -1) return 5;
  const text = argv[at]?.includes('=') ? argv[at]?.split('=')[1] : argv[at + 1];
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) throw new Error('--gib wants a positive number');
  return value;
}

async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
  return Number(kib ?? 0) * 1024;
}

/** The 1, 5 and 15 minute load averages: other work on a two-core machine lowers every rate here. */
async function loadAverage(): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
}

/** GETs `url`, discarding the body (or keeping it, for small ranges); resolves with its length and bytes. */
function get(url: string, headers: Record<string, string> = {}, keep = false) {
  return new Promise<{ status: number; bytes: number; body: Buffer }>((resolve, reject) => {
    const req = httpRequest(url, { headers }, (res) => {
      let bytes = 0;
      const parts: Buffer[] = [];
      res.on('data', (part: Buffer) => {
        bytes += part.length;
        if (keep) parts.push(part);
      });
      res.once('end', () => resolve({ status: res.statusCode ?? 0, bytes, body: Buffer.concat(parts) }));
      res.once('error', reject);
    });
    req.once('error', reject);
    req.end();
  });
}

/**
 * Teardown steps, run last-in first-out exactly once: at the end, on error, or on a first interrupt. A
 * second interrupt does not wait for them: the kit kills its servers as this process exits, and the
 * janitor removes the dirs listed with the steps, as it does if this process is killed outright.
 */
function teardown(janitor: Janitor) {
  const steps: { what: string; run: () => Promise<unknown> }[] = [];
  let running: Promise<void> | undefined;
  const run = (): Promise<void> =>
    (running ??= (async () => {
      for (const step of steps.reverse()) {
        await step.run().catch((err: unknown) => {
          process.stderr.write(`bench:huge: stopping ${step.what} failed: ${String(err)}\n`);
        });
      }
    })());
  const interrupted = (signal: NodeJS.Signals): void => {
    if (running !== undefined) process.exit(130);
    process.stderr.write(`bench:huge: ${signal}, stopping what was started (again to hurry)\n`);
    void run().finally(() => process.exit(130));
  };
  process.on('SIGINT', interrupted);
  process.on('SIGTERM', interrupted);
  return {
    /** Adds a step; `dir`, the kit temp dir it removes, is also left to the janitor. */
    add(what: string, step: () => Promise<unknown>, dir?: string) {
      steps.push({ what, run: step });
      if (dir !== undefined) janitor.watch(dir);
    },
    run,
  };
}

async function main(): Promise<void> {
  const size = Math.round(flagGiB(process.argv.slice(2)) * GiB);
  const stops = teardown(await startJanitor());
  try {
    const loadBefore = await loadAverage();
    console.log(`load average before: ${loadBefore}`);
    // One at a time, so that whatever started is stopped even if the next one fails to start.
    const dir = await makeTempDir('bench-huge');
    stops.add('temp dir', () => removeTempDir(dir), dir);
    const nats = await startNats();
    stops.add('nats', () => nats.stop(), nats.dir);
    const registry = await startRegistry({ name: 'huge-registry' });
    stops.add('registry', () => registry.stop(), registry.dir);
    const containerd = await startContainerd({ name: 'huge-containerd' });
    stops.add('containerd', () => containerd.stop(), containerd.dir);

    // A sparse file: zeros everywhere except the marks.
    const layer = join(dir, 'layer');
    const marks = [0, 3 * GiB + 7, 4 * GiB + 12_345, size - 1000].filter((at) => at >= 0 && at < size);
    const markBytes = new Map<number, Buffer>();
    const file = await open(layer, 'w');
    try {
      await file.truncate(size);
      for (const at of marks) {
        const bytes = randomBytes(Math.min(64 * 1024, size - at));
        markBytes.set(at, bytes);
        await file.write(bytes, 0, bytes.length, at);
      }
    } finally {
      await file.close();
    }
    let began = performance.now();
    const digest = await pushBlobFile(registry.backendUrl, REPO, layer);
    const image = await pushImageManifest(registry.backendUrl, REPO, TAG, [{ digest, size }]);
    const ref = `${registry.host}/${REPO}:${TAG}`;
    console.log(
      `pushed ${size} bytes as ${digest} in ${((performance.now() - began) / 1000).toFixed(1)} s, ` +
        `tagged ${ref} (manifest ${image.manifestDigest})`,
    );

    // The agent runs as the Helm chart runs it: its Node.js flags and its memory tier.
    const agent = await startAgent({
      id: 'huge',
      natsUrl: nats.url,
      registries: [registry.url],
      dir,
      nodeArgs: CHART_AGENT_NODE_OPTIONS,
      env: CHART_AGENT_ENV,
      extraArgs: CHART_AGENT_ARGS,
    });
    stops.add('agent', () => agent.stop());
    const hostsDir = join(dir, 'hosts');
    await writeHostsToml(hostsDir, registry.host, agent.url);

    // The cold pull, by containerd's own client: resolve and fetch through the mirror, digests verified.
    registry.clearRequests();
    const baseline = await peakRss(agent.process.pid);
    const containerdBaseline = await peakRss(containerd.process().pid);
    began = performance.now();
    const pulled = await containerd.ctr(['content', 'fetch', '--plain-http', '--hosts-dir', hostsDir, ref], {
      timeoutMs: CTR_TIMEOUT_MS,
    });
    const seconds = (performance.now() - began) / 1000;
    if (!pulled.ok)
      throw new Error(`ctr content fetch ${ref} failed (exit ${pulled.code}): ${pulled.stderr.trim()}`);
    const pullPeak = await peakRss(agent.process.pid);
    const containerdPeak = await peakRss(containerd.process().pid);

    // Proof that the pull went through the agent, from three sides.
    const problems: string[] = [];
    const layerGets = registry.blobGets(digest);
    const wholeLayerGets = layerGets.filter((r) => r.range === undefined);
    const registryLayerBytes = layerGets.reduce((sum, r) => sum + r.bytes, 0);
    const fromContainerd = registry
      .requests()
      .filter((r) => BLOB_PATH.test(r.path) && /containerd/i.test(r.userAgent ?? ''));
    if (wholeLayerGets.length > 0) problems.push(`${wholeLayerGets.length} whole-blob GETs of the layer`);
    if (fromContainerd.length > 0) problems.push(`${fromContainerd.length} blob requests from containerd`);
    if (registryLayerBytes !== size) problems.push(`the registry sent ${registryLayerBytes} layer bytes`);
    const clientBytes = metricSum(await agent.metrics(), 'shoal_agent_client_bytes_total');
    const expectedClientBytes = size + image.config.size;
    if (clientBytes !== expectedClientBytes)
      problems.push(`the agent served ${clientBytes} bytes, not ${expectedClientBytes} (layer and config)`);
    const stored = (await containerd.content()).includes(digest);
    if (!stored) problems.push(`containerd's content store lacks ${digest}`);
    console.log(
      `ctr content fetch: ${seconds.toFixed(1)} s; registry: ${layerGets.length} range GETs of the layer ` +
        `(${registryLayerBytes} bytes), ${wholeLayerGets.length} whole, ${fromContainerd.length} blob requests ` +
        `from containerd; agent served ${clientBytes} bytes (layer ${size} + config ${image.config.size}); ` +
        `layer ${stored ? 'in' : 'MISSING from'} containerd's content store; containerd peak RSS ` +
        `${(containerdBaseline / MiB).toFixed(0)} → ${(containerdPeak / MiB).toFixed(0)} MiB`,
    );

    // Cached now: the same again from the cache, with a plain HTTP client.
    began = performance.now();
    const cached = await get(`${agent.url}/v2/${REPO}/blobs/${digest}`);
    const cachedSeconds = (performance.now() - began) / 1000;
    if (cached.status !== 200 || cached.bytes !== size)
      problems.push(`cached read: ${cached.status}, ${cached.bytes} bytes`);
    let rangesOk = true;
    for (const [at, bytes] of markBytes) {
      const res = await get(
        `${agent.url}/v2/${REPO}/blobs/${digest}`,
        { range: `bytes=${at}-${at + bytes.length - 1}` },
        true,
      );
      const ok = res.status === 206 && res.body.equals(bytes);
      console.log(`range at ${at} (${(at / GiB).toFixed(2)} GiB): ${ok ? 'right bytes' : 'WRONG'}`);
      rangesOk &&= ok;
    }
    if (!rangesOk) problems.push('ranges came back wrong');
    const peak = await peakRss(agent.process.pid);
    console.log(`load average after: ${await loadAverage()}`);
    console.log(
      table([
        {
          layer: `${(size / GiB).toFixed(2)} GiB`,
          'chunk size': `${Math.round(size / Math.max(1, layerGets.length) / MiB)} MiB (${layerGets.length} chunks)`,
          'ctr content fetch through the agent': `${seconds.toFixed(1)} s, ${(size / seconds / 1e6).toFixed(0)} MB/s`,
          'from the cache (HTTP)': `${(size / cachedSeconds / 1e6).toFixed(0)} MB/s`,
          'RSS at start': `${(baseline / MiB).toFixed(0)} MiB`,
          'peak RSS (ctr pull)': `${(pullPeak / MiB).toFixed(0)} MiB`,
          'peak RSS (all)': `${(peak / MiB).toFixed(0)} MiB`,
          'ranges past 4 GiB': rangesOk ? 'right bytes' : 'WRONG',
        },
      ]),
    );
    if (problems.length > 0) {
      process.stderr.write(`bench:huge: ${problems.join('; ')}\n`);
      process.exitCode = 1;
    }
  } finally {
    await stops.run();
  }
}

await main();
