/**
 * How the mesh behaves around a pull, on real processes: a node that starts while another is half-way
 * takes what that node has so far; a dead control plane never fails a pull; bad requests over real
 * HTTP get OCI errors and write nothing outside the cache.
 */
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { connect as tcpConnect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { createServer, type Server } from 'node:http';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import {
  Bitmap,
  chunkKeys,
  subjects,
  type HolderRecord,
  type NodeRecord,
  type ScheduleRequest,
} from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  type BuiltImage,
  type Containerd,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  startContainerd,
  startNats,
  startRegistry,
  waitFor,
  writeHostsToml,
} from './kit/index.js';
import {
  bytesServed,
  type ControlPlane,
  metric,
  metricSum,
  type ShoalService,
  startAgent,
  startControlPlane,
  startControlService,
  startPatientAgents,
  waitForNodes,
  pullBlob,
} from './support/shoal.js';

const MiB = 1024 * 1024;

/** GETs a blob through an agent's mirror API and returns its sha256 and length. */

/** A blob cut into 1 MiB chunks, as the fake parents below serve it and a mesh manifest lists it. */
function chunked(bytes: Buffer) {
  const count = Math.ceil(bytes.length / MiB);
  const chunk = (i: number) => bytes.subarray(i * MiB, Math.min(bytes.length, (i + 1) * MiB));
  const hashes = () =>
    Array.from({ length: count }, (_, i) => createHash('sha256').update(chunk(i)).digest('hex'));
  return { count, chunk, hashes };
}

/** The chunk index a peer API request asks for. */
const chunkIndexOf = (url: string | undefined) => Number(/\/chunks\/(\d+)$/.exec(url ?? '')?.[1]);

/** Starts `server` on a free loopback port and returns its base URL. */
async function listenOnLoopback(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
}

/**
 * A stand-in scheduler on NATS that answers every schedule request with `answer(need)` as assignments,
 * or not at all where it returns undefined; close the returned connection to remove it.
 */
async function scriptedScheduler(
  natsUrl: string,
  answer: (need: number[], request: ScheduleRequest) => unknown[] | undefined,
): Promise<NatsConnection> {
  const nc = await connect({ servers: natsUrl });
  nc.subscribe(subjects.schedule, {
    callback: (_err, msg) => {
      const request = msg.json<ScheduleRequest>();
      const assignments = answer(request.need, request);
      if (assignments === undefined) return;
      msg.respond(JSON.stringify({ ok: true, chunkSize: MiB, assignments, scheduler: 'scripted' }));
    },
  });
  await nc.flush();
  return nc;
}

/** Fallbacks to the registry an agent counted, by reason; none is an empty list. */
const fallbacks = (metrics: Map<string, number>) =>
  [...metrics].filter(([k, v]) => k.startsWith('shoal_agent_fallbacks_total') && v > 0);

/** A fake parent that sends each chunk asked for `piece` bytes every `everyMs`, noting the indexes in `asked`. */
function trickleParent(
  chunk: (index: number) => Buffer,
  piece: number,
  everyMs: number,
  asked: number[] = [],
): Server {
  return createServer((req, res) => {
    const index = chunkIndexOf(req.url);
    asked.push(index);
    const body = chunk(index);
    res.writeHead(200, { 'content-length': body.length });
    let sent = 0;
    const timer = setInterval(() => {
      const next = body.subarray(sent, sent + piece);
      sent += next.length;
      if (next.length === 0) {
        clearInterval(timer);
        res.end();
      } else res.write(next);
    }, everyMs);
    res.on('close', () => clearInterval(timer));
  });
}

/** Registers node `id`, serving at `url` and last seen at `seenAt`, as holder of all `count` chunks of `digest`. */
async function registerHolder(
  nc: NatsConnection,
  node: { id: string; url: string; seenAt: number },
  digest: string,
  count: number,
): Promise<void> {
  const kvm = new Kvm(nc);
  const now = Date.now();
  const record: NodeRecord = { ...node, zone: 'zone-a', vswitch: 'vsw-1', pool: '', startedAt: now };
  await (await kvm.open('shoal_nodes')).put(node.id, JSON.stringify(record));
  const holder: HolderRecord = {
    node: node.id,
    blob: digest,
    seq: 1,
    chunkCount: count,
    have: Bitmap.full(count).toBase64(),
    complete: true,
    at: now,
  };
  const hex = digest.slice('sha256:'.length);
  await (await kvm.open('shoal_chunks')).put(chunkKeys.holder(hex, node.id), JSON.stringify(holder));
}

/** Sends a request line exactly as written, so no client library normalises the path first. */
async function rawGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ host: '127.0.0.1', port }, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
    });
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (piece: string) => (text += piece));
    socket.on('error', reject);
    socket.on('end', () => {
      const status = Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0);
      resolve({ status, body: text.slice(text.indexOf('\r\n\r\n') + 4) });
    });
  });
}

