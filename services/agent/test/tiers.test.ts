/**
 * The cache tiers, eviction and limits as wired into a real agent: eviction while blobs are pulled and
 * served, the withdrawal an eviction publishes, the memory tier serving peers, per-peer upload slots,
 * peer.share=false, and the limits API. NATS is a real nats-server where announcements matter.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createLogger,
  ensureStreams,
  limitsPath,
  loadConfig,
  MESH_TOKEN_HEADER,
  peerTokenSource,
  subjects,
} from '@shoal/mesh';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';
import { type Agent, createAgent } from '../src/agent.js';
import { agentSpec } from '../src/config.js';
import { type FakeRegistry, randomBlob, startFakeRegistry } from './fake-registry.js';

const MiB = 1024 * 1024;
const SECRET = 'tiers-secret';
const peerAuth = (node: string) => ({ authorization: peerTokenSource(SECRET, node)() });
const meshAuth = () => ({ [MESH_TOKEN_HEADER]: peerTokenSource(SECRET, 'shoalctl')() });
const hexOf = (digest: string) => digest.slice('sha256:'.length);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

let dir: string;
let registry: FakeRegistry;
let nats: NatsServer;
let nc: NatsConnection;
let counter = 0;
const agents: Agent[] = [];

async function makeAgent(extra: string[], options: { nats?: boolean } = {}): Promise<Agent> {
  const id = `tiers-${++counter}`;
  const { config } = loadConfig(agentSpec, {
    argv: [
      `--node-id=${id}`,
      `--cache-dir=${join(dir, id)}`,
      `--registries=${registry.url}`,
      `--nats-servers=${options.nats ? nats.url : 'nats://127.0.0.1:1'}`,
      `--peer-secret=${SECRET}`,
      '--log-level=silent',
      ...extra,
    ],
    env: {},
    command: 'test',
  });
  const agent = await createAgent(config, createLogger('agent', 'silent'), () => 'http://127.0.0.1:1');
  agents.push(agent);
  await agent.start();
  if (options.nats) {
    await waitUntil('the agent to reach NATS', async () => {
      const res = await agent.app.inject({ method: 'GET', url: '/healthz' });
      return res.json<{ nats: boolean }>().nats;
    });
  }
  return agent;
}

async function pull(agent: Agent, digest: string): Promise<Buffer> {
  const res = await agent.app.inject({ method: 'GET', url: `/v2/team/app/blobs/${digest}` });
  expect(res.statusCode).toBe(200);
  return res.rawPayload;
}

async function metricValue(agent: Agent, name: string, labels = ''): Promise<number> {
  const text = (await agent.app.inject({ method: 'GET', url: '/metrics' })).payload;
  const escaped = name.replace(/[{}]/g, '\\$&');
  const line = new RegExp(`^${escaped}(\\{[^}]*${labels}[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return Number(line?.[2] ?? 0);
}

/** Collects the announcements published on shoal.announce.> as they come. */
async function collectAnnouncements(): Promise<{
  seen: { type: string; node: string; blob: string; at: number }[];
  sub: Subscription;
}> {
  const seen: { type: string; node: string; blob: string; at: number }[] = [];
  const sub = nc.subscribe(subjects.announceAll);
  void (async () => {
    for await (const msg of sub) {
      const body = msg.json<{ type: string; node: string; blob: string }>();
      seen.push({ ...body, at: performance.now() });
    }
  })();
  // The subscription is in place on the server before anything is published.
  await nc.flush();
  return { seen, sub };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-tiers-'));
  [registry, nats] = await Promise.all([startFakeRegistry(), startNatsServer()]);
  nc = await connect({ servers: nats.url });
  await ensureStreams(await jetstreamManager(nc));
});

afterAll(async () => {
  await Promise.allSettled(agents.map((agent) => agent.stop()));
  await nc?.close();
  await Promise.allSettled([registry?.close(), nats?.stop()]);
  await rm(dir, { recursive: true, force: true });
});

