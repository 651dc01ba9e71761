import { createHash } from 'node:crypto';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, loadConfig } from '@shoal/mesh';
import { type Agent, createAgent } from '../src/agent.js';
import { agentSpec } from '../src/config.js';
import { peerTokenSource } from '@shoal/mesh';
import { MESH_TOKEN_HEADER, type PreheatJobView } from '@shoal/mesh';
import { type FakeRegistry, randomBlob, startFakeRegistry } from './fake-registry.js';

const MiB = 1024 * 1024;
const SECRET = 'unit-mesh-secret';
const USER = 'alice';
const PASSWORD = 'right-Pw';
const basic = (user: string, password: string) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const meshToken = () => ({ [MESH_TOKEN_HEADER]: peerTokenSource(SECRET, 'shoalctl')() });

/**
 * A registry whose blob bodies wait until released, so a preheat can be caught mid-download. HEAD answers
 * at once, as the authorisation needs.
 */
async function startStallingRegistry(blob: Buffer): Promise<{
  url: string;
  digest: string;
  release(): void;
  close(): Promise<void>;
}> {
  const digest = `sha256:${createHash('sha256').update(blob).digest('hex')}`;
  const held: (() => void)[] = [];
  let released = false;
  const send = (res: ServerResponse, range: string | undefined) => {
    const match = /^bytes=(\d+)-(\d+)$/.exec(range ?? '');
    const start = Number(match?.[1] ?? 0);
    const end = Math.min(Number(match?.[2] ?? blob.length - 1) + 1, blob.length);
    res.writeHead(match ? 206 : 200, {
      'content-length': end - start,
      ...(match ? { 'content-range': `bytes ${start}-${end - 1}/${blob.length}` } : {}),
    });
    res.end(blob.subarray(start, end));
  };
  const server: Server = createServer((req, res) => {
    if (!req.url?.endsWith(`/blobs/${digest}`)) {
      res.writeHead(404).end();
      return;
    }
    if (req.method === 'HEAD') {
      res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': digest }).end();
      return;
    }
    const range = req.headers.range;
    if (released) send(res, range);
    else held.push(() => send(res, range));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    digest,
    release() {
      released = true;
      for (const go of held.splice(0)) go();
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe('preheat API', () => {
  let dir: string;
  let registry: FakeRegistry;
  let stalling: Awaited<ReturnType<typeof startStallingRegistry>>;
  let stallingBlob: Buffer;
  let agent: Agent;
  const blobs: { data: Buffer; digest: string }[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-preheat-'));
    registry = await startFakeRegistry({ user: USER, password: PASSWORD });
    for (const size of [3 * MiB + 5, MiB, 17]) {
      const data = randomBlob(size);
      blobs.push({ data, digest: registry.addBlob(data) });
    }
    stallingBlob = randomBlob(2 * MiB + 3);
    stalling = await startStallingRegistry(stallingBlob);
    const { config } = loadConfig(agentSpec, {
      argv: [
        '--node-id=unit',
        `--cache-dir=${join(dir, 'cache')}`,
        `--registries=${registry.url},stalling.test=${stalling.url}`,
        // NATS is pointed at a closed port: every chunk comes from the registry.
        '--nats-servers=nats://127.0.0.1:1',
        `--peer-secret=${SECRET}`,
        '--log-level=silent',
      ],
      env: {},
      command: 'test',
    });
    agent = await createAgent(config, createLogger('agent', 'silent'), () => 'http://127.0.0.1:1');
    await agent.start();
  });

  afterAll(async () => {
    stalling?.release();
    await agent?.stop();
    await registry?.close();
    await stalling?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const start = (body: unknown, headers: Record<string, string> = {}) =>
    agent.app.inject({
      method: 'POST',
      url: '/shoal/v1/preheat',
      headers: { 'content-type': 'application/json', ...meshToken(), ...headers },
      payload: typeof body === 'string' ? body : JSON.stringify(body),
    });
  const view = async (id: string) => {
    const res = await agent.app.inject({
      method: 'GET',
      url: `/shoal/v1/preheat/${id}`,
      headers: meshToken(),
    });
    expect(res.statusCode).toBe(200);
    return res.json<PreheatJobView>();
  };
  const settled = async (
    id: string,
    until = (v: PreheatJobView) => v.blobs.every((b) => b.state === 'done' || b.state === 'failed'),
  ) => {
    const deadline = Date.now() + 15_000;
    for (;;) {
      const current = await view(id);
      if (until(current)) return current;
      if (Date.now() > deadline) throw new Error(`job ${id} did not settle: ${JSON.stringify(current)}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };

  it('answers 202 with a job that brings every blob into the cache, streaming nothing', async () => {
    const before = registry.requests.length;
    const res = await start(
      { registry: registry.host, repository: 'team/app', digests: blobs.map((b) => b.digest) },
      { authorization: basic(USER, PASSWORD) },
    );
    expect(res.statusCode).toBe(202);
    const { id } = res.json<{ id: string }>();
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    const done = await settled(id);
    expect(done).toEqual({
      id,
      blobs: blobs.map((b) => ({
        digest: b.digest,
        size: b.data.length,
        bytes: b.data.length,
        state: 'done',
      })),
    });
    for (const b of blobs) expect(agent.store.get(b.digest.slice('sha256:'.length))?.complete).toBe(true);
    // The registry saw one authorising HEAD per blob and range GETs for the chunks: 4 + 1 + 1 chunks of 1 MiB.
    const seen = registry.requests.slice(before);
    expect(seen.filter((r) => r.method === 'HEAD')).toHaveLength(3);
    expect(seen.filter((r) => r.method === 'GET' && r.range)).toHaveLength(6);
    expect(seen.every((r) => r.authorized)).toBe(true);
  });

  it('marks a blob already in the cache done without fetching it again', async () => {
    const before = registry.requests.length;
    // Another credential the registry accepts the same way, so no remembered approval is reused.
    const res = await start(
      { registry: registry.host, repository: 'team/app', digests: [blobs[0]!.digest] },
      { authorization: basic(USER, PASSWORD) },
    );
    expect(res.statusCode).toBe(202);
    const done = await settled(res.json<{ id: string }>().id);
    expect(done.blobs).toEqual([
      { digest: blobs[0]!.digest, size: blobs[0]!.data.length, bytes: blobs[0]!.data.length, state: 'done' },
    ]);
    expect(registry.requests.slice(before).filter((r) => r.method === 'GET')).toHaveLength(0);
  });

  it('fails each blob with the registry answer when it refuses the credential', async () => {
    const fresh = registry.addBlob(randomBlob(MiB));
    for (const authorization of [basic(USER, 'wrong-Pw'), undefined]) {
      const res = await start(
        { registry: registry.host, repository: 'team/app', digests: [fresh, blobs[1]!.digest] },
        authorization === undefined ? {} : { authorization },
      );
      expect(res.statusCode).toBe(202);
      const failed = await settled(res.json<{ id: string }>().id);
      // A blob this node holds is refused too: the registry decides who may have it, not the cache.
      expect(failed.blobs).toEqual([
        expect.objectContaining({ digest: fresh, state: 'failed', status: 401, bytes: 0 }),
        expect.objectContaining({ digest: blobs[1]!.digest, state: 'failed', status: 401 }),
      ]);
      expect(failed.blobs[0]!.error).toMatch(/^registry answered 401/);
    }
    expect(agent.store.get(fresh.slice('sha256:'.length))).toBeUndefined();
  });

  it('answers 401 without a mesh token and 403 with a wrong one, on every route', async () => {
    const body = { registry: registry.host, repository: 'team/app', digests: [blobs[0]!.digest] };
    const wrong = { [MESH_TOKEN_HEADER]: peerTokenSource('another-secret', 'mallory')() };
    const routes = [
      { method: 'POST', url: '/shoal/v1/preheat', payload: JSON.stringify(body) },
      { method: 'GET', url: '/shoal/v1/preheat/some-id' },
      { method: 'DELETE', url: '/shoal/v1/preheat/some-id' },
    ] as const;
    for (const route of routes) {
      for (const [headers, status, code] of [
        [{}, 401, 'UNAUTHORIZED'],
        [wrong, 403, 'DENIED'],
        // A peer token in Authorization is a registry credential here, not a mesh token.
        [{ authorization: peerTokenSource(SECRET, 'shoalctl')() }, 401, 'UNAUTHORIZED'],
      ] as const) {
        const res = await agent.app.inject({
          ...route,
          headers: { 'content-type': 'application/json', ...headers },
        });
        expect({ route: `${route.method} ${route.url}`, status: res.statusCode }).toEqual({
          route: `${route.method} ${route.url}`,
          status,
        });
        expect(res.json<{ errors: { code: string }[] }>().errors[0]?.code).toBe(code);
      }
    }
  });

  it('refuses bad input with 400 in the OCI error format', async () => {
    const digest = blobs[0]!.digest;
    const cases: [string, unknown, string][] = [
      ['not JSON', '{"repository":', 'UNKNOWN'],
      ['an array', [], 'UNKNOWN'],
      ['no repository', { digests: [digest] }, 'UNKNOWN'],
      ['a bad repository', { repository: '../etc', digests: [digest] }, 'NAME_INVALID'],
      ['no digests', { repository: 'team/app', digests: [] }, 'UNKNOWN'],
      ['a bad digest', { repository: 'team/app', digests: ['sha256:1234'] }, 'DIGEST_INVALID'],
      ['a digest that is no string', { repository: 'team/app', digests: [42] }, 'UNKNOWN'],
      ['an unknown field', { repository: 'team/app', digests: [digest], tag: 'v1' }, 'UNKNOWN'],
      [
        'a registry not mirrored',
        { registry: 'evil.example', repository: 'team/app', digests: [digest] },
        'DENIED',
      ],
      [
        'too many digests',
        { repository: 'team/app', digests: Array.from({ length: 1001 }, () => digest) },
        'UNKNOWN',
      ],
    ];
    for (const [what, body, code] of cases) {
      const res = await start(body);
      expect({ what, status: res.statusCode }).toEqual({ what, status: 400 });
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      const errors = res.json<{ errors: { code: string; message: string }[] }>().errors;
      expect({ what, code: errors[0]?.code }).toEqual({ what, code });
      expect(errors[0]?.message.length).toBeGreaterThan(0);
    }
    const missing = await agent.app.inject({
      method: 'GET',
      url: '/shoal/v1/preheat/no-such-job',
      headers: meshToken(),
    });
    expect(missing.statusCode).toBe(404);
    expect(missing.json<{ errors: { message: string }[] }>().errors[0]?.message).toMatch(/no preheat job/);
  });

  it('cancels a job: it stops waiting, and the download a client also waits on goes on', async () => {
    const res = await start({
      registry: 'stalling.test',
      repository: 'team/app',
      digests: [stalling.digest],
    });
    expect(res.statusCode).toBe(202);
    const { id } = res.json<{ id: string }>();
    await settled(id, (v) => v.blobs[0]?.state === 'fetching');
    // A client pulls the same blob meanwhile; it joins the download the preheat started.
    const pull = agent.app.inject({
      method: 'GET',
      url: `/v2/team/app/blobs/${stalling.digest}?ns=stalling.test`,
    });
    const cancel = await agent.app.inject({
      method: 'DELETE',
      url: `/shoal/v1/preheat/${id}`,
      headers: meshToken(),
    });
    expect(cancel.statusCode).toBe(200);
    expect(cancel.json<PreheatJobView>().blobs).toEqual([
      expect.objectContaining({ digest: stalling.digest, state: 'failed', error: 'cancelled' }),
    ]);
    stalling.release();
    const pulled = await pull;
    expect(pulled.statusCode).toBe(200);
    expect(pulled.rawPayload.equals(stallingBlob)).toBe(true);
    // The job keeps saying it was cancelled, though the blob is now in the cache.
    expect((await view(id)).blobs[0]).toMatchObject({ state: 'failed', error: 'cancelled' });
    // The whole blob is verified once its last chunk is in, a moment after the client has it.
    await expect
      .poll(() => agent.store.get(stalling.digest.slice('sha256:'.length))?.complete, { timeout: 5_000 })
      .toBe(true);
  });
});
