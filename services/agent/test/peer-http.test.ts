import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PeerHttp, PeerHttpError } from '../src/peer-http.js';
import { holdUp, startThreadedPeer } from './threaded-peer.js';

const BODY = randomBytes(300_000);
let vanished = 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const head = (status: string, headers: string[]) => `HTTP/1.1 ${status}\r\n${headers.join('\r\n')}\r\n\r\n`;

/** A peer scripted per path, written at the socket level so every byte boundary is the test's choice. */
const scripts: Record<string, (socket: Socket) => Promise<void>> = {
  // Headers and the first body bytes in one write, the rest in uneven pieces.
  '/ok': async (socket) => {
    socket.write(
      Buffer.concat([
        Buffer.from(head('200 OK', [`content-length: ${BODY.length}`])),
        BODY.subarray(0, 1000),
      ]),
    );
    for (let at = 1000; at < BODY.length; at += 70_001) {
      await sleep(2);
      socket.write(BODY.subarray(at, Math.min(BODY.length, at + 70_001)));
    }
  },
  // Headers a byte at a time.
  '/slow-headers': async (socket) => {
    for (const byte of Buffer.from(head('200 OK', ['Content-Length: 300000', 'X-Other: yes']))) {
      socket.write(Buffer.from([byte]));
      await sleep(1);
    }
    socket.write(BODY);
  },
  '/missing': async (socket) => {
    socket.write(head('404 Not Found', ['content-length: 20']) + '{"error":"not here"}');
  },
  '/short': async (socket) => {
    socket.write(head('200 OK', ['content-length: 1000']));
  },
  '/chunked': async (socket) => {
    socket.write(head('200 OK', ['transfer-encoding: chunked']));
  },
  '/chunked-with-length': async (socket) => {
    socket.write(head('200 OK', ['transfer-encoding: chunked', `content-length: ${BODY.length}`]));
  },
  '/extra': async (socket) => {
    socket.write(Buffer.concat([Buffer.from(head('200 OK', [`content-length: ${BODY.length}`])), BODY]));
    await sleep(20);
    socket.write('surprise');
  },
  '/stall': async (socket) => {
    socket.write(
      Buffer.concat([Buffer.from(head('200 OK', [`content-length: ${BODY.length}`])), BODY.subarray(0, 10)]),
    );
  },
  '/huge-headers': async (socket) => {
    socket.write(head('200 OK', [`x-big: ${'a'.repeat(20_000)}`, `content-length: ${BODY.length}`]));
  },
  // Hangs up without answering, the first time only: a kept connection the peer had already closed.
  '/vanish-once': async (socket) => {
    if (vanished++ === 0) socket.destroy();
    else await scripts['/ok']!(socket);
  },
};

let server: Server;
let origin: URL;
let connections = 0;
const requests: string[] = [];

