/**
 * The agent's cache and limits against real processes: an evicted blob leaves the scheduler's plans at
 * once, a killed agent keeps what it had verified, and its download rate holds what it is told, also
 * after a change at run time.
 */
import { randomBytes } from 'node:crypto';
import { readdir, stat, truncate } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { limitsPath, MESH_TOKEN_HEADER, peerTokenSource } from '@shoal/mesh';
import {
  freePort,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  startNats,
  startRegistry,
  waitFor,
} from './kit/index.js';
import { pushBlob } from './support/blobs.js';
import {
  bytesServed,
  type ControlPlane,
  meshSecret,
  metric,
  type ShoalService,
  startAgent,
  startControlPlane,
  waitForHolders,
  waitForNodes,
} from './support/shoal.js';

const MiB = 1024 * 1024;
const REPO = 'team/tiers';
const hexOf = (digest: string) => digest.slice('sha256:'.length);
const meshAuth = () => ({ [MESH_TOKEN_HEADER]: peerTokenSource(meshSecret, 'test')() });

async function putLimits(agent: ShoalService, change: Record<string, unknown>): Promise<void> {
  const res = await fetch(`${agent.url}${limitsPath}`, {
    method: 'PUT',
    headers: { ...meshAuth(), 'content-type': 'application/json' },
    body: JSON.stringify(change),
  });
  expect(res.status, await res.clone().text()).toBe(200);
  await res.body?.cancel();
}

/**
 * Pulls a blob through an agent, recording when the received bytes first reached each MiB, so a rate
 * can be read off any window of the transfer.
 */
async function timedPull(agent: ShoalService, digest: string): Promise<{ body: Buffer; atMiB: number[] }> {
  const began = performance.now();
  const atMiB: number[] = [];
  const parts: Buffer[] = [];
  let received = 0;
  await new Promise<void>((resolve, reject) => {
    const req = httpRequest(`${agent.url}/v2/${REPO}/blobs/${digest}`, (res) => {
      if (res.statusCode !== 200) reject(new Error(`pull answered ${res.statusCode}`));
      res.on('data', (part: Buffer) => {
        parts.push(part);
        received += part.length;
        while ((atMiB.length + 1) * MiB <= received) atMiB.push(performance.now() - began);
      });
      res.once('end', resolve);
      res.once('error', reject);
    });
    req.once('error', reject);
    req.end();
  });
  return { body: Buffer.concat(parts), atMiB };
}

/** Bytes per second between the moments the transfer reached `fromMiB` and `toMiB`. */
function rateBetween(atMiB: number[], fromMiB: number, toMiB: number): number {
  const from = atMiB[fromMiB - 1];
  const to = atMiB[toMiB - 1];
  if (from === undefined || to === undefined) throw new Error('window outside the transfer');
  return ((toMiB - fromMiB) * MiB) / ((to - from) / 1000);
}

