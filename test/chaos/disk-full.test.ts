/**
 * The cache disk full. Agents get a cache dir on a small tmpfs of their own, so their writes really fail
 * with ENOSPC: (a) a disk smaller than the image, with cache.maxSize above the disk's size so that the
 * watermarks cannot save it; (b) a disk filled by a ballast file mid-rollout, once the agent has its
 * first chunk of the image; (c) the watermarks at work under a cap smaller than two images while a blob
 * is being read by a stalled client. Every pull must complete (containerd checks every digest), the
 * agents must stay up, and no partial file may be left in their caches. Skipped, saying why, where a
 * tmpfs cannot be mounted (it needs root or CAP_SYS_ADMIN).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat, statfs, writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type BuiltImage, makeTempDir, removeTempDir, runCommand, waitFor } from '../kit/index.js';
import {
  metric,
  type Metrics,
  metricSum,
  type ShoalService,
  startAgent,
  waitForHolders,
} from '../support/shoal.js';
import {
  blobDigest,
  type ChaosNode,
  type Harness,
  measureBaseline,
  MiB,
  report,
  type RolloutResult,
  startHarness,
  writeReport,
} from './harness.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const hexOf = (digest: string) => digest.slice('sha256:'.length);

/** The nodes whose agents get a small disk in (a) and (b): one in each zone. */
const FULL_NODES = ['n1', 'n4'];

/** tmpfs mounted by this file; unmounted after each test, after all, and at exit whatever happened. */
const mounted = new Set<string>();
process.once('exit', () => {
  for (const dir of mounted) spawnSync('umount', ['-l', dir]);
});

async function mountTmpfs(dir: string, bytes: number): Promise<void> {
  const result = await runCommand('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir], {
    timeoutMs: 10_000,
  });
  if (!result.ok) throw new Error(`mount tmpfs on ${dir}: ${result.stderr.trim()}`);
  mounted.add(dir);
}

async function unmount(dir: string): Promise<void> {
  // A process that just exited may still hold a file open for a moment.
  for (let attempt = 0; attempt < 20; attempt++) {
    const result = await runCommand('umount', [dir], { timeoutMs: 10_000 });
    if (result.ok || /not mounted/.test(result.stderr)) {
      mounted.delete(dir);
      return;
    }
    await sleep(100);
  }
  const lazy = await runCommand('umount', ['-l', dir], { timeoutMs: 10_000 });
  mounted.delete(dir);
  if (!lazy.ok) throw new Error(`umount ${dir}: ${lazy.stderr.trim()}`);
}

