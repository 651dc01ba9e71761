import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, loadConfig } from '@shoal/mesh';
import { type Agent, createAgent } from '../src/agent.js';
import { agentSpec } from '../src/config.js';
import { peerTokenSource } from '@shoal/mesh';
import { type FakeRegistry, randomBlob, startFakeRegistry } from './fake-registry.js';

const MiB = 1024 * 1024;

async function makeAgent(registry: FakeRegistry, dir: string, extra: string[] = []): Promise<Agent> {
  // NATS is pointed at a closed port: these tests cover the mirror API and the direct-to-origin path.
  const { config } = loadConfig(agentSpec, {
    argv: [
      '--node-id=unit',
      `--cache-dir=${join(dir, 'cache')}`,
      `--registries=${registry.url}`,
      '--nats-servers=nats://127.0.0.1:1',
      '--log-level=silent',
      ...extra,
    ],
    env: {},
    command: 'test',
  });
  const agent = await createAgent(config, createLogger('agent', 'silent'), () => 'http://127.0.0.1:1');
  await agent.start();
  return agent;
}

describe('mirror API', () => {
  let dir: string;
  let registry: FakeRegistry;
  let agent: Agent;
  let blob: Buffer;
  let digest: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-mirror-'));
    registry = await startFakeRegistry();
    blob = randomBlob(3 * MiB + 17);
    digest = registry.addBlob(blob);
    agent = await makeAgent(registry, dir, ['--peer-secret=unit-secret']);
  });
  afterAll(async () => {
    await agent.stop();
    await registry.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('serves a blob byte for byte, in chunks fetched by range from the registry', async () => {
    const res = await agent.app.inject({
      method: 'GET',
      url: `/v2/team/app/blobs/${digest}?ns=${registry.host}`,
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers['docker-content-digest']).toBe(digest);
    expect(res.rawPayload.equals(blob)).toBe(true);
    const ranges = registry.requests.filter((r) => r.method === 'GET' && r.range).map((r) => r.range);
    expect(ranges).toEqual([
      'bytes=0-1048575',
      'bytes=1048576-2097151',
      'bytes=2097152-3145727',
      'bytes=3145728-3145744',
    ]);
  });

  it('drops and counts events while NATS is away, and still serves', async () => {
    const res = await agent.app.inject({ method: 'GET', url: '/metrics' });
    // The four ranges of the first test, counted as chunk requests to the registry.
    expect(res.payload).toMatch(/^shoal_agent_origin_requests_total\{kind="chunk",status="2xx"[^}]*\} 4$/m);
    const dropped = /^shoal_events_dropped_total\{[^}]*\} (\d+)$/m.exec(res.payload);
    // The pull above published pull_started, chunk_fetched and pull_finished with no NATS to take them.
    expect(Number(dropped?.[1])).toBeGreaterThan(0);
  });

  it('answers HEAD with size and digest and no body', async () => {
    const res = await agent.app.inject({ method: 'HEAD', url: `/v2/team/app/blobs/${digest}` });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-length']).toBe(String(blob.length));
    expect(res.rawPayload.length).toBe(0);
  });

  it('answers a range with 206 and the exact bytes', async () => {
    const res = await agent.app.inject({
      method: 'GET',
      url: `/v2/team/app/blobs/${digest}`,
      headers: { range: 'bytes=1048000-2097999' },
    });
    expect(res.statusCode).toBe(206);
    expect(res.headers['content-range']).toBe(`bytes 1048000-2097999/${blob.length}`);
    expect(res.rawPayload.equals(blob.subarray(1048000, 2098000))).toBe(true);
    const suffix = await agent.app.inject({
      method: 'GET',
      url: `/v2/team/app/blobs/${digest}`,
      headers: { range: 'bytes=-10' },
    });
    expect(suffix.rawPayload.equals(blob.subarray(blob.length - 10))).toBe(true);
  });

  it('shares one download between concurrent clients', async () => {
    const other = randomBlob(4 * MiB);
    const otherDigest = registry.addBlob(other);
    const before = registry.requests.length;
    const results = await Promise.all(
      Array.from({ length: 5 }, () =>
        agent.app.inject({ method: 'GET', url: `/v2/team/app/blobs/${otherDigest}` }),
      ),
    );
    for (const res of results) expect(res.rawPayload.equals(other)).toBe(true);
    const chunkGets = registry.requests
      .slice(before)
      .filter((r) => r.method === 'GET' && r.path.endsWith(otherDigest));
    expect(chunkGets).toHaveLength(4);
  });

  it('passes a blob through when the registry disagrees with the cached size', async () => {
    const data = randomBlob(MiB + 5);
    const other = registry.addBlob(data);
    const first = await agent.app.inject({ method: 'GET', url: `/v2/team/app/blobs/${other}` });
    expect(first.rawPayload.equals(data)).toBe(true);
    registry.headSizes.set(other, data.length + 100);
    const before = registry.requests.length;
    // Another credential, so the answer remembered for the first one does not hide the new size.
    const res = await agent.app.inject({
      method: 'GET',
      url: `/v2/team/app/blobs/${other}`,
      headers: { authorization: 'Basic b3RoZXI6dXNlcg==' },
    });
    registry.headSizes.delete(other);
    expect(res.statusCode).toBe(200);
    expect(res.rawPayload.equals(data)).toBe(true);
    const gets = registry.requests.slice(before).filter((r) => r.method === 'GET');
    expect(gets).toEqual([{ method: 'GET', path: `/v2/team/app/blobs/${other}`, authorized: true }]);
    expect(agent.store.get(other.slice('sha256:'.length))?.complete).toBe(true);
  });

  it('passes manifests through to the registry every time', async () => {
    const before = registry.requests.length;
    for (let i = 0; i < 2; i++) {
      const res = await agent.app.inject({
        method: 'GET',
        url: `/v2/team/app/manifests/v1?ns=${registry.host}`,
      });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toBe('application/vnd.oci.image.manifest.v1+json');
    }
    expect(
      registry.requests.slice(before).filter((r) => r.path === '/v2/team/app/manifests/v1'),
    ).toHaveLength(2);
  });

  it('refuses bad input with OCI errors and writes nothing outside the cache', async () => {
    const cases: [string, string, number, string, Record<string, string>?][] = [
      ['GET', `/v2/team/app/blobs/sha256:1234`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/team/app/blobs/sha256:${'0'.repeat(64)}`, 404, 'BLOB_UNKNOWN'],
      // The URL parser resolves literal dot segments before routing, leaving a path no route serves.
      ['GET', `/v2/../../etc/blobs/${digest}`, 404, 'BLOB_UNKNOWN'],
      ['GET', `/v2/%2e%2e/%2e%2e/etc/blobs/${digest}`, 404, 'BLOB_UNKNOWN'],
      ['GET', `/v2/a/..%2f..%2fetc/blobs/${digest}`, 400, 'NAME_INVALID'],
      ['GET', `/v2/team/app/blobs/..%2f..%2fpasswd`, 400, 'NAME_INVALID'],
      ['GET', `/v2/Team/App/manifests/v1`, 400, 'NAME_INVALID'],
      ['GET', `/v2/team/app/manifests/..%2fx`, 400, 'NAME_INVALID'],
      ['GET', `/v2/team/app/referrers/..%5C..%5Capi%5Cusers`, 400, 'DIGEST_INVALID'],
      ['GET', `/v2/team/app/blobs/${digest}?ns=evil.example.com`, 400, 'DENIED'],
      ['PUT', `/v2/team/app/manifests/v1`, 405, 'UNSUPPORTED'],
      ['GET', `/v2/team/app/blobs/${digest}`, 416, 'RANGE_INVALID', { range: `bytes=${blob.length}-` }],
      ['GET', `/v2/team/app/blobs/${digest}`, 416, 'RANGE_INVALID', { range: 'bytes=a-b' }],
      ['GET', `/v2/team/app/blobs/${digest}`, 416, 'RANGE_INVALID', { range: 'bytes=0-1,5-9' }],
    ];
    for (const [method, url, status, code, headers] of cases) {
      const res = await agent.app.inject({ method: method as 'GET', url, ...(headers ? { headers } : {}) });
      expect({ url, status: res.statusCode }).toEqual({ url, status });
      expect(res.json<{ errors: { code: string }[] }>().errors[0]?.code).toBe(code);
    }
    const bad = await agent.app.inject({
      method: 'GET',
      url: `/v2/team/app/blobs/${digest}`,
      headers: { range: 'bytes=a-b' },
    });
    expect(bad.headers['content-range']).toBe(`bytes */${blob.length}`);
    expect(await readdir(dir)).toEqual(['cache']);
    expect(await readdir(join(dir, 'cache'))).toEqual(['blobs']);
  });

  it('serves chunks to peers only with a valid mesh token', async () => {
    const hex = digest.slice('sha256:'.length);
    const url = `/peer/v1/blobs/sha256/${hex}/chunks/1`;
    const anonymous = await agent.app.inject({ method: 'GET', url });
    expect(anonymous.statusCode).toBe(401);
    expect(anonymous.rawPayload.length).toBeLessThan(200);
    const forged = await agent.app.inject({
      method: 'GET',
      url,
      headers: { authorization: peerTokenSource('wrong-secret', 'mallory')() },
    });
    expect(forged.statusCode).toBe(401);
    const ok = await agent.app.inject({
      method: 'GET',
      url,
      headers: { authorization: peerTokenSource('unit-secret', 'b')() },
    });
    expect(ok.statusCode).toBe(200);
    expect(ok.rawPayload.equals(blob.subarray(MiB, 2 * MiB))).toBe(true);
  });

  it('exposes metrics by source', async () => {
    const res = await agent.app.inject({ method: 'GET', url: '/metrics' });
    expect(res.body).toMatch(/shoal_agent_client_bytes_total\{source="origin",service="agent"\} \d+/);
    expect(res.body).toMatch(/shoal_agent_fallbacks_total\{reason="nats_unavailable"/);
  });
});

describe('mirror API against a registry with authentication', () => {
  let dir: string;
  let registry: FakeRegistry;
  let agent: Agent;
  const credentials = `Basic ${Buffer.from('alice:secret').toString('base64')}`;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-mirror-auth-'));
    registry = await startFakeRegistry({ user: 'alice', password: 'secret' });
    agent = await makeAgent(registry, dir);
  });
  afterAll(async () => {
    await agent.stop();
    await registry.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('passes the challenge through and serves with the client’s own credentials', async () => {
    const data = randomBlob(MiB + 1);
    const digest = registry.addBlob(data);
    const anonymous = await agent.app.inject({ method: 'GET', url: `/v2/private/app/blobs/${digest}` });
    expect(anonymous.statusCode).toBe(401);
    expect(anonymous.headers['www-authenticate']).toBe('Basic realm="fake"');
    const base = await agent.app.inject({ method: 'GET', url: '/v2/' });
    expect(base.statusCode).toBe(401);
    const ok = await agent.app.inject({
      method: 'GET',
      url: `/v2/private/app/blobs/${digest}`,
      headers: { authorization: credentials },
    });
    expect(ok.statusCode).toBe(200);
    expect(ok.rawPayload.equals(data)).toBe(true);
  });

  it('refuses a cached private blob to a client the registry refuses', async () => {
    const data = randomBlob(1000);
    const digest = registry.addBlob(data);
    const ok = await agent.app.inject({
      method: 'GET',
      url: `/v2/private/app/blobs/${digest}`,
      headers: { authorization: credentials },
    });
    expect(ok.statusCode).toBe(200);
    const wrong = await agent.app.inject({
      method: 'GET',
      url: `/v2/private/app/blobs/${digest}`,
      headers: { authorization: `Basic ${Buffer.from('mallory:guess').toString('base64')}` },
    });
    expect(wrong.statusCode).toBe(401);
    expect(wrong.rawPayload.includes(data)).toBe(false);
  });
});

describe('chunk memory', () => {
  it('keeps the chunks in flight within download.memory, whatever download.concurrency allows', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-memory-'));
    const registry = await startFakeRegistry({ rangeDelayMs: 30 });
    const blob = randomBlob(16 * MiB);
    const digest = registry.addBlob(blob);
    const agent = await makeAgent(registry, dir, [
      '--chunk-size=1MiB',
      '--download-concurrency=8',
      '--download-memory=3MiB',
    ]);
    try {
      const res = await agent.app.inject({
        method: 'GET',
        url: `/v2/team/app/blobs/${digest}?ns=${registry.host}`,
      });
      expect(res.statusCode).toBe(200);
      expect(res.rawPayload.equals(blob)).toBe(true);
      expect(registry.peakRanges()).toBe(3);
    } finally {
      await agent.stop();
      await registry.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('limits API without peer.secret', () => {
  it('shows the limits but refuses to change them, saying what to set', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-open-'));
    const registry = await startFakeRegistry();
    const agent = await makeAgent(registry, dir);
    try {
      const shown = await agent.app.inject({ method: 'GET', url: '/shoal/v1/limits' });
      expect(shown.statusCode).toBe(200);
      for (const method of ['PUT', 'DELETE'] as const) {
        const res = await agent.app.inject({
          method,
          url: '/shoal/v1/limits',
          ...(method === 'PUT' ? { payload: { share: false } } : {}),
        });
        expect(res.statusCode).toBe(401);
        expect(res.body).toMatch(/set peer\.secret/);
      }
      const after = await agent.app.inject({ method: 'GET', url: '/shoal/v1/limits' });
      expect(after.json()).toMatchObject({ share: true, overridden: [] });
    } finally {
      await agent.stop();
      await registry.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