describe('cache tiers and limits through real agents', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  const started: ShoalService[] = [];
  let control: ControlPlane | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('tiers');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
  });
  afterEach(async () => {
    registry.setFault();
    await Promise.allSettled(started.splice(0).map((agent) => agent.stop()));
    await control?.stop();
    control = undefined;
  });
  afterAll(async () => {
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('stops planning an evicted node within a second', async () => {
    control = await startControlPlane(nats.url, dir, [registry.url]);
    const options = {
      natsUrl: nats.url,
      registries: [registry.url],
      dir,
      extraArgs: ['--scheduler-timeout=10s'],
    };
    const a = await startAgent({ ...options, id: 'evict-a' });
    const c = await startAgent({ ...options, id: 'evict-c' });
    started.push(a, c);
    await waitForNodes(nats.url, ['evict-a', 'evict-c']);
    const blob = randomBytes(8 * MiB);
    const digest = await pushBlob(registry.url, REPO, blob);
    expect((await timedPull(a, digest)).body.equals(blob)).toBe(true);
    await waitForHolders(nats.url, 'evict-a', [digest]);

    const nc = await connect({ servers: nats.url });
    let gone: number;
    try {
      const kv = await new Kvm(nc).open('shoal_chunks');
      const began = performance.now();
      // A cache of one byte: everything not in use goes at once.
      await putLimits(a, { cacheMaxSize: 1 });
      await waitFor(async () => !(await kv.get(`h.${hexOf(digest)}.evict-a`))?.value.length, {
        timeoutMs: 1_000,
        intervalMs: 5,
        what: 'the holder record of the evicted blob to go',
      });
      gone = performance.now() - began;
    } finally {
      await nc.close();
    }
    console.log(`evicted blob out of the chunk index ${gone.toFixed(0)} ms after the limits call`);
    expect(gone).toBeLessThan(1_000);

    // C's pull now finds no holder: nothing is planned from A, which would have nothing to send.
    registry.clearRequests();
    expect((await timedPull(c, digest)).body.equals(blob)).toBe(true);
    expect(metric(await a.metrics(), 'shoal_agent_peer_upload_bytes_total')).toBe(0);
    expect(
      metric(await c.metrics(), 'shoal_agent_chunk_failures_total', {
        source: 'peer',
        reason: 'unavailable',
      }),
    ).toBe(0);
    expect(bytesServed(registry, digest)).toBe(blob.length);
  });

  it('restarts after SIGKILL mid-download and fetches only what it did not keep', async () => {
    const agentPort = await freePort();
    const options = {
      id: 'restart',
      natsUrl: nats.url,
      registries: [registry.url],
      dir,
      port: agentPort,
    };
    let agent = await startAgent(options);
    started.push(agent);
    const blob = randomBytes(32 * MiB);
    const digest = await pushBlob(registry.url, REPO, blob);
    // 1 MiB chunks at 512 KiB/s each, 8 at once: about 8 s for the blob.
    registry.setFault({ bytesPerSecond: 512 * 1024, match: /\/blobs\//, methods: ['GET'] });
    const pulling = timedPull(agent, digest).catch(() => undefined);
    await waitFor(
      async () =>
        metric(await agent.metrics(), 'shoal_agent_fetch_bytes_total', { source: 'origin' }) >= 8 * MiB,
      { timeoutMs: 20_000, intervalMs: 50, what: 'a quarter of the blob to arrive' },
    );
    await agent.stop('SIGKILL');
    started.splice(started.indexOf(agent), 1);
    await pulling;
    registry.setFault();

    // One of the chunks it kept loses its tail, as a disk might lose it.
    const blobDir = join(dir, 'restart', 'cache', 'blobs', 'sha256', hexOf(digest));
    const chunkFiles = (await readdir(blobDir)).filter((name) => /^\d+$/.test(name));
    const kept = new Map<number, number>();
    for (const name of chunkFiles) kept.set(Number(name), (await stat(join(blobDir, name))).size);
    const damaged = Math.min(...kept.keys());
    await truncate(join(blobDir, String(damaged)), 1000);
    kept.delete(damaged);
    const keptBytes = [...kept.values()].reduce((sum, size) => sum + size, 0);
    expect(kept.size).toBeGreaterThan(0);
    expect(keptBytes).toBeLessThan(blob.length);

    registry.clearRequests();
    agent = await startAgent(options);
    started.push(agent);
    const discarded = metric(await agent.metrics(), 'shoal_agent_cache_discarded_files_total', {
      reason: 'wrong_size',
    });
    const again = await timedPull(agent, digest);
    expect(again.body.equals(blob)).toBe(true);
    const fetched = bytesServed(registry, digest);
    console.log(
      `restart: ${kept.size} chunks kept (${(keptBytes / MiB).toFixed(0)} MiB), 1 truncated; fetched ${(fetched / MiB).toFixed(0)} MiB of ${(blob.length / MiB).toFixed(0)} MiB`,
    );
    expect(discarded).toBe(1);
    expect(fetched).toBe(blob.length - keptBytes);
  });

  it('holds download.rate within 5%, and a new rate set at run time', async () => {
    const agent = await startAgent({
      id: 'rate',
      natsUrl: nats.url,
      registries: [registry.url],
      dir,
      extraArgs: ['--download-rate=8MB'],
    });
    started.push(agent);
    const first = randomBytes(40_000_000);
    const firstDigest = await pushBlob(registry.url, REPO, first);
    const pulled = await timedPull(agent, firstDigest);
    expect(pulled.body.equals(first)).toBe(true);
    // The first 8 MiB pass at once (the burst); the rate is read over the 20 MiB after.
    const rate = rateBetween(pulled.atMiB, 14, 34);
    console.log(`download.rate 8 MB/s: measured ${(rate / 1e6).toFixed(3)} MB/s over MiB 14-34`);
    expect(Math.abs(rate / 8e6 - 1)).toBeLessThan(0.05);

    await putLimits(agent, { downloadRate: 4_000_000 });
    const second = randomBytes(24_000_000);
    const secondDigest = await pushBlob(registry.url, REPO, second);
    const repulled = await timedPull(agent, secondDigest);
    expect(repulled.body.equals(second)).toBe(true);
    const newRate = rateBetween(repulled.atMiB, 12, 22);
    console.log(
      `download.rate 4 MB/s set at run time: measured ${(newRate / 1e6).toFixed(3)} MB/s over MiB 12-22`,
    );
    expect(Math.abs(newRate / 4e6 - 1)).toBeLessThan(0.05);
  });
});