/** Why a tmpfs cannot be mounted here (the file is then skipped), or undefined when it can. */
async function tmpfsProblem(): Promise<string | undefined> {
  const probe = await makeTempDir('mount-probe');
  try {
    const result = await runCommand('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], {
      timeoutMs: 10_000,
    });
    if (!result.ok) {
      return `mounting a tmpfs is not permitted here (${result.stderr.trim() || `exit ${result.code}`}); it needs root or CAP_SYS_ADMIN`;
    }
    await unmount(probe);
    return undefined;
  } catch (err) {
    return `cannot run mount: ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    await removeTempDir(probe);
  }
}

const cannotMount = await tmpfsProblem();
if (cannotMount !== undefined) console.warn(`[chaos] disk-full skipped: ${cannotMount}`);

/** Bytes a filesystem still has for an unprivileged writer. */
async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

/** What a cache dir holds, and every file in it that is not whole and verified. */
interface CacheState {
  blobs: number;
  chunks: number;
  chunkBytes: number;
  /** Temporary files, chunks of the wrong length or hash, unreadable meta.json, torn sha256sums lines. */
  partial: string[];
}

async function inspectCache(cacheDir: string): Promise<CacheState> {
  const state: CacheState = { blobs: 0, chunks: 0, chunkBytes: 0, partial: [] };
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const path = `${rel}${entry.name}`;
      if (entry.isDirectory()) await walk(join(dir, entry.name), `${path}/`);
      else if (entry.name.endsWith('.tmp')) state.partial.push(path);
    }
  };
  await walk(cacheDir, '');
  // A directory left in trash/ is an eviction that never finished deleting.
  for (const name of await readdir(join(cacheDir, 'trash')).catch(() => []))
    state.partial.push(`trash/${name}`);
  const root = join(cacheDir, 'blobs', 'sha256');
  for (const hex of await readdir(root).catch(() => [])) {
    const dir = join(root, hex);
    let meta: { size: number; chunkSize: number };
    try {
      meta = JSON.parse(await readFile(join(dir, 'meta.json'), 'utf8')) as typeof meta;
    } catch {
      state.partial.push(`${hex}/meta.json`);
      continue;
    }
    state.blobs++;
    const sums = new Map<number, string>();
    const text = await readFile(join(dir, 'sha256sums'), 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      const match = /^(\d+) ([a-f0-9]{64})$/.exec(line);
      if (match) sums.set(Number(match[1]), match[2]!);
      else if (line !== '') state.partial.push(`${hex}/sha256sums: "${line}"`);
    }
    if (text !== '' && !text.endsWith('\n')) state.partial.push(`${hex}/sha256sums: no final newline`);
    for (const name of await readdir(dir)) {
      if (!/^\d+$/.test(name)) continue;
      const index = Number(name);
      const bytes = await readFile(join(dir, name));
      const length = Math.min(meta.chunkSize, meta.size - index * meta.chunkSize);
      const sha256 = createHash('sha256').update(bytes).digest('hex');
      if (bytes.length !== length || sums.get(index) !== sha256) state.partial.push(`${hex}/${name}`);
      else {
        state.chunks++;
        state.chunkBytes += bytes.length;
      }
    }
  }
  return state;
}

/** An agent whose cache dir is on a tmpfs of its own, standing in for its node's usual agent. */
interface SmallDisk {
  node: ChaosNode;
  /** The tmpfs; the cache dir is `cache` inside it, and nothing else is written there unless a test does. */
  mount: string;
  cacheDir: string;
  size: number;
  agent: ShoalService;
}

/** Counters of one agent, as a delta between two scrapes, for the figures. */
function delta(before: Metrics, after: Metrics, names: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [key, value] of after) {
    if (!names.some((name) => key === name || key.startsWith(`${name}{`))) continue;
    const change = value - (before.get(key) ?? 0);
    if (change !== 0) out[key] = change;
  }
  return out;
}

/** Chunk bytes an agent fetched and verified, from peers and the registry. */
function fetchedBytes(metrics: Metrics): number {
  return (
    metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'peer' }) +
    metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'origin' })
  );
}

/** What a small-disk agent's log says about its cache (lines mentioning a full disk or an eviction). */
async function cacheLog(
  agent: ShoalService,
): Promise<{ enospc: number; evicted: { blob: string; reason: string }[] }> {
  const file = agent.process.logFile;
  const text = file === undefined ? '' : await readFile(file, 'utf8').catch(() => '');
  const evicted: { blob: string; reason: string }[] = [];
  let enospc = 0;
  for (const line of text.split('\n')) {
    if (/ENOSPC|disk is full|disk_full/.test(line)) enospc++;
    if (!line.includes('blob evicted from the cache')) continue;
    try {
      const entry = JSON.parse(line) as { blob: string; reason: string };
      evicted.push({ blob: entry.blob, reason: entry.reason });
    } catch {
      // Not a JSON line: not the agent's logger.
    }
  }
  return { enospc, evicted };
}

const CACHE_METRICS = [
  'shoal_agent_cache_full_total',
  'shoal_agent_cache_evictions_total',
  'shoal_agent_cache_evicted_bytes_total',
  'shoal_agent_fallbacks_total',
  'shoal_agent_fetch_bytes_total',
  'shoal_agent_peer_upload_bytes_total',
];

describe.skipIf(cannotMount !== undefined)(
  `chaos: the cache disk full${cannotMount === undefined ? '' : ` (skipped: ${cannotMount})`}`,
  () => {
    let h: Harness;
    let baseline: RolloutResult;
    const disks: SmallDisk[] = [];
    let made = 0;

    beforeAll(async () => {
      h = await startHarness({ name: 'disk-full' });
      baseline = await measureBaseline(
        h,
        'baseline-disk-full',
        'No fault: the reference for the disk faults.',
      );
    });

    /** Stops the small-disk agents and unmounts their disks; heal() then starts the usual agents again. */
    async function releaseDisks(): Promise<void> {
      for (const disk of disks.splice(0)) {
        await disk.agent.stop();
        await unmount(disk.mount);
      }
      for (const dir of [...mounted]) await unmount(dir);
    }

    afterEach(async () => {
      await releaseDisks();
      await h?.heal();
    });

    afterAll(async () => {
      await releaseDisks();
      await h?.stop();
    });

    /**
     * Replaces the node's agent with one on the same port (so its containerd still pulls through it)
     * whose cache dir is on a tmpfs of `size` bytes.
     */
    async function giveSmallDisk(
      node: ChaosNode,
      size: number,
      agentArgs: string[] = [],
    ): Promise<SmallDisk> {
      const base = join(h.dir, 'small-disks', `${node.id}-${++made}`);
      const mount = join(base, node.id);
      await mkdir(mount, { recursive: true });
      await mountTmpfs(mount, size);
      await node.agent.stop();
      // startAgent puts the cache at <dir>/<id>/cache: inside the tmpfs; the log goes to <dir>, outside it.
      const agent = await startAgent({
        id: node.id,
        natsUrl: h.nats.url,
        registries: [h.registry.url],
        dir: base,
        zone: node.zone,
        vswitch: node.vswitch,
        port: node.port,
        extraArgs: agentArgs,
      });
      node.agent = agent;
      const disk: SmallDisk = { node, mount, cacheDir: join(mount, 'cache'), size, agent };
      disks.push(disk);
      await waitFor(
        async () => ((await (await fetch(`${agent.url}/healthz`)).json()) as { nats: boolean }).nats,
        { timeoutMs: 30_000, intervalMs: 100, what: `${node.id} on its small disk connected to NATS` },
      );
      return disk;
    }

    /**
     * Reads every layer back through every agent, with the registry's link unthrottled meanwhile: an agent
     * whose disk is full passes reads through to the registry, and the read-back is not what is measured.
     */
    async function verifyUnthrottled(image: BuiltImage) {
      h.registry.setFault();
      try {
        return await h.verifyAgents(image);
      } finally {
        h.registry.setFault(h.baseFault);
      }
    }

    /** Waits until the agent has no download running (a download may outlive the pull that started it). */
    async function settled(agent: ShoalService): Promise<void> {
      await waitFor(async () => metric(await agent.metrics(), 'shoal_agent_active_downloads') === 0, {
        timeoutMs: 30_000,
        intervalMs: 100,
        what: `${agent.name} to finish its downloads`,
      });
    }

    /** The checks and figures of (a) and (b): every pull complete, agents up, nothing partial left. */
    async function judgeFullDisks(
      fault: string,
      description: string,
      image: BuiltImage,
      result: RolloutResult,
      full: SmallDisk[],
      before: Map<string, { pid: number; metrics: Metrics }>,
      extra: Record<string, unknown> = {},
    ) {
      const ended = await snapshotDisks(full);
      const verify = await verifyUnthrottled(image);
      const nodes = [];
      for (const disk of full) {
        await settled(disk.agent);
        const cache = await inspectCache(disk.cacheDir);
        const start = before.get(disk.node.id)!;
        const end = ended.get(disk.node.id)!;
        const log = await cacheLog(disk.agent);
        nodes.push({
          node: disk.node.id,
          diskBytes: disk.size,
          freeBytesAfter: await freeBytes(disk.mount),
          running: disk.agent.process.running(),
          samePid: disk.agent.process.pid === start.pid,
          cachedChunks: cache.chunks,
          cachedBytes: cache.chunkBytes,
          partialFiles: cache.partial,
          logLinesAboutFullDisk: log.enospc,
          // Over the rollout, then over the read-back of every layer through the agent that follows it.
          counters: delta(start.metrics, end.metrics, CACHE_METRICS),
          verifyCounters: delta(end.metrics, await disk.agent.metrics(), CACHE_METRICS),
        });
      }
      const r = report(fault, description, result, baseline, verify, {
        extra: { fullDisks: nodes, pulls: result.pulls, ...extra },
      });
      await writeReport(r);
      console.log(`[chaos] ${fault}: ${JSON.stringify(nodes)}`);
      for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
      expect(verify.corruptBytes).toBe(0);
      for (const n of nodes) {
        expect(n.running, `${n.node}'s agent is up`).toBe(true);
        expect(n.samePid, `${n.node}'s agent did not restart`).toBe(true);
        expect(n.partialFiles, `${n.node}'s cache holds only whole, verified files`).toEqual([]);
        // The disk really was full: what the agent could keep is less than the image, and it says why.
        expect(n.cachedBytes).toBeLessThan(result.imageBytes);
        expect(n.logLinesAboutFullDisk, `${n.node}'s log says the disk is full`).toBeGreaterThan(0);
        const told =
          (n.counters['shoal_agent_cache_full_total{action="uncached"}'] ?? 0) +
          (n.counters['shoal_agent_cache_evictions_total{reason="disk_full"}'] ?? 0);
        expect(told, `${n.node}'s metrics count the full disk`).toBeGreaterThan(0);
      }
      return { r, nodes };
    }

    async function snapshotDisks(full: SmallDisk[]) {
      const out = new Map<string, { pid: number; metrics: Metrics }>();
      for (const disk of full)
        out.set(disk.node.id, { pid: disk.agent.process.pid, metrics: await disk.agent.metrics() });
      return out;
    }

    it('(a) a disk smaller than the image, cache.maxSize above it: pulls complete, passed through', async () => {
      const size = 6 * MiB;
      const full = await Promise.all(
        h.nodes
          .filter((n) => FULL_NODES.includes(n.id))
          .map(async (n) => await giveSmallDisk(n, size, ['--cache-max-size=64MiB'])),
      );
      const image = await h.pushImage('disk-too-small');
      const before = await snapshotDisks(full);
      const result = await h.rollout(image);
      await judgeFullDisks(
        'disk-too-small',
        `${FULL_NODES.length} agents with a ${size / MiB} MiB tmpfs as cache dir and cache.maxSize 64 MiB, pulling a ${result.imageBytes / MiB} MiB image.`,
        image,
        result,
        full,
        before,
      );
    });

    it('(b) a disk filled by a ballast file mid-rollout: pulls complete, passed through', async () => {
      const size = 32 * MiB;
      // Their downloads are held to 2 MB/s, so the image takes them about 6 s: the ballast then lands
      // mid-download however busy the machine (unheld, the peers' chunks can all arrive between seeing
      // the first one and filling the disk).
      const full = await Promise.all(
        h.nodes
          .filter((n) => FULL_NODES.includes(n.id))
          .map(async (n) => await giveSmallDisk(n, size, ['--download-rate=2MB', '--download-burst=64KiB'])),
      );
      const image = await h.pushImage('disk-filled');
      const before = await snapshotDisks(full);
      const imageBytes = image.layersSize + image.config.size;
      const ballast: Record<
        string,
        { bytes: number; atFetchedBytes: number; write: string; freeAfter: number }
      > = {};
      const result = await h.rollout(image, {
        fault: {
          atFraction: 0,
          inject: async () => {
            await Promise.all(
              full.map(async (disk) => {
                // Mid-download on that node: once its agent has its first chunk. Later is too late to be
                // sure of it: once peers hold the chunks, a node fetches the rest in milliseconds.
                const fetchedNow = async () =>
                  fetchedBytes(await disk.agent.metrics()) - fetchedBytes(before.get(disk.node.id)!.metrics);
                await waitFor(async () => (await fetchedNow()) > 0, {
                  timeoutMs: 30_000,
                  intervalMs: 10,
                  what: `${disk.node.id} to fetch its first chunk`,
                });
                const free = await freeBytes(disk.mount);
                // Something else on the node fills the disk: the cache's own writes then fail. The ballast
                // is larger than the room left, so its write ending in ENOSPC says the disk was full at that
                // moment; chunk writes under way may take some of the room first. What is free afterwards
                // is only reported: the agent frees room at once (the partial files of its failed writes,
                // and evictions), however quickly it is looked at.
                const path = join(disk.mount, 'ballast');
                const write = await writeFile(path, Buffer.alloc(free + 8 * MiB)).then(
                  () => 'written',
                  (err: NodeJS.ErrnoException) => err.code ?? err.message,
                );
                const freeAfter = await freeBytes(disk.mount);
                const atFetchedBytes = await fetchedNow();
                ballast[disk.node.id] = { bytes: (await stat(path)).size, atFetchedBytes, write, freeAfter };
              }),
            );
          },
        },
      });
      await judgeFullDisks(
        'disk-filled',
        `${FULL_NODES.length} agents with a ${size / MiB} MiB tmpfs as cache dir, their downloads held to 2 MB/s, each filled by a ballast file once its agent had its first chunk of the image.`,
        image,
        result,
        full,
        before,
        { ballast },
      );
      expect(result.injectedAtMs).toBeDefined();
      for (const disk of full) {
        const filled = ballast[disk.node.id];
        expect(filled, `${disk.node.id} got its ballast`).toBeDefined();
        // Filled mid-download, and full: the ballast ran out of room.
        expect(filled!.atFetchedBytes).toBeLessThan(imageBytes);
        expect(filled!.write).toBe('ENOSPC');
      }
    });

    it('(c) eviction by watermarks under a cap below two images, a blob read by a stalled client kept', async () => {
      // A cap of 22 MiB: eviction above 19.8 MiB, down to 17.6 MiB; an image is 12 MiB.
      const cap = 22 * MiB;
      const node = h.nodes[0]!;
      const disk = await giveSmallDisk(node, 32 * MiB, [`--cache-max-size=${cap / MiB}MiB`]);
      const agent = disk.agent;
      const served = await h.pushImage('served', 1, 12 * MiB);
      const older = await h.pushImage('older', 3, 2 * MiB);
      const image = await h.pushImage('evicting');
      const url = (img: BuiltImage, digest: string) =>
        `${agent.url}/v2/${img.repo}/blobs/${digest}?ns=${h.registry.host}`;

      // A client reads the first MiB of the served layer and stalls: the blob stays pinned while served.
      const slow = await stalledRead(url(served, served.layers[0]!.digest), MiB);
      await settled(agent);
      // Let the response fill the socket's buffers and stop, so the blob is touched no more.
      await sleep(500);
      // Then the older image's blobs, one at a time: from least to most recently used, its config, then
      // its layers in order; the stalled blob is older than all of them.
      const olderBlobs = [older.config.digest, ...older.layers.map((l) => l.digest)];
      for (const digest of olderBlobs) {
        const got = await blobDigest(url(older, digest));
        expect(got.digest).toBe(digest);
        await settled(agent);
      }
      await waitForHolders(h.nats.url, node.id, olderBlobs);
      const start = await agent.metrics();
      expect(metric(start, 'shoal_agent_cache_pinned_bytes')).toBeGreaterThanOrEqual(12 * MiB);

      const result = await h.rollout(image);
      const atEnd = await agent.metrics();
      // Still being served when the rollout ended: the pin held all along.
      const pinnedAfter = metric(atEnd, 'shoal_agent_cache_pinned_bytes');
      // The evictions of the rollout, from the agent's log (once every one it counted is there), and
      // whether each evicted blob has left the chunk index; all before the stalled client moves again.
      const evictions = metricSum(atEnd, 'shoal_agent_cache_evictions_total');
      let log = await cacheLog(agent);
      await waitFor(async () => (log = await cacheLog(agent)).evicted.length >= evictions, {
        timeoutMs: 5_000,
        intervalMs: 50,
        what: `the agent's log to show its ${evictions} evictions`,
      });
      const evicted = log.evicted.slice(0, evictions);
      const order = evicted.map((e) => e.blob);
      const withdrawn = await holdersGone(node.id, order);
      const rest = await slow.finish();
      const verify = await verifyUnthrottled(image);
      await settled(agent);
      const cache = await inspectCache(disk.cacheDir);
      const servedDigest = served.layers[0]!.digest;
      const imageBlobs = [image.config.digest, ...image.layers.map((l) => l.digest)];
      const name = (digest: string) =>
        olderBlobs.includes(digest)
          ? `older#${olderBlobs.indexOf(digest)}`
          : digest === servedDigest
            ? 'served'
            : imageBlobs.includes(digest)
              ? `rollout#${imageBlobs.indexOf(digest)}`
              : digest;
      const r = report(
        'cache-evicting',
        `One agent with cache.maxSize ${cap / MiB} MiB (on a 32 MiB tmpfs) holding a ${olderBlobs.length}-blob image and a 12 MiB layer read by a stalled client; the rollout of a ${result.imageBytes / MiB} MiB image makes it evict.`,
        result,
        baseline,
        verify,
        {
          extra: {
            pulls: result.pulls,
            evictedDuringRollout: evicted.map((e) => ({ blob: name(e.blob), reason: e.reason })),
            withdrawn,
            pinnedBytesAfterRollout: pinnedAfter,
            stalledClientOk: rest.digest === servedDigest && rest.bytes === served.layers[0]!.size,
            counters: delta(start, atEnd, CACHE_METRICS),
            partialFiles: cache.partial,
          },
        },
      );
      await writeReport(r);
      for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
      expect(verify.corruptBytes).toBe(0);
      // The stalled client was still being served when the evictions happened, and got every byte.
      expect(pinnedAfter).toBeGreaterThanOrEqual(12 * MiB);
      expect(rest.digest).toBe(servedDigest);
      expect(order).not.toContain(servedDigest);
      // Least recently used first: the older image's blobs in the order they were read, before any of
      // the rollout's own.
      const olderEvicted = order.filter((d) => olderBlobs.includes(d));
      expect(olderEvicted.length).toBeGreaterThanOrEqual(2);
      expect(olderEvicted).toEqual(olderBlobs.slice(0, olderEvicted.length));
      if (order.some((d) => imageBlobs.includes(d)))
        expect(order.slice(0, olderBlobs.length)).toEqual(olderBlobs);
      expect(evicted.every((e) => e.reason === 'capacity')).toBe(true);
      // Every evicted blob left the chunk index.
      expect(withdrawn).toEqual(order.map(() => true));
      expect(cache.partial).toEqual([]);
      expect(agent.process.running()).toBe(true);
    });

    /** For each blob, whether the chunk index has stopped listing `node` as holding it (within 2 s). */
    async function holdersGone(node: string, digests: string[]): Promise<boolean[]> {
      const nc = await connect({ servers: h.nats.url });
      try {
        const kv = await new Kvm(nc).open('shoal_chunks');
        return await Promise.all(
          digests.map(async (digest) => {
            try {
              await waitFor(async () => !(await kv.get(`h.${hexOf(digest)}.${node}`))?.value.length, {
                timeoutMs: 2_000,
                intervalMs: 50,
                what: `${node} withdrawn for ${digest}`,
              });
              return true;
            } catch {
              return false;
            }
          }),
        );
      } finally {
        await nc.close();
      }
    }
  },
);

/**
 * GETs `url`, reads `first` bytes of the body and stops reading (the socket's buffers fill and the
 * server's writes wait); `finish` reads the rest and returns the body's digest.
 */
async function stalledRead(
  url: string,
  first: number,
): Promise<{ finish: () => Promise<{ digest: string; bytes: number }> }> {
  const hash = createHash('sha256');
  let bytes = 0;
  const response = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, resolve);
    req.on('error', reject);
    req.end();
  });
  if (response.statusCode !== 200) throw new Error(`the stalled client got ${response.statusCode}`);
  const ended = new Promise<void>((resolve, reject) => {
    response.on('end', resolve);
    response.on('error', reject);
  });
  let stalled = false;
  await new Promise<void>((resolve) => {
    response.on('data', (piece: Buffer) => {
      hash.update(piece);
      bytes += piece.length;
      if (bytes >= first && !stalled) {
        stalled = true;
        response.pause();
        resolve();
      }
    });
  });
  return {
    async finish() {
      response.resume();
      await ended;
      return { digest: `sha256:${hash.digest('hex')}`, bytes };
    },
  };
}
