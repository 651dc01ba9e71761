/**
 * How the mesh behaves around a pull, on real processes: a node that starts while another is half-way
 * takes what that node has so far; a dead control plane never fails a pull; bad requests over real
 * HTTP get OCI errors and write nothing outside the cache.
 */
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
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
  waitForNodes,
} from './support/shoal.js';

const MiB = 1024 * 1024;

/** GETs a blob through an agent's mirror API and returns its sha256 and length. */
async function pullBlob(
  agent: ShoalService,
  repo: string,
  digest: string,
): Promise<{ sha256: string; bytes: number }> {
  const res = await fetch(`${agent.url}/v2/${repo}/blobs/${digest}`);
  if (res.status !== 200 || !res.body) throw new Error(`agent ${agent.name} answered ${res.status}`);
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const piece of res.body as AsyncIterable<Uint8Array>) {
    hash.update(piece);
    bytes += piece.length;
  }
  return { sha256: `sha256:${hash.digest('hex')}`, bytes };
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
    for (const id of ['a', 'b'])
      agents.push(
        await startAgent({
          id,
          natsUrl: nats.url,
          registries: [registry.url],
          dir,
          // These tests count registry bytes; a loaded test machine must not turn a slow scheduler reply
          // into a (legitimate, but here confusing) fallback to the registry.
          extraArgs: ['--scheduler-timeout=10s'],
        }),
      );
    await waitForNodes(nats.url, ['a', 'b']);
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

    expect(resultA).toEqual({ sha256: layer.digest, bytes: layer.size });
    expect(resultB).toEqual({ sha256: layer.digest, bytes: layer.size });
    const mb = await b.metrics();
    expect(metric(mb, 'shoal_agent_fetch_bytes_total', { source: 'peer' })).toBeGreaterThanOrEqual(
      aHadWhenBStarted,
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
      // Each blob waits at most one scheduler timeout (1 s) before going to the registry.
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
