/**
 * The agent's registry client asks again where asking again is safe: authorisations, manifests and
 * passed-through blobs survive a registry that refuses or drops a request now and then, while chunk
 * ranges (retried per chunk by the download) are sent once.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RegistryEndpoints } from '../src/endpoints.js';
import { Upstream } from '../src/upstream.js';

const DIGEST = `sha256:${'ab'.repeat(32)}`;

type Answer = (req: IncomingMessage, res: ServerResponse) => void;

let server: Server | undefined;
let upstream: Upstream | undefined;

afterEach(async () => {
  await upstream?.close();
  upstream = undefined;
  await stopServer();
});

async function stopServer(): Promise<void> {
  const current = server;
  server = undefined;
  if (!current) return;
  await new Promise<void>((resolve) => {
    current.close(() => resolve());
    current.closeAllConnections();
  });
}

/** A registry that gives the answers in order (the last one from then on), and counts requests. */
async function registry(answers: Answer[]): Promise<{ upstream: Upstream; requests: () => number }> {
  let count = 0;
  server = createServer((req, res) => {
    const answer = answers[Math.min(count, answers.length - 1)] as Answer;
    count++;
    answer(req, res);
  });
  await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const endpoints = new RegistryEndpoints(
    [{ name: 'r', url: `http://127.0.0.1:${port}` }],
    { zone: '', region: '' },
    30_000,
  );
  upstream = new Upstream({ endpoints, timeoutMs: 5_000, authCacheMs: 1_000, attempts: 3, retryBaseMs: 5 });
  return { upstream, requests: () => count };
}

const ok: Answer = (req, res) => {
  // A HEAD says how long the blob is; a GET here sends an empty body.
  res
    .writeHead(200, {
      'content-length': req.method === 'HEAD' ? '1234' : '0',
      'docker-content-digest': DIGEST,
    })
    .end();
};
const unavailable =
  (headers: Record<string, string> = {}): Answer =>
  (_req, res) => {
    res.writeHead(503, { 'content-type': 'application/json', ...headers }).end('{"errors":[]}');
  };
const reset: Answer = (req) => {
  req.socket.destroy();
};

describe('Upstream retries', () => {
  it('authorises a blob after two refusals', async () => {
    const r = await registry([unavailable(), unavailable(), ok]);
    const target = r.upstream.resolve('r');
    await expect(r.upstream.authorizeBlob(target, 'app', DIGEST, undefined)).resolves.toEqual({
      ok: true,
      size: 1234,
    });
    expect(r.requests()).toBe(3);
  });

  it('authorises a blob after a reset connection', async () => {
    const r = await registry([reset, ok]);
    const target = r.upstream.resolve('r');
    await expect(r.upstream.authorizeBlob(target, 'app', DIGEST, undefined)).resolves.toMatchObject({
      ok: true,
    });
    expect(r.requests()).toBe(2);
  });

  it('gives up after the configured attempts and passes the last answer on', async () => {
    const r = await registry([unavailable()]);
    const target = r.upstream.resolve('r');
    await expect(r.upstream.authorizeBlob(target, 'app', DIGEST, undefined)).resolves.toMatchObject({
      ok: false,
      status: 503,
    });
    expect(r.requests()).toBe(3);
  });

  it('throws the last error when every attempt is reset', async () => {
    const r = await registry([reset]);
    const target = r.upstream.resolve('r');
    await expect(r.upstream.authorizeBlob(target, 'app', DIGEST, undefined)).rejects.toThrow(/registry r/);
    expect(r.requests()).toBe(3);
  });

  it('never asks again after a refusal that is the request’s fault', async () => {
    const r = await registry([
      (_req, res) => {
        res.writeHead(401, { 'www-authenticate': 'Bearer realm="x"' }).end();
      },
    ]);
    const target = r.upstream.resolve('r');
    await expect(r.upstream.authorizeBlob(target, 'app', DIGEST, 'Bearer t')).resolves.toMatchObject({
      ok: false,
      status: 401,
    });
    expect(r.requests()).toBe(1);
  });

  it('waits a short Retry-After, and answers a long one at once', async () => {
    const short = await registry([unavailable({ 'retry-after': '1' }), ok]);
    const began = Date.now();
    const res = await short.upstream.send(short.upstream.resolve('r'), 'GET', '/v2/', {}, { retry: true });
    await res.body.dump();
    expect(res.status).toBe(200);
    expect(Date.now() - began).toBeGreaterThanOrEqual(950);
    await upstream?.close();
    await stopServer();

    const long = await registry([unavailable({ 'retry-after': '120' }), ok]);
    const answer = await long.upstream.send(long.upstream.resolve('r'), 'GET', '/v2/', {}, { retry: true });
    await answer.body.dump();
    expect(answer.status).toBe(503);
    expect(long.requests()).toBe(1);
  });

  it('sends a request once unless asked to retry', async () => {
    const r = await registry([unavailable(), ok]);
    const res = await r.upstream.send(r.upstream.resolve('r'), 'GET', `/v2/app/blobs/${DIGEST}`, {});
    await res.body.dump();
    expect(res.status).toBe(503);
    expect(r.requests()).toBe(1);
  });
});
