/**
 * The cache on a disk that is really full: a small tmpfs mounted for each test, so writes fail with
 * ENOSPC as they would on a node. The store must leave no partial file, make room by evicting what is
 * not in use, and say when it cannot; a pull through an agent whose disk is full must still complete,
 * served uncached. Skipped where a tmpfs cannot be mounted (it needs root or CAP_SYS_ADMIN).
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createLogger, loadConfig, peerTokenSource } from '@shoal/mesh';
import { type Agent, createAgent } from '../src/agent.js';
import { agentSpec } from '../src/config.js';
import { ChunkStore, type EvictReason, isDiskFull } from '../src/store.js';
import { type FakeRegistry, randomBlob, startFakeRegistry } from './fake-registry.js';

const KiB = 1024;
const hexOf = (n: number) => n.toString(16).padStart(64, '0');
const hashOf = (hex: string, index: number) => `${hex.slice(0, 60)}${index.toString(16).padStart(4, '0')}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function mount(dir: string, bytes: number): string | undefined {
  const result = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir], {
    encoding: 'utf8',
  });
  if (result.error) return result.error.message;
  return result.status === 0 ? undefined : result.stderr.trim() || `exit ${result.status}`;
}

function unmount(dir: string): void {
  if (spawnSync('umount', [dir]).status !== 0) spawnSync('umount', ['-l', dir]);
}

/** Why a tmpfs cannot be mounted here, or undefined when it can. */
const cannotMount = await (async () => {
  const probe = await mkdtemp(join(tmpdir(), 'shoal-mount-probe-'));
  try {
    const problem = mount(probe, 64 * KiB);
    if (problem === undefined) unmount(probe);
    return problem;
  } finally {
    await rm(probe, { recursive: true, force: true });
  }
})();

/** Every file under `dir` whose name ends in .tmp. */
async function temporaryFiles(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && entry.name.endsWith('.tmp')) found.push(join(entry.parentPath, entry.name));
  }
  return found;
}

async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