describe('a node that starts while another is half-way', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let image: BuiltImage;
  const agents: ShoalService[] = [];

  beforeAll(async () => {
    dir = await makeTempDir('halfway');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
    image = await buildAndPushImage({
      registry,
      repo: 'team/big',
      tag: 'v1',
      layers: 1,
      layerSize: 24 * MiB,
    });
    control = await startControlPlane(nats.url, dir);
    agents.push(...(await startPatientAgents(nats.url, registry.url, dir, ['a', 'b'])));
  });

  afterAll(async () => {
    await Promise.allSettled(agents.map((a) => a.stop()));
    await control?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('gets the chunks the first node has so far from it, and the rest as it gets them', async () => {
    const [a, b] = agents as [ShoalService, ShoalService];
    const layer = image.layers[0]!;
    // A slow registry stretches A's pull over a few seconds, so B can start while A is half-way.
    registry.setFault({ bytesPerSecond: 1.5 * MiB, match: /\/blobs\//, methods: ['GET'] });
    // Overhears the agents' schedule requests (outside the schedulers' queue group).
    const overhear = await connect({ servers: nats.url });
    const requests: { node: string; need: number[]; fetching?: number[] }[] = [];
    overhear.subscribe(subjects.schedule, {
      callback: (_err, msg) => {
        requests.push(msg.json());
      },
    });
    await overhear.flush();
    const pullA = pullBlob(a, image.repo, layer.digest);
    let aHadWhenBStarted = 0;
    await waitFor(
      async () => {
        aHadWhenBStarted = metric(await a.metrics(), 'shoal_agent_fetch_bytes_total', { source: 'origin' });
        return aHadWhenBStarted >= layer.size / 4;
      },
      { timeoutMs: 30_000, intervalMs: 50, what: 'agent A a quarter done' },
    );
    expect(aHadWhenBStarted).toBeLessThan(layer.size);
    const pullB = pullBlob(b, image.repo, layer.digest);
    const [resultA, resultB] = await Promise.all([pullA, pullB]);
    registry.setFault();
    await overhear.close();

    // Each request says what the node is still fetching, so the scheduler frees those chunks' parents
    // as soon as the node asks again; what is in flight is never asked for twice.
    const asking = requests.filter((r) => r.need.length > 0);
    expect(asking.length).toBeGreaterThan(0);
    for (const request of asking) {
      expect(request.fetching).toBeDefined();
      expect(request.need.filter((i) => request.fetching!.includes(i))).toEqual([]);
    }
    expect(asking.some((r) => (r.fetching?.length ?? 0) > 0)).toBe(true);

    expect(resultA).toEqual({ sha256: layer.digest, bytes: layer.size });
    expect(resultB).toEqual({ sha256: layer.digest, bytes: layer.size });
    const mb = await b.metrics();
    expect(metric(mb, 'shoal_agent_fetch_bytes_total', { source: 'peer' })).toBeGreaterThanOrEqual(
      aHadWhenBStarted,
    );
    // Both stand on the same vSwitch: every peer byte is counted as such.
    expect(metric(mb, 'shoal_agent_peer_fetch_bytes_total', { locality: 'vswitch' })).toBe(
      metric(mb, 'shoal_agent_fetch_bytes_total', { source: 'peer' }),
    );
    // Chunks nobody had leased yet B may take from the registry itself, and A then takes them from B:
    // the two trade.
    const ma = await a.metrics();
    expect(metricSum(ma, 'shoal_agent_fallbacks_total') + metricSum(mb, 'shoal_agent_fallbacks_total')).toBe(
      0,
    );
    const fromRegistry =
      metric(ma, 'shoal_agent_fetch_bytes_total', { source: 'origin' }) +
      metric(mb, 'shoal_agent_fetch_bytes_total', { source: 'origin' });
    // Both fetch from the registry at once, yet every chunk leaves it exactly once.
    expect(fromRegistry).toBe(layer.size);
    expect(bytesServed(registry, layer.digest)).toBe(layer.size);
  });
});

describe('a parent far slower than the others', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let image: BuiltImage;
  let slowPeer: Server;
  const agents: ShoalService[] = [];

  beforeAll(async () => {
    dir = await makeTempDir('slow-parent');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
    image = await buildAndPushImage({
      registry,
      repo: 'team/slow',
      tag: 'v1',
      layers: 1,
      layerSize: 16 * MiB,
    });
    control = await startControlPlane(nats.url, dir);
    agents.push(...(await startPatientAgents(nats.url, registry.url, dir, ['a', 'b'])));
  });

  afterAll(async () => {
    slowPeer?.close();
    await Promise.allSettled(agents.map((a) => a.stop()));
    await control?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('is dropped for the blob, and its chunks come from elsewhere', async () => {
    const [a, b] = agents as [ShoalService, ShoalService];
    const layer = image.layers[0]!;
    const hex = layer.digest.slice('sha256:'.length);
    // A has the whole layer; the chunk size is whatever the mesh's manifest says.
    const whole = await fetch(`${a.url}/v2/${image.repo}/blobs/${layer.digest}`);
    const bytes = Buffer.from(await whole.arrayBuffer());
    expect(bytes.length).toBe(layer.size);

    // A third parent that serves the right bytes at 384 KiB/s: within the absolute floor's deadline
    // (3 s + the chunk at peer.minRate), so only a comparison with A can find it slow.
    const served: number[] = [];
    slowPeer = trickleParent(chunked(bytes).chunk, 48 * 1024, 125, served);
    const url = await listenOnLoopback(slowPeer);

    const nc = await connect({ servers: nats.url });
    try {
      const kvm = new Kvm(nc);
      const manifest = (await (await kvm.open('shoal_chunks')).get(chunkKeys.manifest(hex)))?.json<{
        chunkSize: number;
        hashes: string[];
      }>();
      expect(manifest?.chunkSize).toBe(MiB);
      const count = manifest!.hashes.length;
      await registerHolder(nc, { id: 'slowpoke', url, seenAt: Date.now() }, layer.digest, count);
      const dropped: { peer: string; why: string; reason: string }[] = [];
      nc.subscribe(subjects.eventsOfType('parent_dropped'), {
        callback: (_err, msg) => {
          dropped.push(msg.json());
        },
      });
      await nc.flush();
      // Give the scheduler a moment to see the new parent.
      await new Promise((r) => setTimeout(r, 500));

      const began = Date.now();
      const result = await pullBlob(b, image.repo, layer.digest);
      const took = Date.now() - began;
      expect(result).toEqual({ sha256: layer.digest, bytes: layer.size });
      await waitFor(async () => dropped.length > 0, { timeoutMs: 5_000, what: 'a parent_dropped event' });
      expect(dropped[0]).toMatchObject({ peer: 'slowpoke', why: 'slow' });
      // Asked for a few chunks at most (those started before anything was known to compare with, and
      // the one that showed it slow), never for the rest of the blob.
      expect(served.length).toBeGreaterThan(0);
      expect(served.length).toBeLessThan(count / 2);
      // Waiting out the slow parent's chunks would take about 2.7 s each.
      expect(took).toBeLessThan(10_000);
      const mb = await b.metrics();
      expect(
        metric(mb, 'shoal_agent_chunk_failures_total', { source: 'peer', reason: 'slow' }),
      ).toBeGreaterThan(0);
      expect(bytesServed(registry, layer.digest)).toBe(layer.size);
    } finally {
      await nc.close();
    }
  });
});

describe('a pull that one parent serves slowly but steadily', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let image: BuiltImage;
  const services: ShoalService[] = [];
  let parent: Server | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('steady');
    nats = await startNats();
    registry = await startRegistry();
    image = await buildAndPushImage({
      registry,
      repo: 'team/steady',
      tag: 'v1',
      layers: 1,
      layerSize: 6 * MiB,
    });
    // One upload slot per parent (a second for a node with nothing in flight): the node gets a chunk or
    // two at a time and is told to wait for the rest.
    services.push(
      await startControlService('scheduler', { natsUrl: nats.url, dir, extraArgs: ['--parent-slots=1'] }),
      await startControlService('announcer', { natsUrl: nats.url, dir }),
      await startControlService('discovery', { natsUrl: nats.url, dir }),
    );
  });

  afterAll(async () => {
    parent?.close();
    await Promise.allSettled(services.map((s) => s.stop()));
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('keeps waiting for the mesh while its chunks keep arriving, however long the blob takes', async () => {
    const layer = image.layers[0]!;
    const hex = layer.digest.slice('sha256:'.length);
    const bytes = Buffer.from(
      await (await fetch(`${registry.url}/v2/${image.repo}/blobs/${layer.digest}`)).arrayBuffer(),
    );
    const before = bytesServed(registry, layer.digest);
    const { count, chunk, hashes } = chunked(bytes);
    // The only holder: a parent that sends each chunk in about 2 s, longer than the node's
    // origin.waitTimeout (1.5 s ± 15%), so the blob takes about 6 s.
    parent = trickleParent(chunk, 128 * 1024, 250);
    const url = await listenOnLoopback(parent);

    const nc = await connect({ servers: nats.url });
    try {
      await (
        await new Kvm(nc).open('shoal_chunks')
      ).put(
        chunkKeys.manifest(hex),
        JSON.stringify({ blob: layer.digest, size: bytes.length, chunkSize: MiB, hashes: hashes() }),
      );
      await registerHolder(nc, { id: 'steady', url, seenAt: Date.now() + 60_000 }, layer.digest, count);
    } finally {
      await nc.close();
    }
    const b = await startAgent({
      id: 'b',
      natsUrl: nats.url,
      registries: [registry.url],
      dir,
      extraArgs: ['--scheduler-timeout=10s', '--origin-wait-timeout=1500ms', '--peer-slow-factor=0'],
    });
    services.push(b);
    await waitForNodes(nats.url, ['b']);

    const began = Date.now();
    expect(await pullBlob(b, image.repo, layer.digest)).toEqual({ sha256: layer.digest, bytes: layer.size });
    expect(Date.now() - began).toBeGreaterThan(5_000);
    const mb = await b.metrics();
    // Told to wait, for 2 s at a time, only while a chunk is on its way: the clock never ran, no fallback.
    expect(metricSum(mb, 'shoal_agent_fallbacks_total')).toBe(0);
    expect(metric(mb, 'shoal_agent_fetch_bytes_total', { source: 'peer' })).toBe(layer.size);
    expect(bytesServed(registry, layer.digest) - before).toBe(0);
  });
});

describe('a node told to wait while its chunks are still arriving', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let image: BuiltImage;
  let parent: Server | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('arriving');
    nats = await startNats();
    registry = await startRegistry();
    image = await buildAndPushImage({
      registry,
      repo: 'team/arriving',
      tag: 'v1',
      layers: 1,
      layerSize: 12 * MiB,
    });
  });

  afterAll(async () => {
    parent?.close();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  /** The layer's bytes as the registry has them, for fake parents to serve. */
  async function layerBytes(): Promise<Buffer> {
    const layer = image.layers[0]!;
    const res = await fetch(`${registry.url}/v2/${image.repo}/blobs/${layer.digest}`);
    return Buffer.from(await res.arrayBuffer());
  }

  /**
   * Pulls the layer (or another blob of the image) through a new agent `id` while `answer` plays the
   * scheduler, and checks the bytes;
   * resolves with the agent's metrics, the pull's duration and the blob bytes the registry sent.
   */
  async function pullScripted(
    id: string,
    extraArgs: string[],
    answer: (need: number[], request: ScheduleRequest) => unknown[] | undefined,
    layer: { digest: string; size: number } = image.layers[0]!,
  ): Promise<{ metrics: Map<string, number>; ms: number; registryBytes: number }> {
    const before = bytesServed(registry, layer.digest);
    const nc = await scriptedScheduler(nats.url, answer);
    let agent: ShoalService | undefined;
    try {
      agent = await startAgent({ id, natsUrl: nats.url, registries: [registry.url], dir, extraArgs });
      const began = Date.now();
      expect(await pullBlob(agent, image.repo, layer.digest)).toEqual({
        sha256: layer.digest,
        bytes: layer.size,
      });
      const ms = Date.now() - began;
      return {
        metrics: await agent.metrics(),
        ms,
        registryBytes: bytesServed(registry, layer.digest) - before,
      };
    } finally {
      await agent?.stop();
      await nc.close();
    }
  }

  const toWait = (index: number, sha256: string | null, queue?: 'origin') => ({
    index,
    sha256,
    source: { kind: 'wait', retryMs: 100, ...(queue ? { queue } : {}) },
    alternates: [],
  });

  /** A grant of chunk `index` from the registry, as a scheduler answers it. */
  const fromOrigin = (index: number, sha256: string | null = null) => ({
    index,
    sha256,
    source: { kind: 'origin', leaseMs: 10_000 },
    alternates: [],
  });

  /** A grant of chunk `index` from the fake parent at `url`, as a scheduler answers it. */
  const fromParentAt = (url: string, index: number, sha256: string | null) => ({
    index,
    sha256,
    source: { kind: 'peer', node: 'parent', url },
    alternates: [],
  });

  it('does not give up on the mesh while chunks it was given keep arriving', async () => {
    const layer = image.layers[0]!;
    const { chunk, hashes: hashesOf } = chunked(await layerBytes());
    const hashes = hashesOf();
    // The first eight chunks arrive one every 0.4 s (chunk i answers after i × 0.4 s), the rest at once.
    let firstEightDone = 0;
    parent = createServer((req, res) => {
      const index = chunkIndexOf(req.url);
      const body = chunk(index);
      setTimeout(
        () => {
          res.writeHead(200, { 'content-length': body.length });
          res.end(body, () => {
            if (index < 8) firstEightDone++;
          });
        },
        index < 8 ? index * 400 : 0,
      );
    });
    const url = await listenOnLoopback(parent);

    // A scripted scheduler: chunks 0-7 from the parent at the first request that needs chunks; then
    // "wait" until those eight have all been sent, then the rest from the parent.
    let requests = 0;
    let given = false;
    const peer = (index: number) => fromParentAt(url, index, hashes[index]!);
    const { metrics, registryBytes } = await pullScripted(
      'b',
      ['--origin-wait-timeout=1200ms', '--peer-timeout=5s', '--peer-slow-factor=0', '--chunk-size=1MiB'],
      (need) => {
        requests++;
        const first = !given && need.length > 0;
        given ||= first;
        return first
          ? need.filter((i) => i < 8).map(peer)
          : firstEightDone < 8
            ? need.map((index) => toWait(index, hashes[index]!))
            : need.map(peer);
      },
    );
    // Told to wait from about 1.2 s (four chunks in) to 2.8 s, longer than origin.waitTimeout, but a
    // chunk arrived every 0.4 s.
    expect(requests).toBeGreaterThan(2);
    expect(fallbacks(metrics)).toEqual([]);
    expect(metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'peer' })).toBe(layer.size);
    expect(registryBytes).toBe(0);
  });

  it('lets off a parent that goes silent once, and drops one that goes silent again', async () => {
    const { chunk, hashes: hashesOf } = chunked(await layerBytes());
    const hashes = hashesOf();
    // The only holder of every chunk says nothing to its first request (held up by its node, as it were)
    // and to those in `silentAt`, and answers the others after 100 ms. One chunk is fetched at a time.
    let requestsSeen = 0;
    let silentAt = new Set<number>();
    parent = createServer((req, res) => {
      requestsSeen++;
      if (requestsSeen === 1 || silentAt.has(requestsSeen)) return;
      const body = chunk(chunkIndexOf(req.url));
      setTimeout(() => {
        res.writeHead(200, { 'content-length': body.length });
        res.end(body);
      }, 100);
    });
    const url = await listenOnLoopback(parent);
    const avoided: string[][] = [];
    const args = [
      '--peer-timeout=400ms',
      '--peer-slow-factor=0',
      '--chunk-size=1MiB',
      '--download-concurrency=1',
      '--origin-wait-timeout=1s',
    ];
    // A scheduler that knows no other holder: once the parent is avoided, the registry.
    const fromParent = (need: number[], request: ScheduleRequest) => {
      avoided.push(request.avoid ?? []);
      if (request.avoid?.includes('parent')) return need.map((index) => fromOrigin(index, hashes[index]));
      return need.map((index) => fromParentAt(url, index, hashes[index]!));
    };
    const once = await pullScripted('silent-once', args, fromParent);
    // Asked again, not dropped: the scheduler never heard it was to be avoided, and the registry sent
    // nothing.
    expect(avoided.flat()).not.toContain('parent');
    expect(
      metric(once.metrics, 'shoal_agent_chunk_failures_total', { source: 'peer', reason: 'unavailable' }),
    ).toBe(1);
    expect(fallbacks(once.metrics)).toEqual([]);
    expect(once.registryBytes).toBe(0);

    // Silent again, to a request begun after the first silence (the twelfth, ten answers of 100 ms
    // later): dropped, and the chunks it held alone come from the registry.
    requestsSeen = 0;
    silentAt = new Set([12]);
    avoided.length = 0;
    const twice = await pullScripted('silent-twice', args, fromParent);
    expect(avoided.flat()).toContain('parent');
    expect(twice.registryBytes).toBeGreaterThan(0);
  });

  it('tells the scheduler what it is still fetching from a slow registry, so that its leases are kept', async () => {
    const layer = image.layers[0]!;
    // Eight chunks granted at once from a registry read at 3 MB/s: over two seconds before the first is
    // in, during which the download has no free slot and nothing else to ask for.
    const leaseMs = 600;
    const renewals: { at: number; fetching: number[] }[] = [];
    const { metrics, registryBytes } = await pullScripted(
      'l',
      ['--chunk-size=1MiB', '--registry-rate=3MB'],
      (need, request) => {
        if (need.length === 0) {
          // (The first request, asking for nothing and saying nothing of fetching, only learns the chunk size.)
          if (request.fetching) renewals.push({ at: Date.now(), fetching: request.fetching });
          return [];
        }
        return need.map((index) => ({ ...fromOrigin(index), source: { kind: 'origin', leaseMs } }));
      },
    );
    expect(fallbacks(metrics)).toEqual([]);
    expect(registryBytes).toBe(layer.size);
    // About every quarter of the lease while the first eight were in flight.
    expect(renewals.length).toBeGreaterThanOrEqual(4);
    for (const [i, r] of renewals.entries()) {
      // Only while registry fetches are in flight, and no more often than every quarter of the lease.
      expect(r.fetching.length).toBeGreaterThan(0);
      if (i > 0) expect(r.at - renewals[i - 1]!.at).toBeGreaterThanOrEqual(leaseMs / 4 - 50);
    }
  });

  it('keeps waiting past origin.waitTimeout while a chunk is in flight, however slow', async () => {
    const layer = image.layers[0]!;
    const { chunk, hashes: hashesOf } = chunked(await layerBytes());
    const hashes = hashesOf();
    // Chunk 0 takes 2.5 s to come, more than twice origin.waitTimeout; the rest come at once, but the
    // scheduler says "wait" for them until chunk 0 is through.
    let firstDone = false;
    const slowParent = createServer((req, res) => {
      const index = chunkIndexOf(req.url);
      const body = chunk(index);
      setTimeout(
        () => {
          res.writeHead(200, { 'content-length': body.length });
          res.end(body, () => {
            if (index === 0) firstDone = true;
          });
        },
        index === 0 ? 2_500 : 0,
      );
    });
    const url = await listenOnLoopback(slowParent);
    let given = false;
    try {
      const { metrics, registryBytes } = await pullScripted(
        'd',
        ['--origin-wait-timeout=1s', '--peer-timeout=5s', '--peer-slow-factor=0', '--chunk-size=1MiB'],
        (need) => {
          const first = !given && need.includes(0);
          given ||= first;
          return need
            .filter((index) => !first || index === 0)
            .map((index) =>
              first || firstDone
                ? {
                    index,
                    sha256: hashes[index]!,
                    source: { kind: 'peer', node: 'slow-parent', url },
                    alternates: [],
                  }
                : toWait(index, hashes[index]!),
            );
        },
      );
      expect(fallbacks(metrics)).toEqual([]);
      expect(metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'peer' })).toBe(layer.size);
      expect(registryBytes).toBe(0);
    } finally {
      slowParent.close();
    }
  });

  it('waits its turn for the registry, past origin.waitTimeout, when told the origin is queued', async () => {
    const layer = image.layers[0]!;
    // For 2.5 s every chunk is queued for the origin (a registry as busy as the budget allows); then
    // they are granted.
    const turnAt = Date.now() + 2_500;
    const { metrics, registryBytes } = await pullScripted(
      'e',
      ['--origin-wait-timeout=1s', '--chunk-size=1MiB'],
      (need) =>
        need.map((index) => (Date.now() < turnAt ? toWait(index, null, 'origin') : fromOrigin(index))),
    );
    expect(Date.now()).toBeGreaterThanOrEqual(turnAt);
    expect(fallbacks(metrics)).toEqual([]);
    expect(metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'origin' })).toBe(layer.size);
    expect(registryBytes).toBe(layer.size);
  });

  it('gives a peer its origin.waitTimeout from the first reply that says to wait for one, after a turn in the queue', async () => {
    const layer = image.layers[0]!;
    // Queued for the origin for 3 s from the first request (more than origin.waitTimeout, less than four
    // times it), then told to wait for a peer for 1 s from the first such reply (less than it), then
    // granted: the wait for a peer starts its own clock, so nothing falls back.
    let firstAt: number | undefined;
    let peerWaitFrom: number | undefined;
    let peerWaits = 0;
    const { metrics, registryBytes } = await pullScripted(
      'e2',
      ['--origin-wait-timeout=2s', '--chunk-size=1MiB'],
      (need) => {
        const now = Date.now();
        firstAt ??= now;
        if (now - firstAt < 3_000) return need.map((index) => toWait(index, null, 'origin'));
        peerWaitFrom ??= now;
        if (now - peerWaitFrom < 1_000) {
          peerWaits++;
          return need.map((index) => toWait(index, null));
        }
        return need.map((index) => fromOrigin(index));
      },
    );
    expect(peerWaits).toBeGreaterThan(0);
    expect(fallbacks(metrics)).toEqual([]);
    expect(registryBytes).toBe(layer.size);
  });

  it('gives up its turn for the registry after four times origin.waitTimeout queued', async () => {
    const { metrics, ms } = await pullScripted(
      'f',
      ['--origin-wait-timeout=500ms', '--chunk-size=1MiB'],
      (need) => need.map((index) => toWait(index, null, 'origin')),
    );
    // 4 × 500 ms, less the 15% jitter, before the first chunk from the registry; and as long again
    // before each step up (1, 2, 4, then the 5 left of 12): the registry stays at the mesh's budget.
    expect(ms).toBeGreaterThan(4 * 1_700);
    expect(metric(metrics, 'shoal_agent_fallbacks_total', { reason: 'peer_wait_timeout' })).toBe(1);
  });

  it('fetches a blob of at most origin.directMax from the registry itself, without a turn in the mesh', async () => {
    const { config } = image;
    expect(config.size).toBeLessThanOrEqual(16 * 1024);
    // A scheduler that would keep every chunk waiting for a turn that never comes. Not even the chunk
    // size is asked for.
    let asked = 0;
    const { metrics, ms, registryBytes } = await pullScripted(
      'd',
      ['--origin-wait-timeout=5s'],
      (need) => {
        asked++;
        return need.map((index) => toWait(index, null, 'origin'));
      },
      config,
    );
    expect(asked).toBe(0);
    expect(ms).toBeLessThan(10_000);
    expect(fallbacks(metrics)).toEqual([]);
    expect(metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'origin' })).toBe(config.size);
    expect(registryBytes).toBe(config.size);
  });

  it('takes its turn in the mesh for a small blob with origin.directMax 0', async () => {
    const { config } = image;
    let asked = 0;
    const { metrics, registryBytes } = await pullScripted(
      'z',
      ['--origin-direct-max=0'],
      (need) => {
        if (need.length > 0) asked++;
        return need.map((index) => fromOrigin(index));
      },
      config,
    );
    expect(asked).toBeGreaterThan(0);
    expect(fallbacks(metrics)).toEqual([]);
    expect(registryBytes).toBe(config.size);
  });

  it('asks the mesh for a small blob the registry fails', async () => {
    const { config } = image;
    const res = await fetch(`${registry.url}/v2/${image.repo}/blobs/${config.digest}`);
    const bytes = Buffer.from(await res.arrayBuffer());
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const served: number[] = [];
    parent = createServer((req, reply) => {
      served.push(chunkIndexOf(req.url));
      reply.writeHead(200, { 'content-length': bytes.length }).end(bytes);
    });
    const url = await listenOnLoopback(parent);
    // Every GET of the blob fails, however often the agent asks the registry; with one attempt per
    // chunk, the attempt made before asking the mesh is one more.
    registry.setFault({ status5xxRatio: 1, methods: ['GET'], match: new RegExp(config.digest) });
    const faulted = () =>
      registry.requests().filter((r) => r.fault !== undefined && r.path.includes(config.digest)).length;
    const faultedBefore = faulted();
    let asked = 0;
    try {
      const { metrics } = await pullScripted(
        'p',
        ['--origin-retries=1'],
        (need) => {
          if (need.length > 0) asked++;
          return need.map((index) => fromParentAt(url, index, sha256));
        },
        config,
      );
      expect(faulted() - faultedBefore).toBe(1);
      expect(metric(metrics, 'shoal_agent_chunk_failures_total', { source: 'origin', reason: 'error' })).toBe(
        1,
      );
      expect(asked).toBeGreaterThan(0);
      expect(served).toEqual([0]);
      expect(fallbacks(metrics)).toEqual([]);
      expect(metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'peer' })).toBe(config.size);
    } finally {
      registry.setFault();
      parent.close();
      parent = undefined;
    }
  });

  it('tells the scheduler which parents it could not even connect to, apart from those that failed otherwise', async () => {
    const layer = image.layers[0]!;
    const { hashes: hashesOf } = chunked(await layerBytes());
    const hashes = hashesOf();
    // 'down': nothing listens on its port. 'rude': accepts the connection and hangs up without an answer.
    const closed = createServer();
    const downUrl = await listenOnLoopback(closed);
    await new Promise((resolve) => closed.close(resolve));
    const rude = createNetServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => rude.listen(0, '127.0.0.1', resolve));
    const rudeUrl = `http://127.0.0.1:${(rude.address() as AddressInfo).port}`;
    const seen: { avoid: string[]; unreachable: string[] }[] = [];
    const peer = (index: number, node: string, url: string) => ({
      index,
      sha256: hashes[index]!,
      source: { kind: 'peer', node, url },
      alternates: [],
    });
    const origin = (index: number) => fromOrigin(index, hashes[index]);
    try {
      const { registryBytes } = await pullScripted('u', ['--chunk-size=1MiB'], (need, request) => {
        if (need.length > 0) seen.push({ avoid: request.avoid, unreachable: request.unreachable ?? [] });
        // The first request that needs chunks gets chunk 0 from 'down' and chunk 1 from 'rude'.
        if (seen.length === 1)
          return need.map((i) =>
            i === 0 ? peer(0, 'down', downUrl) : i === 1 ? peer(1, 'rude', rudeUrl) : origin(i),
          );
        return need.map(origin);
      });
      expect(registryBytes).toBe(layer.size);
    } finally {
      await new Promise((resolve) => rude.close(resolve));
    }
    const last = seen.at(-1)!;
    expect(seen.length).toBeGreaterThan(1);
    expect(last.avoid.sort()).toEqual(['down', 'rude']);
    // Reported in the requests after the failure (for a few seconds, not for ever), the other never.
    expect(seen.some((r) => r.unreachable.includes('down'))).toBe(true);
    expect(seen.every((r) => !r.unreachable.includes('rude'))).toBe(true);
  });

  it('asks again less and less often while told to wait with nothing in flight', async () => {
    const layer = image.layers[0]!;
    // Wait, every chunk, every time, at the scheduler's 100 ms; after origin.waitTimeout (3 s ± 15%) the
    // agent fetches from the registry itself.
    const asked: number[] = [];
    const { registryBytes } = await pullScripted(
      'w',
      ['--origin-wait-timeout=3s', '--chunk-size=1MiB'],
      (need) => {
        if (need.length > 0) asked.push(Date.now());
        return need.map((index) => toWait(index, null));
      },
    );
    expect(registryBytes).toBe(layer.size);
    const gaps = asked.slice(1).map((t, i) => t - asked[i]!);
    // 100, 200, 400, 800 ms (±10%), then 800 ms at most: about 7 requests in 3 s instead of 30.
    for (const [i, want] of [100, 200, 400, 800].entries())
      expect(gaps[i]).toBeGreaterThanOrEqual(want * 0.85);
    for (const gap of gaps.slice(0, 6)) expect(gap).toBeLessThan(2_000);
    const before = asked.filter((t) => t - asked[0]! < 2_500);
    expect(before.length).toBeLessThanOrEqual(8);
  });

  it('goes to the registry once told to wait with nothing in flight for longer than origin.waitTimeout', async () => {
    const layer = image.layers[0]!;
    // A scheduler that has nothing for anyone: every chunk, every time, "wait".
    let requests = 0;
    const { metrics, ms, registryBytes } = await pullScripted(
      'c',
      ['--origin-wait-timeout=1s', '--chunk-size=1MiB'],
      (need) => {
        requests++;
        return need.map((index) => toWait(index, null));
      },
    );
    expect(ms).toBeGreaterThan(800);
    expect(requests).toBeGreaterThan(2);
    // Counted once: one chunk, then two, four… from the registry while the scheduler still has nothing.
    expect(metric(metrics, 'shoal_agent_fallbacks_total', { reason: 'peer_wait_timeout' })).toBe(1);
    expect(metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'origin' })).toBe(layer.size);
    expect(registryBytes).toBe(layer.size);
  });

  it('takes a single chunk from the registry after waiting out origin.waitTimeout, if the scheduler then has work', async () => {
    const layer = image.layers[0]!;
    const chunks = Math.ceil(layer.size / MiB);
    // Every chunk waits until the agent has fetched one on its own; from then on every chunk it asks for
    // is granted (from the registry, the only holder here).
    const granted = new Set<number>();
    const { metrics, registryBytes } = await pullScripted(
      'g',
      ['--origin-wait-timeout=500ms', '--chunk-size=1MiB'],
      (need) => {
        if (need.length === chunks) return need.map((index) => toWait(index, null));
        for (const index of need) granted.add(index);
        return need.map((index) => fromOrigin(index));
      },
    );
    expect(metric(metrics, 'shoal_agent_fallbacks_total', { reason: 'peer_wait_timeout' })).toBe(1);
    // Taken without an assignment: one chunk, not a download's worth (eight fetch slots).
    expect(chunks - granted.size).toBe(1);
    expect(registryBytes).toBe(layer.size);
  });

  it('takes a single chunk from the registry when the scheduler does not answer in time, not a download’s worth', async () => {
    const layer = image.layers[0]!;
    const chunks = Math.ceil(layer.size / MiB);
    // A scheduler too busy to answer the first request within scheduler.timeout; every later request is
    // granted (from the registry, the only holder here).
    let requests = 0;
    const granted = new Set<number>();
    const { metrics, registryBytes } = await pullScripted(
      'late-idle',
      ['--scheduler-timeout=300ms', '--chunk-size=1MiB'],
      (need) => {
        if (need.length > 0 && requests++ === 0) return undefined;
        for (const index of need) granted.add(index);
        return need.map((index) => fromOrigin(index));
      },
    );
    expect(metric(metrics, 'shoal_agent_fallbacks_total', { reason: 'scheduler_timeout' })).toBe(1);
    expect(fallbacks(metrics)).toHaveLength(1);
    // Taken without an assignment: one chunk, not the eight fetch slots (and more for the mesh back-off).
    expect(chunks - granted.size).toBe(1);
    expect(registryBytes).toBe(layer.size);
  });

  it('goes back to waiting as told once the scheduler answers again after a late reply', async () => {
    const layer = image.layers[0]!;
    const chunks = Math.ceil(layer.size / MiB);
    // The first request goes unanswered; the next ones are answered "wait" for 1.5 s (well inside
    // origin.waitTimeout), then every chunk is granted.
    let lateAt: number | undefined;
    const granted = new Set<number>();
    const { metrics, registryBytes } = await pullScripted(
      'late-then-wait',
      ['--scheduler-timeout=300ms', '--origin-wait-timeout=10s', '--chunk-size=1MiB'],
      (need) => {
        if (need.length === 0) return [];
        if (lateAt === undefined) {
          lateAt = Date.now();
          return undefined;
        }
        if (Date.now() - lateAt < 1_500) return need.map((index) => toWait(index, null));
        for (const index of need) granted.add(index);
        return need.map((index) => fromOrigin(index));
      },
    );
    expect(fallbacks(metrics)).toEqual([['shoal_agent_fallbacks_total{reason="scheduler_timeout"}', 1]]);
    // The late reply cost one chunk; the answers after it were heeded, not taken for more silence.
    expect(chunks - granted.size).toBe(1);
    expect(registryBytes).toBe(layer.size);
  });

  it('keeps widening its own registry fetches through a late reply after waiting out origin.waitTimeout', async () => {
    const layer = image.layers[0]!;
    const chunks = Math.ceil(layer.size / MiB);
    // "Wait" for everything, always, except one request left unanswered once the agent has fetched a
    // chunk itself and has nothing in flight.
    let late = 0;
    const { metrics, registryBytes } = await pullScripted(
      'wait-then-late',
      ['--scheduler-timeout=300ms', '--origin-wait-timeout=500ms', '--chunk-size=1MiB'],
      (need, request) => {
        if (need.length === 0) return [];
        if (late === 0 && need.length < chunks && (request.fetching ?? []).length === 0) {
          late++;
          return undefined;
        }
        return need.map((index) => toWait(index, null));
      },
    );
    expect(late).toBe(1);
    // One spell of fetching from the registry, not a new one begun after the late reply.
    expect(fallbacks(metrics)).toEqual([['shoal_agent_fallbacks_total{reason="peer_wait_timeout"}', 1]]);
    expect(registryBytes).toBe(layer.size);
  });

  it('takes nothing from the registry when the scheduler does not answer in time while a chunk is in flight', async () => {
    const layer = image.layers[0]!;
    const { chunk, hashes: hashesOf } = chunked(await layerBytes());
    const hashes = hashesOf();
    // Chunk 0 comes from a parent in 1.5 s; the request made while it is in flight goes unanswered, and
    // every later one is granted from the registry.
    const slowParent = createServer((req, res) => {
      const body = chunk(chunkIndexOf(req.url));
      setTimeout(() => {
        res.writeHead(200, { 'content-length': body.length });
        res.end(body);
      }, 1_500);
    });
    const url = await listenOnLoopback(slowParent);
    let requests = 0;
    let unanswered = 0;
    const granted = new Set<number>();
    try {
      const { metrics, registryBytes } = await pullScripted(
        'late-in-flight',
        ['--scheduler-timeout=300ms', '--peer-timeout=5s', '--peer-slow-factor=0', '--chunk-size=1MiB'],
        (need, request) => {
          if (need.length === 0) return [];
          if (requests++ === 0)
            return [
              {
                index: 0,
                sha256: hashes[0]!,
                source: { kind: 'peer', node: 'slow-parent', url },
                alternates: [],
              },
            ];
          if (unanswered === 0 && request.fetching?.includes(0)) {
            unanswered++;
            return undefined;
          }
          for (const index of need) granted.add(index);
          return need.map((index) => fromOrigin(index));
        },
      );
      expect(unanswered).toBe(1);
      expect(fallbacks(metrics)).toEqual([]);
      expect(metric(metrics, 'shoal_agent_fetch_bytes_total', { source: 'peer' })).toBe(MiB);
      // Every chunk but the parent's was granted: none was taken from the registry unasked.
      expect(granted.size).toBe(Math.ceil(layer.size / MiB) - 1);
      expect(registryBytes).toBe(layer.size - MiB);
    } finally {
      slowParent.close();
    }
  });
});

