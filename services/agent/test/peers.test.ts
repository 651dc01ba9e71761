import { createServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { isShoalError } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PeerClient } from '../src/peers.js';
import { holdUp, startThreadedPeer } from './threaded-peer.js';

const KiB = 1024;
const CHUNK = 128 * KiB;

/** A peer that answers at once, then trickles the chunk at 160 KiB/s: 8 KiB every 50 ms. */
let server: Server;
let url: string;
beforeAll(async () => {
  server = createServer((_req, res) => {
    res.writeHead(200, { 'content-length': String(CHUNK) });
    let sent = 0;
    const timer = setInterval(() => {
      if (sent >= CHUNK || res.destroyed) {
        clearInterval(timer);
        res.end();
        return;
      }
      res.write(Buffer.alloc(8 * KiB, 7));
      sent += 8 * KiB;
    }, 50);
    res.on('close', () => clearInterval(timer));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

describe('PeerClient', () => {
  it('gives up on a peer that trickles a chunk slower than peer.minRate, though bytes keep coming', async () => {
    // Never idle for 300 ms, but the chunk needs 0.8 s and the deadline is 300 ms + 128 KiB at 512 KiB/s.
    const client = new PeerClient(300, undefined, 512 * KiB);
    const err: unknown = await client
      .fetchChunk(url, 'a'.repeat(64), 0, Buffer.alloc(CHUNK))
      .catch((e: unknown) => e);
    expect(isShoalError(err, 'SHOAL_ERR_CHUNK_UNAVAILABLE')).toBe(true);
    await client.close();
  });

  it('divides peer.minRate among the fetches in flight, which share the link', async () => {
    // Alone a transfer at 160 KiB/s misses a 512 KiB/s floor (see above); four at once need 128 KiB/s each.
    const client = new PeerClient(300, undefined, 512 * KiB);
    const chunks = await Promise.all(
      [0, 1, 2, 3].map((index) => client.fetchChunk(url, 'a'.repeat(64), index, Buffer.alloc(CHUNK))),
    );
    expect(chunks.map((c) => c.length)).toEqual([CHUNK, CHUNK, CHUNK, CHUNK]);
    await client.close();
  });

  it('does not give up on a chunk that came in while this thread was held up past its deadline', async () => {
    // Small enough to wait whole in the socket's receive buffer.
    const size = 16 * KiB;
    const peer = await startThreadedPeer(size);
    // A deadline of 100 ms and 16 KiB at 64 MiB/s: 100.25 ms.
    const client = new PeerClient(100, undefined, 64 * 1024 * KiB);
    expect((await client.fetchChunk(peer.url, 'a'.repeat(64), 0, Buffer.alloc(size))).length).toBe(size);
    const fetched = client.fetchChunk(peer.url, 'a'.repeat(64), 1, Buffer.alloc(size));
    holdUp(1_500);
    expect((await fetched).length).toBe(size);
    await client.close();
    await peer.close();
  });

  it('waits for a slow peer that stays above peer.minRate', async () => {
    const client = new PeerClient(300, undefined, 64 * KiB);
    const chunk = await client.fetchChunk(url, 'a'.repeat(64), 0, Buffer.alloc(CHUNK));
    expect(chunk.length).toBe(CHUNK);
    await client.close();
  });
});

describe('PeerClient and a busy peer', () => {
  it('marks a peer nothing listens for as unreachable, and one that fails after connecting not', async () => {
    // A port that was just free: the connection is refused.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    // One that accepts and then hangs up without an answer: reached, so only unavailable.
    const rude = createNetServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => rude.listen(0, '127.0.0.1', resolve));
    const rudePort = (rude.address() as AddressInfo).port;
    const client = new PeerClient(300, undefined, 64 * KiB);
    try {
      const fetch = (port: number) =>
        client
          .fetchChunk(`http://127.0.0.1:${port}`, 'a'.repeat(64), 0, Buffer.alloc(CHUNK))
          .catch((e: unknown) => e);
      const refused = await fetch(closedPort);
      expect(isShoalError(refused, 'SHOAL_ERR_CHUNK_UNAVAILABLE') && refused.details).toEqual({
        unreachable: true,
      });
      const hungUp = await fetch(rudePort);
      expect(isShoalError(hungUp, 'SHOAL_ERR_CHUNK_UNAVAILABLE')).toBe(true);
      expect(isShoalError(hungUp) && hungUp.details?.unreachable).toBeUndefined();
      // A slow body is not unreachable either.
      const slow = await new PeerClient(300, undefined, 512 * KiB)
        .fetchChunk(url, 'a'.repeat(64), 0, Buffer.alloc(CHUNK))
        .catch((e: unknown) => e);
      expect(isShoalError(slow) && slow.details?.unreachable).toBeFalsy();
    } finally {
      await client.close();
      await new Promise((resolve) => rude.close(resolve));
    }
  });

  it('marks a 429 as busy (try the next holder), and other refusals not', async () => {
    let status = 429;
    const busy = createServer((_req, res) => {
      res.writeHead(status, { 'retry-after': '1', 'content-length': '0' }).end();
    });
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const busyUrl = `http://127.0.0.1:${(busy.address() as AddressInfo).port}`;
    const client = new PeerClient(1000, undefined, 64 * KiB);
    try {
      const err: unknown = await client
        .fetchChunk(busyUrl, 'a'.repeat(64), 0, Buffer.alloc(CHUNK))
        .catch((e: unknown) => e);
      expect(isShoalError(err, 'SHOAL_ERR_CHUNK_UNAVAILABLE') && err.details).toEqual({
        status: 429,
        busy: true,
      });
      status = 503;
      const refused: unknown = await client
        .fetchChunk(busyUrl, 'a'.repeat(64), 0, Buffer.alloc(CHUNK))
        .catch((e: unknown) => e);
      expect(isShoalError(refused) && refused.details).toEqual({ status: 503 });
    } finally {
      await client.close();
      busy.closeAllConnections();
      await new Promise((resolve) => busy.close(resolve));
    }
  });
});

describe('PeerClient slots', () => {
  it('keeps to what a busy parent serves, queuing the rest instead of asking again', async () => {
    // A parent that serves two chunks to a peer at once, each for 50 ms, and answers 429 beyond that.
    let running = 0;
    let most = 0;
    let refused = 0;
    const parent = createServer((_req, res) => {
      if (running >= 2) {
        refused++;
        res.writeHead(429, { 'retry-after': '1' }).end();
        return;
      }
      running++;
      most = Math.max(most, running);
      setTimeout(() => {
        running--;
        res.writeHead(200, { 'content-length': String(KiB) }).end(Buffer.alloc(KiB, 1));
      }, 50);
    });
    await new Promise<void>((resolve) => parent.listen(0, '127.0.0.1', resolve));
    const parentUrl = `http://127.0.0.1:${(parent.address() as AddressInfo).port}`;
    const client = new PeerClient(2_000, undefined, 64 * KiB);
    try {
      /** Fetches a chunk as a download does: a slot first, then the fetch; a busy answer is tried again. */
      const fetchOne = async (index: number): Promise<void> => {
        for (;;) {
          const end = await client.slot(parentUrl);
          try {
            await client.fetchChunk(parentUrl, 'b'.repeat(64), index, Buffer.alloc(KiB));
            return;
          } catch (err) {
            if (!(isShoalError(err) && err.details?.busy === true)) throw err;
          } finally {
            end();
          }
        }
      };
      await Promise.all(Array.from({ length: 8 }, (_, i) => fetchOne(i)));
      await Promise.all(Array.from({ length: 8 }, (_, i) => fetchOne(8 + i)));
      expect(most).toBe(2);
      // The first burst teaches the cap; after that nothing more is refused, however many are waiting.
      expect(refused).toBeLessThanOrEqual(6);
      const before = refused;
      await Promise.all(Array.from({ length: 8 }, (_, i) => fetchOne(16 + i)));
      expect(refused).toBe(before);
    } finally {
      await client.close();
      parent.closeAllConnections();
      await new Promise((resolve) => parent.close(resolve));
    }
  });
});