beforeAll(async () => {
  server = createServer((socket) => {
    connections++;
    let pending = '';
    socket.on('error', () => undefined);
    socket.on('data', (data: Buffer) => {
      pending += data.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end !== -1; end = pending.indexOf('\r\n\r\n')) {
        const request = pending.slice(0, end);
        pending = pending.slice(end + 4);
        requests.push(request);
        const path = /^GET (\S+) HTTP\/1\.1/.exec(request)?.[1] ?? '';
        void (scripts[path] ?? scripts['/missing']!)(socket).catch(() => undefined);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

const client = (timeoutMs = 2_000) => new PeerHttp({ timeoutMs, keepAliveMs: 5_000, maxIdlePerPeer: 4 });
const failure = async (promise: Promise<unknown>) => {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PeerHttpError);
  return err as PeerHttpError;
};

describe('PeerHttp', () => {
  it('reads a body into the caller’s buffer and keeps the connection for the next request', async () => {
    const http = client();
    const before = connections;
    for (let i = 0; i < 3; i++) {
      const into = Buffer.alloc(BODY.length);
      expect(
        await http.get(origin, '/ok', { authorization: 'Bearer t' }, into, new AbortController().signal),
      ).toBe(200);
      expect(into.equals(BODY)).toBe(true);
    }
    expect(connections - before).toBe(1);
    expect(requests.at(-1)).toContain('authorization: Bearer t');
    expect(requests.at(-1)).toContain(`host: ${origin.host}`);
    http.close();
  });

  it('puts together headers that arrive a byte at a time', async () => {
    const http = client();
    const into = Buffer.alloc(BODY.length);
    expect(await http.get(origin, '/slow-headers', {}, into, new AbortController().signal)).toBe(200);
    expect(into.equals(BODY)).toBe(true);
    http.close();
  });

  it('answers another status without reading its body, and opens a new connection next', async () => {
    const http = client();
    const into = Buffer.alloc(BODY.length, 9);
    const before = connections;
    expect(await http.get(origin, '/missing', {}, into, new AbortController().signal)).toBe(404);
    expect(into.every((b) => b === 9)).toBe(true);
    expect(await http.get(origin, '/ok', {}, into, new AbortController().signal)).toBe(200);
    expect(connections - before).toBe(2);
    http.close();
  });

  it('refuses a body of the wrong length, or one without a length', async () => {
    const http = client();
    const short = await failure(
      http.get(origin, '/short', {}, Buffer.alloc(BODY.length), new AbortController().signal),
    );
    expect(short.failure).toBe('length');
    expect(short.message).toMatch(/1000 bytes, not 300000/);
    const chunked = await failure(
      http.get(origin, '/chunked', {}, Buffer.alloc(BODY.length), new AbortController().signal),
    );
    expect(chunked.failure).toBe('length');
    const both = await failure(
      http.get(origin, '/chunked-with-length', {}, Buffer.alloc(BODY.length), new AbortController().signal),
    );
    expect(both.failure).toBe('length');
    http.close();
  });

  it('drops a connection on which the peer sends bytes after the body', async () => {
    const http = client();
    const into = Buffer.alloc(BODY.length);
    expect(await http.get(origin, '/extra', {}, into, new AbortController().signal)).toBe(200);
    expect(into.equals(BODY)).toBe(true);
    await sleep(60);
    const before = connections;
    expect(await http.get(origin, '/ok', {}, into, new AbortController().signal)).toBe(200);
    expect(connections - before).toBe(1);
    http.close();
  });

  it('sends the request again on a new connection when a kept one was closed by the peer', async () => {
    const http = client();
    const into = Buffer.alloc(BODY.length);
    expect(await http.get(origin, '/ok', {}, into, new AbortController().signal)).toBe(200);
    const before = requests.length;
    into.fill(0);
    expect(await http.get(origin, '/vanish-once', {}, into, new AbortController().signal)).toBe(200);
    expect(into.equals(BODY)).toBe(true);
    expect(requests.slice(before).map((r) => r.split(' ')[1])).toEqual(['/vanish-once', '/vanish-once']);
    // A new connection that fails is the peer failing: no second try.
    vanished = 0;
    const fresh = client();
    await failure(fresh.get(origin, '/vanish-once', {}, into, new AbortController().signal));
    fresh.close();
    http.close();
  });

  it('fails a peer that stalls mid-body after the timeout, and one whose headers never end', async () => {
    const http = client(200);
    const began = performance.now();
    const stalled = await failure(
      http.get(origin, '/stall', {}, Buffer.alloc(BODY.length), new AbortController().signal),
    );
    expect(stalled.failure).toBe('transport');
    expect(performance.now() - began).toBeLessThan(1_500);
    const huge = await failure(
      http.get(origin, '/huge-headers', {}, Buffer.alloc(BODY.length), new AbortController().signal),
    );
    expect(huge.message).toMatch(/headers over/);
    http.close();
  });

  it('does not time out a peer whose answer came while this thread was held up past the timeout', async () => {
    const peer = await startThreadedPeer(1000);
    const http = client(100);
    const at = new URL(peer.url);
    const signal = new AbortController().signal;
    // The first request opens the connection; the second is written on it at once.
    expect(await http.get(at, '/', {}, Buffer.alloc(1000), signal)).toBe(200);
    const into = Buffer.alloc(1000);
    const answered = http.get(at, '/', {}, into, signal);
    // The answer arrives while this thread is held up for fifteen times the timeout; when it runs again,
    // the socket's timer is due before the answer is read.
    holdUp(1_500);
    expect(await answered).toBe(200);
    expect(into.every((byte) => byte === 7)).toBe(true);
    http.close();
    await peer.close();
  });

  it('stops at once when aborted, with the abort reason', async () => {
    const http = client();
    const abort = new AbortController();
    setTimeout(() => abort.abort(new Error('too slow for us')), 50);
    const began = performance.now();
    const err = await failure(http.get(origin, '/stall', {}, Buffer.alloc(BODY.length), abort.signal));
    expect(err.message).toBe('too slow for us');
    expect(performance.now() - began).toBeLessThan(1_000);
    http.close();
  });

  it('fails a peer that is not listening', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const http = client();
    const err = await failure(
      http.get(
        new URL(`http://127.0.0.1:${port}`),
        '/ok',
        {},
        Buffer.alloc(10),
        new AbortController().signal,
      ),
    );
    expect(err.message).toMatch(/ECONNREFUSED/);
    http.close();
  });
});