describe('fallback to the registry when the control plane is gone', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let containerd: Containerd;
  let control: ControlPlane;
  let image: BuiltImage;
  let agent: ShoalService;
  let hostsDir: string;

  beforeAll(async () => {
    dir = await makeTempDir('fallback');
    [nats, registry, containerd] = await Promise.all([startNats(), startRegistry(), startContainerd()]);
    image = await buildAndPushImage({
      registry,
      repo: 'team/fallback',
      tag: 'v1',
      layers: 3,
      layerSize: 4 * MiB,
    });
    control = await startControlPlane(nats.url, dir);
    // Two chunks at a time keep the agent going back to the scheduler throughout the pull.
    agent = await startAgent({
      id: 'f',
      natsUrl: nats.url,
      registries: [registry.url],
      dir,
      extraArgs: ['--download-concurrency=2'],
    });
    await waitForNodes(nats.url, ['f']);
    hostsDir = join(dir, 'hosts');
    await writeHostsToml(hostsDir, registry.host, agent.url);
  });

  afterAll(async () => {
    await agent?.stop();
    await control?.stop();
    await Promise.allSettled([containerd?.stop(), registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('completes a pull whose scheduler is killed half-way', async () => {
    registry.setFault({ bytesPerSecond: 2 * MiB, match: /\/blobs\//, methods: ['GET'] });
    const pull = containerd.pull({ ref: image.ref, hostsDir, namespace: containerd.newNamespace('sched') });
    await waitFor(
      async () =>
        metric(await agent.metrics(), 'shoal_agent_fetch_bytes_total', { source: 'origin' }) > 2 * MiB,
      {
        timeoutMs: 30_000,
        intervalMs: 50,
        what: 'pull under way',
      },
    );
    await control.scheduler.stop('SIGKILL');
    const result = await pull;
    registry.setFault();
    expect(result.ok, result.stderr).toBe(true);
    const m = await agent.metrics();
    // NATS answers "no responders" once it has noticed the scheduler's connection is gone; until then a
    // request times out. Either way the agent went to the registry.
    expect(
      metric(m, 'shoal_agent_fallbacks_total', { reason: 'no_scheduler' }) +
        metric(m, 'shoal_agent_fallbacks_total', { reason: 'scheduler_timeout' }),
    ).toBeGreaterThan(0);
    for (const layer of image.layers) expect(bytesServed(registry, layer.digest)).toBe(layer.size);
  });

  it('completes a pull while NATS is frozen (sockets open, nothing answered)', async () => {
    const other = await buildAndPushImage({
      registry,
      repo: 'team/fallback',
      tag: 'frozen',
      layers: 2,
      layerSize: 2 * MiB,
    });
    const before = metric(await agent.metrics(), 'shoal_agent_fallbacks_total', {
      reason: 'scheduler_timeout',
    });
    nats.process().pause();
    try {
      const began = Date.now();
      const result = await containerd.pull({
        ref: other.ref,
        hostsDir,
        namespace: containerd.newNamespace('frozen'),
      });
      expect(result.ok, result.stderr).toBe(true);
      // Each blob takes a chunk from the registry after one scheduler timeout (1 s), and goes to it at
      // full width after the third in a row (or once NATS is found gone).
      expect(Date.now() - began).toBeLessThan(15_000);
    } finally {
      nats.process().resume();
    }
    const after = metric(await agent.metrics(), 'shoal_agent_fallbacks_total', {
      reason: 'scheduler_timeout',
    });
    const natsDown = metric(await agent.metrics(), 'shoal_agent_fallbacks_total', {
      reason: 'nats_unavailable',
    });
    expect(after - before + natsDown).toBeGreaterThan(0);
  });

  it('completes a pull when NATS was stopped before it began', async () => {
    const other = await buildAndPushImage({
      registry,
      repo: 'team/fallback',
      tag: 'v2',
      layers: 2,
      layerSize: 2 * MiB,
    });
    await nats.stop();
    await waitFor(
      async () => ((await (await fetch(`${agent.url}/healthz`)).json()) as { nats: boolean }).nats === false,
      {
        timeoutMs: 10_000,
        what: 'agent noticed NATS is gone',
      },
    );
    const began = Date.now();
    const result = await containerd.pull({
      ref: other.ref,
      hostsDir,
      namespace: containerd.newNamespace('nonats'),
    });
    expect(result.ok, result.stderr).toBe(true);
    const m = await agent.metrics();
    expect(metric(m, 'shoal_agent_fallbacks_total', { reason: 'nats_unavailable' })).toBeGreaterThan(0);
    // Not a timing assertion on speed: a fallback that waited on long timeouts would take tens of seconds.
    expect(Date.now() - began).toBeLessThan(20_000);
  });
});

describe('bad input over real HTTP', () => {
  let dir: string;
  let registry: Registry;
  let agent: ShoalService;
  let image: BuiltImage;

  beforeAll(async () => {
    dir = await makeTempDir('badinput');
    registry = await startRegistry();
    image = await buildAndPushImage({ registry, repo: 'team/app', tag: 'v1', layers: 1, layerSize: MiB });
    agent = await startAgent({ id: 'x', natsUrl: 'nats://127.0.0.1:1', registries: [registry.url], dir });
  });

  afterAll(async () => {
    await agent?.stop();
    await registry?.stop();
    await removeTempDir(dir);
  });

  it('answers OCI errors with the right status and writes nothing outside the cache', async () => {
    const layer = image.layers[0]!;
    const cases: [string, number, string][] = [
      [`/v2/../../../../etc/passwd/blobs/${layer.digest}`, 400, 'NAME_INVALID'],
      [`/v2/%2e%2e/%2e%2e/etc/blobs/${layer.digest}`, 400, 'NAME_INVALID'],
      [`/v2/team/app/blobs/sha256:${'../'.repeat(5)}etc`, 400, 'NAME_INVALID'],
      [`/v2/team/app/blobs/sha256:zz`, 400, 'DIGEST_INVALID'],
      [`/v2/team/app/blobs/sha256:${'f'.repeat(64)}`, 404, 'BLOB_UNKNOWN'],
      [`/peer/v1/blobs/sha256/${'f'.repeat(64)}/chunks/0`, 401, 'UNAUTHORIZED'],
      [`/peer/v1/blobs/sha256/..%2f..%2fetc/chunks/0`, 400, 'DIGEST_INVALID'],
    ];
    for (const [path, status, code] of cases) {
      const res = await rawGet(agent.port, path);
      expect({ path, status: res.status }).toEqual({ path, status });
      expect((JSON.parse(res.body) as { errors: { code: string }[] }).errors[0]?.code).toBe(code);
    }
    const range = await fetch(`${agent.url}/v2/team/app/blobs/${layer.digest}`, {
      headers: { range: 'bytes=999999999-' },
    });
    expect(range.status).toBe(416);
    expect(((await range.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('RANGE_INVALID');
    expect((await readdir(join(dir, 'x'))).sort()).toEqual(['cache']);
    expect(await readdir(join(dir, 'x', 'cache'))).toEqual(['blobs']);
    // The agent is still serving after all of it.
    const ok = await pullBlob(agent, image.repo, layer.digest);
    expect(ok.sha256).toBe(layer.digest);
  });
});