describe.skipIf(cannotMount !== undefined)(
  `a cache on a full disk${cannotMount === undefined ? '' : ` (skipped: cannot mount a tmpfs: ${cannotMount})`}`,
  () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'shoal-disk-full-'));
    });
    afterEach(async () => {
      unmount(dir);
      await rm(dir, { recursive: true, force: true });
    });

    /** A fresh tmpfs of `bytes` at `dir`. */
    const smallDisk = (bytes: number) => {
      const problem = mount(dir, bytes);
      if (problem !== undefined) throw new Error(`mount: ${problem}`);
    };

    describe('chunk store', () => {
      let clock: number;
      let evicted: { hex: string; reason: EvictReason }[];
      beforeEach(() => {
        clock = Date.now();
        evicted = [];
      });
      const makeStore = async (options: { maxBytes?: number; lowWatermark?: number } = {}) => {
        const store = new ChunkStore(join(dir, 'cache'), {
          now: () => clock,
          onEvict: (hex, reason) => evicted.push({ hex, reason }),
          diskFullRetryMs: 1_000,
          ...options,
        });
        await store.open();
        return store;
      };

      it('leaves no partial file when a write finds the disk full, and refuses writes for a while', async () => {
        smallDisk(256 * KiB);
        const store = await makeStore();
        const hex = hexOf(1);
        // 32 chunks of 16 KiB: twice the disk.
        await store.ensure({ digest: `sha256:${hex}`, size: 32 * 16 * KiB, chunkSize: 16 * KiB });
        let failed: { index: number; err: unknown } | undefined;
        for (let i = 0; i < 32 && !failed; i++) {
          clock += 10;
          await store.writeChunk(hex, i, Buffer.alloc(16 * KiB, i), hashOf(hex, i)).catch((err: unknown) => {
            failed = { index: i, err };
          });
        }
        expect(failed).toBeDefined();
        expect(isDiskFull(failed!.err)).toBe(true);
        expect(store.has(hex, failed!.index)).toBe(false);
        expect(await temporaryFiles(join(dir, 'cache'))).toEqual([]);
        // sha256sums holds whole lines only, one per chunk kept (and maybe one for the chunk that failed).
        const sums = await readFile(join(dir, 'cache', 'blobs', 'sha256', hex, 'sha256sums'), 'utf8');
        expect(sums.endsWith('\n')).toBe(true);
        for (const line of sums.trimEnd().split('\n')) expect(line).toMatch(/^\d+ [a-f0-9]{64}$/);
        expect(store.canStore(1)).toBe(false);
        expect(store.stats()).toMatchObject({ diskFull: true, diskFullWrites: 1 });

        // Until the retry interval has passed, the next write fails without trying the disk.
        const next = failed!.index + 1;
        const refused = await store.writeChunk(hex, next, Buffer.alloc(16 * KiB), hashOf(hex, next)).then(
          () => undefined,
          (err: unknown) => err,
        );
        expect(isDiskFull(refused)).toBe(true);
        expect((refused as Error).message).toMatch(/was full less than/);
        expect(store.stats().diskFullWrites).toBe(2);

        // Then it tries again (and fails again: the disk is still full), and after a restart the store
        // opens what it kept, discarding nothing.
        clock += 1_001;
        expect(store.diskFull).toBe(false);
        await expect(
          store.writeChunk(hex, next, Buffer.alloc(16 * KiB), hashOf(hex, next)),
        ).rejects.toMatchObject({ code: 'ENOSPC' });
        await store.close();
        const reopened = new ChunkStore(join(dir, 'cache'));
        const report = await reopened.open();
        expect(report.discarded).toEqual([]);
        expect(report.corruptSumsLines).toBe(0);
        expect(report.chunks).toBe(failed!.index);
      });

      it('makes room by evicting the least recently used blobs not in use, then writes', async () => {
        smallDisk(256 * KiB);
        const store = await makeStore();
        // Blobs of one 24 KiB chunk until the disk is nearly full; the second is kept in use.
        const blobs: string[] = [];
        for (let n = 1; (await freeBytes(dir)) > 40 * KiB; n++) {
          clock += 10;
          const hex = hexOf(n);
          await store.ensure({ digest: `sha256:${hex}`, size: 24 * KiB, chunkSize: 24 * KiB });
          await store.writeChunk(hex, 0, Buffer.alloc(24 * KiB, n), hashOf(hex, 0));
          blobs.push(hex);
        }
        const release = store.pin(blobs[1]!);
        clock += 10;
        const big = hexOf(100);
        await store.ensure({ digest: `sha256:${big}`, size: 64 * KiB, chunkSize: 64 * KiB });
        await store.writeChunk(big, 0, Buffer.alloc(64 * KiB, 100), hashOf(big, 0));

        expect(store.has(big, 0)).toBe(true);
        // The oldest first, skipping the one in use, down to the low watermark of what the cache held.
        const order = blobs.filter((hex) => hex !== blobs[1]);
        expect(evicted.length).toBeGreaterThan(0);
        expect(evicted).toEqual(order.slice(0, evicted.length).map((hex) => ({ hex, reason: 'disk_full' })));
        expect(store.get(blobs[1]!)).toBeDefined();
        expect(store.diskFull).toBe(false);
        expect(await temporaryFiles(join(dir, 'cache'))).toEqual([]);
        release();
      });

      it('fails a write when only blobs in use are left, and a removal ends the refusal', async () => {
        smallDisk(128 * KiB);
        const store = await makeStore();
        const hex = hexOf(1);
        const release = store.pin(hex);
        await store.ensure({ digest: `sha256:${hex}`, size: 16 * 16 * KiB, chunkSize: 16 * KiB });
        let index = 0;
        for (; index < 16; index++) {
          const ok = await store.writeChunk(hex, index, Buffer.alloc(16 * KiB), hashOf(hex, index)).then(
            () => true,
            (err: unknown) => {
              expect(isDiskFull(err)).toBe(true);
              return false;
            },
          );
          if (!ok) break;
        }
        expect(index).toBeLessThan(16);
        expect(evicted).toEqual([]);
        expect(store.diskFull).toBe(true);
        release();
        await store.remove(hex);
        expect(store.diskFull).toBe(false);
        expect(store.canStore(1)).toBe(true);
      });

      it('answers for parked chunks without counting them, until they are let go', async () => {
        smallDisk(256 * KiB);
        const store = await makeStore({ maxBytes: 1024 * KiB });
        const hex = hexOf(3);
        await store.ensure({ digest: `sha256:${hex}`, size: 3 * 16 * KiB, chunkSize: 16 * KiB });
        await store.writeChunk(hex, 0, Buffer.alloc(16 * KiB, 1), hashOf(hex, 0));
        store.markParked(hex, 1, hashOf(hex, 1));
        store.markParked(hex, 2, hashOf(hex, 2));
        expect([0, 1, 2].map((i) => store.has(hex, i))).toEqual([true, true, true]);
        expect(store.get(hex)?.hashes.get(2)).toBe(hashOf(hex, 2));
        expect(store.totalBytes).toBe(16 * KiB);
        expect(store.parkedChunks(hex)).toBe(2);
        // A parked chunk written after all (room came back) is on disk from then on.
        await store.writeChunk(hex, 2, Buffer.alloc(16 * KiB, 2), hashOf(hex, 2));
        expect(store.totalBytes).toBe(32 * KiB);
        expect(store.parkedChunks(hex)).toBe(1);

        // Let go in the same tick as the last pin, before anyone can pin the blob again.
        const calls: boolean[] = [];
        const first = store.pin(hex);
        const second = store.pin(hex);
        store.afterUnpinned(hex, () => calls.push(store.isPinned(hex)));
        first();
        expect(calls).toEqual([]);
        second();
        expect(calls).toEqual([false]);
        expect(store.unpark(hex)).toBe(1);
        expect([0, 1, 2].map((i) => store.has(hex, i))).toEqual([true, false, true]);
        expect(store.get(hex)?.hashes.has(1)).toBe(false);
        store.afterUnpinned(hex, () => calls.push(true));
        expect(calls).toEqual([false, true]);
      });

      it('leaves no directory behind when a blob cannot even be registered', async () => {
        smallDisk(64 * KiB);
        const store = await makeStore();
        // Something else fills the disk.
        await writeFile(join(dir, 'ballast'), Buffer.alloc(await freeBytes(dir))).catch(() => undefined);
        const hex = hexOf(7);
        const err = await store.ensure({ digest: `sha256:${hex}`, size: 100, chunkSize: 100 }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(isDiskFull(err)).toBe(true);
        expect(await readdir(join(dir, 'cache', 'blobs', 'sha256'))).toEqual([]);
        expect(store.get(hex)).toBeUndefined();
        expect(store.canStore(1)).toBe(false);
      });
    });

    describe('agent', () => {
      let registry: FakeRegistry;
      const agents: Agent[] = [];
      beforeAll(async () => {
        registry = await startFakeRegistry();
      });
      afterEach(async () => {
        await Promise.allSettled(agents.splice(0).map((agent) => agent.stop()));
      });
      afterAll(async () => {
        await registry?.close();
      });

      const makeAgent = async (): Promise<Agent> => {
        const { config } = loadConfig(agentSpec, {
          argv: [
            '--node-id=full',
            `--cache-dir=${join(dir, 'cache')}`,
            `--registries=${registry.url}`,
            '--nats-servers=nats://127.0.0.1:1',
            '--peer-secret=disk-full-secret',
            '--chunk-size=64KiB',
            // Above the disk's real size: the watermarks cannot keep the disk from filling.
            '--cache-max-size=64MiB',
            '--log-level=silent',
          ],
          env: {},
          command: 'test',
        });
        const agent = await createAgent(config, createLogger('agent', 'silent'), () => 'http://127.0.0.1:1');
        agents.push(agent);
        await agent.start();
        return agent;
      };

      const metricValue = async (agent: Agent, name: string, labels: string) => {
        const text = (await agent.app.inject({ method: 'GET', url: '/metrics' })).payload;
        const line = new RegExp(`^${name}\\{[^}]*${labels}[^}]*\\} (\\S+)$`, 'm').exec(text);
        return Number(line?.[1] ?? 0);
      };

      it('serves a blob larger than its disk whole, uncached, and passes the next one through', async () => {
        smallDisk(256 * KiB);
        const agent = await makeAgent();
        const blob = randomBlob(1024 * KiB);
        const digest = registry.addBlob(blob);
        const hex = digest.slice('sha256:'.length);
        // Someone else reading the blob keeps its parked chunks in memory after the pull.
        const reading = agent.store.pin(hex);
        const res = await agent.app.inject({ method: 'GET', url: `/v2/team/app/blobs/${digest}` });
        expect(res.statusCode).toBe(200);
        expect(res.rawPayload.equals(blob)).toBe(true);
        expect(await metricValue(agent, 'shoal_agent_cache_full_total', 'action="uncached"')).toBeGreaterThan(
          0,
        );
        // What did not fit is parked: held for it, and served to peers from memory meanwhile.
        const parked = agent.store.parkedChunks(hex);
        expect(parked).toBeGreaterThan(0);
        expect(parked + agent.store.totalBytes / (64 * KiB)).toBe(16);
        expect(agent.memory.parking().chunks).toBe(parked);
        const last = 15;
        expect(agent.store.has(hex, last)).toBe(true);
        const peer = await agent.app.inject({
          method: 'GET',
          url: `/peer/v1/blobs/sha256/${hex}/chunks/${last}`,
          headers: { authorization: peerTokenSource('disk-full-secret', 'other')() },
        });
        expect(peer.statusCode).toBe(200);
        expect(peer.rawPayload.equals(blob.subarray(last * 64 * KiB))).toBe(true);

        // Once no one reads the blob, the parked chunks go: from memory, and from what the store answers.
        reading();
        // A second later (PARKED_LINGER_MS), once the mesh has surely heard of them.
        for (let i = 0; i < 300 && agent.memory.parking().chunks > 0; i++) await sleep(10);
        expect(agent.memory.parking()).toMatchObject({ chunks: 0, bytes: 0 });
        expect(agent.store.parkedChunks(hex)).toBe(0);
        expect(agent.store.has(hex, last)).toBe(false);
        expect(agent.store.get(hex)?.complete).toBe(false);
        expect(await temporaryFiles(join(dir, 'cache'))).toEqual([]);

        // The disk is known to be full: a blob asked for now goes to the registry directly.
        const other = randomBlob(512 * KiB);
        const otherDigest = registry.addBlob(other);
        const passed = await agent.app.inject({ method: 'GET', url: `/v2/team/app/blobs/${otherDigest}` });
        expect(passed.statusCode).toBe(200);
        expect(passed.rawPayload.equals(other)).toBe(true);
        expect(await metricValue(agent, 'shoal_agent_cache_full_total', 'action="passthrough"')).toBe(1);
      });
    });
  },
);