describe('eviction', () => {
  it('evicts the least recently used blob during a pull, and keeps a blob being served', async () => {
    // 42 MiB: eviction starts above 37.8 MiB and stops at 33.6 MiB. One fetch at a time, so the bytes
    // reserved by writes under way (counted against the watermarks) are one chunk.
    const agent = await makeAgent(['--cache-max-size=42MiB', '--download-concurrency=1']);
    const [a, b, c, d] = [24, 6, 6, 6].map((mib) => randomBlob(mib * MiB)) as [
      Buffer,
      Buffer,
      Buffer,
      Buffer,
    ];
    const [da, db, dc, dd] = [a, b, c, d].map((blob) => registry.addBlob(blob)) as [
      string,
      string,
      string,
      string,
    ];
    expect((await pull(agent, da)).equals(a)).toBe(true);

    // A client starts reading A and stalls: A is pinned while it is served, and from now on the least
    // recently used blob.
    const address = await agent.app.listen({ host: '127.0.0.1', port: 0 });
    const port = new URL(address).port;
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port, path: `/v2/team/app/blobs/${da}` }, resolve);
      req.on('error', reject);
      req.end();
    });
    response.pause();
    await waitUntil('A to be pinned by its client', () => agent.store.isPinned(hexOf(da)));

    expect((await pull(agent, db)).equals(b)).toBe(true);
    expect((await pull(agent, dc)).equals(c)).toBe(true);
    expect(agent.store.totalBytes).toBe(36 * MiB);
    // D takes the cache over its high watermark: B, the least recently used blob not in use, goes.
    expect((await pull(agent, dd)).equals(d)).toBe(true);
    expect(agent.store.get(hexOf(db))).toBeUndefined();
    expect(agent.store.get(hexOf(da))?.complete).toBe(true);
    expect(agent.store.get(hexOf(dc))?.complete).toBe(true);
    expect(agent.store.totalBytes).toBe(36 * MiB);
    expect(await metricValue(agent, 'shoal_agent_cache_evictions_total', 'reason="capacity"')).toBe(1);
    expect(await metricValue(agent, 'shoal_agent_cache_evicted_bytes_total', 'reason="capacity"')).toBe(
      6 * MiB,
    );

    // The stalled client still gets A whole.
    const parts: Buffer[] = [];
    response.on('data', (part: Buffer) => parts.push(part));
    response.resume();
    await new Promise((resolve) => response.on('end', resolve));
    expect(Buffer.concat(parts).equals(a)).toBe(true);
    await waitUntil('A to be released', () => !agent.store.isPinned(hexOf(da)));
  });

  it('publishes the withdrawal of an evicted blob at once, not with the next batch', async () => {
    // Batches every 10 s: only an immediate withdrawal arrives within the second allowed.
    const agent = await makeAgent(['--announce-interval=10s'], { nats: true });
    const blob = randomBlob(2 * MiB);
    const digest = registry.addBlob(blob);
    await pull(agent, digest);
    // The download holds its pin until the whole blob is verified, which may end after the response.
    await waitUntil('the download to finish', () => !agent.store.isPinned(hexOf(digest)));
    const { seen, sub } = await collectAnnouncements();
    try {
      const began = performance.now();
      // Shrinking the cache to nothing evicts every blob not in use.
      const res = await agent.app.inject({
        method: 'PUT',
        url: limitsPath,
        headers: meshAuth(),
        payload: { cacheMaxSize: 1 },
      });
      expect(res.statusCode).toBe(200);
      await waitUntil(
        'the withdrawal',
        () => seen.some((m) => m.type === 'withdraw' && m.blob === digest),
        1_000,
      );
      const withdrawal = seen.find((m) => m.type === 'withdraw' && m.blob === digest);
      const ms = (withdrawal?.at ?? 0) - began;
      console.log(`withdrawal published ${ms.toFixed(1)} ms after the eviction was asked for`);
      expect(agent.store.get(hexOf(digest))).toBeUndefined();
    } finally {
      sub.unsubscribe();
    }
  });
});

