/**
 * `npm run bench:huge`: one huge layer (5 GiB by default) pulled through an agent, to see that the
 * agent's memory stays bounded by its buffers and tiers, not by the blob, and that offsets past 4 GiB
 * are right. The layer is a sparse file (zeros) with random marks at a few offsets, two of them past
 * 4 GiB, pushed with the registry's monolithic upload. An HTTP client reads it whole through the agent
 * (bytes discarded, throughput timed), then asks for ranges around the marks and compares them. The
 * agent's peak RSS is VmHWM from /proc/<pid>/status.
 *
 *   npm run bench:huge -- [--gib 5]
 */
import { open } from 'node:fs/promises';
import { readFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { makeTempDir, removeTempDir, startNats, startRegistry } from '../kit/index.js';
import { pushBlobFile } from '../support/blobs.js';
import { metric, startAgent } from '../support/shoal.js';
import { table } from './report.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const REPO = 'bench/huge';

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

async function main(): Promise<void> {
  const size = Math.round(flagGiB(process.argv.slice(2)) * GiB);
  const dir = await makeTempDir('bench-huge');
  const nats = await startNats();
  const registry = await startRegistry();
  try {
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
    console.log(`pushed ${size} bytes as ${digest} in ${((performance.now() - began) / 1000).toFixed(1)} s`);

    const agent = await startAgent({ id: 'huge', natsUrl: nats.url, registries: [registry.url], dir });
    try {
      const baseline = await peakRss(agent.process.pid);
      began = performance.now();
      const whole = await get(`${agent.url}/v2/${REPO}/blobs/${digest}`);
      const seconds = (performance.now() - began) / 1000;
      if (whole.status !== 200 || whole.bytes !== size)
        throw new Error(`whole pull: ${whole.status}, ${whole.bytes} bytes`);
      const pullPeak = await peakRss(agent.process.pid);
      // Cached now: the same again from the cache.
      began = performance.now();
      const cached = await get(`${agent.url}/v2/${REPO}/blobs/${digest}`);
      const cachedSeconds = (performance.now() - began) / 1000;
      if (cached.bytes !== size) throw new Error(`cached pull: ${cached.bytes} bytes`);
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
      const metrics = await agent.metrics();
      const chunks = metric(metrics, 'shoal_agent_chunk_fetch_duration_seconds_count', { source: 'origin' });
      const peak = await peakRss(agent.process.pid);
      console.log(
        table([
          {
            layer: `${(size / GiB).toFixed(2)} GiB`,
            'chunk size': `${Math.round(size / chunks / MiB)} MiB (${chunks} chunks)`,
            'through the agent (registry → cache → client)': `${(size / seconds / 1e6).toFixed(0)} MB/s`,
            'from the cache': `${(size / cachedSeconds / 1e6).toFixed(0)} MB/s`,
            'RSS at start': `${(baseline / MiB).toFixed(0)} MiB`,
            'peak RSS (pull)': `${(pullPeak / MiB).toFixed(0)} MiB`,
            'peak RSS (all)': `${(peak / MiB).toFixed(0)} MiB`,
            'ranges past 4 GiB': rangesOk ? 'right' : 'WRONG',
          },
        ]),
      );
      if (!rangesOk) process.exitCode = 1;
    } finally {
      await agent.stop();
    }
  } finally {
    await Promise.allSettled([registry.stop(), nats.stop()]);
    await removeTempDir(dir);
  }
}

await main();
