/**
 * A peer that lies: it joins the mesh as a node (heartbeats on NATS, as an agent does), announces when
 * told that it holds every chunk of some blobs, and then serves them badly: corrupted bytes, headers and then nothing,
 * or the right bytes far too slowly. It announces no chunk hashes, so the blob manifests stay the ones real
 * agents build from the registry's bytes; the scheduler offers it as a parent once those hashes are known.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { jetstream } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import {
  Bitmap,
  buckets,
  chooseChunkSize,
  chunkKeys,
  chunkCount,
  chunkRange,
  type ChunksAnnouncement,
  type ManifestRecord,
  type NodeRecord,
  subjects,
} from '@shoal/mesh';
import { waitFor } from '../kit/index.js';
import { waitForHolders, waitForNodes } from '../support/shoal.js';

export const BadPeerModes = {
  /** Every chunk with one byte in each 64 KiB flipped: the right length, the wrong hash. */
  corrupt: 'corrupt',
  /** Status and headers at once, then not a byte, until the client gives up. */
  stall: 'stall',
  /** The right bytes, at `slowBytesPerSecond`. */
  slow: 'slow',
} as const;
export type BadPeerMode = (typeof BadPeerModes)[keyof typeof BadPeerModes];

export interface BadPeerOptions {
  natsUrl: string;
  id: string;
  zone: string;
  vswitch: string;
  mode: BadPeerMode;
  /** The blobs it claims to hold, with their real bytes (served, or corrupted, from memory). */
  blobs: { digest: string; bytes: Buffer }[];
  /** For `slow`: 64 KiB/s unless given. */
  slowBytesPerSecond?: number;
}

/** One chunk request the bad peer received. */
export interface BadPeerRequest {
  /** The asking node, from its mesh token (`Shoal-Peer v1.<node>.<expiry>.<mac>`); '?' without one. */
  from: string;
  blob: string;
  index: number;
  at: number;
  /** Whether the whole body went out; false while it is going, and for good once the client gave up. */
  served: boolean;
}

export interface BadPeer {
  readonly id: string;
  readonly url: string;
  readonly requests: BadPeerRequest[];
  /**
   * Announces every chunk of every blob as held (a complete holder), with no hashes, and resolves once
   * the chunk index lists it.
   */
  announce(): Promise<void>;
  /** Stops heartbeating, says it leaves, and closes every connection it holds open. */
  stop(): Promise<void>;
}

const CHUNK_PATH = /^\/peer\/v1\/blobs\/sha256\/([0-9a-f]{64})\/chunks\/(\d+)$/;

export async function startBadPeer(options: BadPeerOptions): Promise<BadPeer> {
  const rate = options.slowBytesPerSecond ?? 64 * 1024;
  const blobs = new Map(
    options.blobs.map((b) => [
      b.digest.slice('sha256:'.length),
      { ...b, chunkSize: chooseChunkSize(b.bytes.length) },
    ]),
  );
  const requests: BadPeerRequest[] = [];
  const timers = new Set<NodeJS.Timeout>();

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const match = CHUNK_PATH.exec(req.url ?? '');
    const blob = match?.[1] === undefined ? undefined : blobs.get(match[1]);
    if (match === null || blob === undefined) {
      res.writeHead(404).end();
      return;
    }
    const index = Number(match[2]);
    const from = /^Shoal-Peer v1\.([A-Za-z0-9_-]+)\./.exec(req.headers.authorization ?? '')?.[1] ?? '?';
    const request: BadPeerRequest = { from, blob: blob.digest, index, at: Date.now(), served: false };
    requests.push(request);
    res.on('finish', () => (request.served = true));
    const { start, end } = chunkRange(blob.bytes.length, blob.chunkSize, index);
    const body = Buffer.from(blob.bytes.subarray(start, end));
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
    switch (options.mode) {
      case 'corrupt': {
        for (let at = 0; at < body.length; at += 64 * 1024) body[at] = (body[at] ?? 0) ^ 0xff;
        res.end(body);
        return;
      }
      case 'stall': {
        // Headers go out now; the body never does.
        res.flushHeaders();
        return;
      }
      case 'slow': {
        const piece = Math.max(1, Math.floor(rate / 10));
        let sent = 0;
        const timer = setInterval(() => {
          const next = body.subarray(sent, sent + piece);
          sent += next.length;
          if (next.length === 0) {
            clearInterval(timer);
            timers.delete(timer);
            res.end();
          } else res.write(next);
        }, 100);
        timers.add(timer);
        res.on('close', () => {
          clearInterval(timer);
          timers.delete(timer);
        });
        return;
      }
      default: {
        const unreachable: never = options.mode;
        throw new Error(`unknown mode ${String(unreachable)}`);
      }
    }
  });
  // Stalled responses must not be cut by the server's own timeouts: the client is the one to give up.
  server.requestTimeout = 0;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const nc: NatsConnection = await connect({ servers: options.natsUrl });
  const startedAt = Date.now();
  const heartbeat = () => {
    const now = Date.now();
    const record: NodeRecord = {
      id: options.id,
      url,
      zone: options.zone,
      vswitch: options.vswitch,
      pool: '',
      startedAt,
      seenAt: now,
      sentAt: now,
    };
    nc.publish(subjects.heartbeat(options.id), JSON.stringify(record));
  };
  heartbeat();
  const heartbeats = setInterval(heartbeat, 500);
  const close = async () => {
    for (const timer of timers) clearInterval(timer);
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };

  try {
    await waitForNodes(options.natsUrl, [options.id]);
  } catch (err) {
    clearInterval(heartbeats);
    await close();
    await nc.close();
    throw err;
  }
  const js = jetstream(nc);
  let seq = 0;

  return {
    id: options.id,
    url,
    requests,
    async announce() {
      for (const blob of blobs.values()) {
        const count = chunkCount(blob.bytes.length, blob.chunkSize);
        const announcement: ChunksAnnouncement = {
          type: 'chunks',
          node: options.id,
          blob: blob.digest,
          size: blob.bytes.length,
          chunkSize: blob.chunkSize,
          seq: ++seq,
          have: Bitmap.full(count).toBase64(),
          complete: true,
        };
        await js.publish(subjects.announce(options.id), JSON.stringify(announcement));
      }
      await waitForHolders(
        options.natsUrl,
        options.id,
        options.blobs.map((b) => b.digest),
      );
    },
    async stop() {
      clearInterval(heartbeats);
      nc.publish(subjects.leave(options.id), JSON.stringify({ node: options.id, at: Date.now() }));
      await nc.flush().catch(() => undefined);
      await nc.close();
      await close();
    },
  };
}

/** Waits until the mesh's manifest of each blob knows every chunk's hash (from real agents' origin fetches). */
export async function waitForManifests(
  natsUrl: string,
  digests: string[],
  timeoutMs = 30_000,
): Promise<void> {
  const nc = await connect({ servers: natsUrl });
  try {
    const kv = await new Kvm(nc).open(buckets.chunks);
    await waitFor(
      async () => {
        for (const digest of digests) {
          const entry = await kv.get(chunkKeys.manifest(digest.slice('sha256:'.length)));
          if (!entry?.value.length) return false;
          const manifest = entry.json<ManifestRecord>();
          if (manifest.hashes.some((h) => h === '')) return false;
        }
        return true;
      },
      { timeoutMs, intervalMs: 20, what: `complete manifests of ${digests.length} blobs` },
    );
  } finally {
    await nc.close();
  }
}