describe('memory tier', () => {
  it('serves a chunk that clients just streamed to a peer from memory', async () => {
    const agent = await makeAgent(['--cache-memory=64MiB']);
    const blob = randomBlob(3 * MiB);
    const digest = registry.addBlob(blob);
    expect((await pull(agent, digest)).equals(blob)).toBe(true);
    expect(agent.memory.has(hexOf(digest), 0)).toBe(true);
    const hitsBefore = await metricValue(agent, 'shoal_agent_memory_tier_hits_total');
    const res = await agent.app.inject({
      method: 'GET',
      url: `/peer/v1/blobs/sha256/${hexOf(digest)}/chunks/0`,
      headers: peerAuth('peer-1'),
    });
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(blob.subarray(0, MiB))).toBe(true);
    expect(await metricValue(agent, 'shoal_agent_memory_tier_hits_total')).toBe(hitsBefore + 1);
    expect(await metricValue(agent, 'shoal_agent_memory_tier_bytes')).toBeGreaterThanOrEqual(MiB);
  });
});

describe('peer upload limits', () => {
  it('answers 429 with retry-after when a peer asks for more chunks than its upload slots', async () => {
    // 64 KiB/s: the first 1 MiB chunk holds the peer's only slot for many seconds.
    const agent = await makeAgent([
      '--peer-uploads-per-peer=1',
      '--peer-upload-rate=64KiB',
      '--peer-upload-burst=64KiB',
      '--cache-memory=0',
    ]);
    const blob = randomBlob(2 * MiB);
    const digest = registry.addBlob(blob);
    await pull(agent, digest);
    const url = (index: number) => `/peer/v1/blobs/sha256/${hexOf(digest)}/chunks/${index}`;
    const first = agent.app.inject({ method: 'GET', url: url(0), headers: peerAuth('peer-a') });
    await waitUntil('the first upload to start', () => agent.limits.uploadsPerPeer.active('peer-a') === 1);
    const refused = await agent.app.inject({ method: 'GET', url: url(1), headers: peerAuth('peer-a') });
    expect(refused.statusCode).toBe(429);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.json<{ errors: { code: string }[] }>().errors[0]?.code).toBe('TOOMANYREQUESTS');
    // Another peer has slots of its own.
    const other = agent.app.inject({ method: 'GET', url: url(1), headers: peerAuth('peer-b') });
    await waitUntil('the other peer to be served', () => agent.limits.uploadsPerPeer.active('peer-b') === 1);
    expect(await metricValue(agent, 'shoal_agent_peer_uploads_refused_total')).toBe(1);
    // Lifting the rate at run time lets the waiting uploads through at once.
    const lifted = await agent.app.inject({
      method: 'PUT',
      url: limitsPath,
      headers: meshAuth(),
      payload: { uploadRate: 0 },
    });
    expect(lifted.statusCode).toBe(200);
    const [done, otherDone] = await Promise.all([first, other]);
    expect(done.rawPayload.equals(blob.subarray(0, MiB))).toBe(true);
    expect(otherDone.rawPayload.equals(blob.subarray(MiB))).toBe(true);
    expect(agent.limits.uploadsPerPeer.active('peer-a')).toBe(0);
  });
});

describe('peer.share=false', () => {
  it('refuses peers with 503 and announces nothing, but still pulls and heartbeats', async () => {
    const { seen, sub } = await collectAnnouncements();
    const heartbeats = nc.subscribe(subjects.heartbeatAll);
    let beats = 0;
    void (async () => {
      for await (const _ of heartbeats) beats++;
    })();
    try {
      const agent = await makeAgent(['--peer-share=false', '--heartbeat-interval=100ms'], { nats: true });
      const blob = randomBlob(2 * MiB);
      const digest = registry.addBlob(blob);
      expect((await pull(agent, digest)).equals(blob)).toBe(true);
      const res = await agent.app.inject({
        method: 'GET',
        url: `/peer/v1/blobs/sha256/${hexOf(digest)}/chunks/0`,
        headers: peerAuth('peer-1'),
      });
      expect(res.statusCode).toBe(503);
      // Ten announcement intervals.
      await sleep(500);
      expect(seen.filter((m) => m.blob === digest)).toEqual([]);
      expect(beats).toBeGreaterThan(0);
    } finally {
      sub.unsubscribe();
      heartbeats.unsubscribe();
    }
  });
});

