import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, get, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BufferPool } from '../src/buffers.js';
import { FileSender } from '../src/file-sender.js';

const MiB = 1024 * 1024;
let dir: string;
const files: { path: string; data: Buffer }[] = [];
let server: Server;
let url: string;
/** How each response ended: the error FileSender gave, or 'ok'. */
const outcomes: string[] = [];
const pool = new BufferPool(16 * MiB);

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'file-sender-'));
  for (let i = 0; i < 3; i++) {
    const data = randomBytes(MiB + 12_345 * i);
    const path = join(dir, `chunk-${i}`);
    await writeFile(path, data);
    files.push({ path, data });
  }
  const big = join(dir, 'big');
  await writeFile(big, Buffer.alloc(64 * MiB, 1));
  // Sends bytes 100 .. end-100 of every file, one after the other; /big sends 64 MiB, more than the
  // socket buffers hold.
  server = createServer((req, res) => {
    res.writeHead(200);
    const sender = new FileSender(res, pool);
    const ranges =
      req.url === '/big'
        ? [{ path: big, from: 0, to: 64 * MiB }]
        : files.map((f) => ({ path: f.path, from: 100, to: f.data.length - 100 }));
    void (async () => {
      for (const range of ranges) await sender.send(range, () => {});
      await sender.flushed();
      res.end();
    })().then(
      () => outcomes.push(`${req.url}: ok`),
      (err: unknown) => {
        outcomes.push(`${req.url}: ${err instanceof Error ? err.message : String(err)}`);
        res.destroy();
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await rm(dir, { recursive: true, force: true });
});

async function until(done: () => boolean): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out; outcomes: ${JSON.stringify(outcomes)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('FileSender', () => {
  it('sends the ranges of several files in order, byte for byte', async () => {
    const body = await (await fetch(url)).arrayBuffer();
    const expected = Buffer.concat(files.map((f) => f.data.subarray(100, f.data.length - 100)));
    expect(Buffer.from(body).equals(expected)).toBe(true);
    await until(() => outcomes.includes('/: ok'));
    // Its two buffers went back to the agent's pool, and the next response borrows the same two.
    await until(() => pool.idleBytes === 2 * MiB);
    await (await fetch(url)).arrayBuffer();
    await until(() => outcomes.filter((o) => o === '/: ok').length === 2);
    await until(() => pool.idleBytes === 2 * MiB);
  });

  it('stops, without hanging, when the client goes away mid-body', async () => {
    await new Promise<void>((resolve, reject) => {
      const req = get(`${url}big`, (res) => {
        // Read a little, then stop reading and hang up while the sender still has buffers out.
        res.once('data', () => {
          res.pause();
          setTimeout(() => {
            req.destroy();
            resolve();
          }, 50);
        });
      });
      req.on('error', () => undefined);
      setTimeout(() => reject(new Error('no data')), 5_000);
    });
    await until(() => outcomes.some((o) => o.startsWith('/big')));
    expect(outcomes.filter((o) => o.startsWith('/big'))).toEqual([
      expect.stringMatching(/went away|EPIPE|ECONNRESET|destroyed/),
    ]);
    // Also the buffer that was queued on the socket when the client left comes back.
    await until(() => pool.idleBytes === 2 * MiB);
  });
});