describe('limits API', () => {
  let agent: Agent;
  beforeAll(async () => {
    agent = await makeAgent(['--download-rate=10MB', '--cache-max-size=1GiB', '--peer-uploads-per-peer=4']);
  });

  it('needs a mesh token', async () => {
    const none = await agent.app.inject({ method: 'GET', url: limitsPath });
    expect(none.statusCode).toBe(401);
    const wrong = await agent.app.inject({
      method: 'PUT',
      url: limitsPath,
      headers: { [MESH_TOKEN_HEADER]: peerTokenSource('other-secret', 'x')() },
      payload: { downloadRate: 0 },
    });
    expect(wrong.statusCode).toBe(403);
    // The token may come in Authorization too: this API carries no registry credential.
    const viaAuthorization = await agent.app.inject({
      method: 'GET',
      url: limitsPath,
      headers: peerAuth('shoalctl'),
    });
    expect(viaAuthorization.statusCode).toBe(200);
  });

  it('answers the limits in force', async () => {
    const res = await agent.app.inject({ method: 'GET', url: limitsPath, headers: meshAuth() });
    expect(res.json()).toEqual({
      downloadRate: 10_000_000,
      downloadBurst: 8 * MiB,
      uploadRate: 0,
      uploadBurst: 4 * MiB,
      uploadsPerPeer: 4,
      registryRate: 0,
      registryBurst: 8 * MiB,
      share: true,
      cacheMaxSize: 1024 * MiB,
      memory: 0,
      overridden: [],
    });
  });

  it('refuses a bad change with 400 naming the field, and changes nothing', async () => {
    for (const [payload, field] of [
      [{ downloadRate: -1 }, 'downloadRate'],
      [{ uploadBurst: 10 }, 'uploadBurst'],
      [{ uploadsPerPeer: 1.5 }, 'uploadsPerPeer'],
      [{ share: 'no' }, 'share'],
      [{ memory: '1GiB' }, 'memory'],
      [{ speed: 1 }, 'speed'],
    ] as const) {
      const res = await agent.app.inject({ method: 'PUT', url: limitsPath, headers: meshAuth(), payload });
      expect(res.statusCode, field).toBe(400);
      expect(res.json<{ errors: { message: string }[] }>().errors[0]?.message).toContain(field);
    }
    expect(agent.limits.download.limit.rate).toBe(10_000_000);
  });

  it('applies a change at once', async () => {
    const res = await agent.app.inject({
      method: 'PUT',
      url: limitsPath,
      headers: meshAuth(),
      payload: {
        downloadRate: 2_000_000,
        downloadBurst: MiB,
        uploadRate: 5_000_000,
        uploadsPerPeer: 2,
        registryRate: 1_000_000,
        memory: 16 * MiB,
        cacheMaxSize: 512 * MiB,
      },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ downloadRate: 2_000_000, downloadBurst: MiB, uploadsPerPeer: 2 });
    expect(agent.limits.download.limit).toEqual({ rate: 2_000_000, burst: MiB });
    expect(agent.limits.peerUploads.limit.rate).toBe(5_000_000);
    expect(agent.limits.registry.limit.rate).toBe(1_000_000);
    expect(agent.limits.uploadsPerPeer.limit).toBe(2);
    expect(agent.memory.stats().budget).toBe(16 * MiB);
    expect(agent.store.capacity).toBe(512 * MiB);
    const read = await agent.app.inject({ method: 'GET', url: limitsPath, headers: meshAuth() });
    expect(read.json()).toEqual(res.json());
  });
});

describe('configuration', () => {
  it('refuses a low watermark that is not below the high one, naming both keys', async () => {
    const { config } = loadConfig(agentSpec, {
      argv: ['--cache-high-watermark=80', '--cache-low-watermark=80', `--cache-dir=${join(dir, 'bad')}`],
      env: {},
      command: 'test',
    });
    await expect(createAgent(config, createLogger('agent', 'silent'), () => '')).rejects.toThrow(
      /cache\.lowWatermark.*cache\.highWatermark/,
    );
  });
});
