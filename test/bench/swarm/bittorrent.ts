/**
 * The swarm benchmark's BitTorrent baseline: the layers served by a plain BitTorrent swarm instead of a
 * registry, to compare shoal with what a generic peer-to-peer protocol does on the same emulated network.
 *
 * One process in the registry host's namespace (torrent-seed.mjs) runs an HTTP tracker and seeds every
 * layer as a torrent of its own; on every node host a WebTorrent client (torrent-client.mjs) fetches all
 * the layers at once. Peers are found through the tracker and PEX only (no DHT, local discovery, uTP or
 * NAT mapping), over plain TCP. A node that finished keeps seeding until every node finished or the pull
 * timed out, as BitTorrent peers do, so each client stays up after reporting and is stopped by its handle.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { startProcess, type ManagedProcess } from '../../kit/index.js';
import { OFF_NODE_NICE, startIn } from './mesh.js';
import type { Network } from './network.js';

const seedScript = join(import.meta.dirname, 'torrent-seed.mjs');
const clientScript = join(import.meta.dirname, 'torrent-client.mjs');

export const TRACKER_PORT = 6969;
/** 64 pieces for a 16 MiB layer: enough for peers to trade pieces early, few enough to hash cheaply. */
export const PIECE_LENGTH = 256 * 1024;

export interface LayerFile {
  /**
   * Names the layer's .torrent file; the torrent itself is named after the file at `path`, which may be
   * the same for every layer (a registry's blobs are all called `data`).
   */
  name: string;
  path: string;
}

export interface SeededTorrent {
  name: string;
  infoHash: string;
  /** Where the .torrent file was written, readable from every namespace (they share the filesystem). */
  torrentFile: string;
}

export interface BittorrentSwarm {
  /** The tracker and the seeder: one process in the registry host's namespace. */
  readonly trackerAndSeeder: ManagedProcess;
  readonly announce: string;
  /** In the order of the files given. */
  readonly torrents: readonly SeededTorrent[];
  stop(): Promise<void>;
}

interface SeedReady {
  ready: true;
  announce: string;
  torrents: SeededTorrent[];
}

/**
 * Starts the tracker and the seeder on the registry host, writes one .torrent per file into `dir`, and
 * resolves once the seeder has announced every torrent to the tracker.
 */
export async function startBittorrentSwarm(
  network: Network,
  files: readonly LayerFile[],
  dir: string,
): Promise<BittorrentSwarm> {
  const torrentDir = join(dir, 'torrents');
  await mkdir(torrentDir, { recursive: true });
  const config = {
    host: network.registry.ip,
    port: TRACKER_PORT,
    files,
    torrentDir,
    pieceLength: PIECE_LENGTH,
    announceIntervalMs: 10_000,
  };
  // At the registry's priority: the seeder is the registry's stand-in.
  const proc = await startIn(
    network,
    network.registry,
    'torrent-seed',
    process.execPath,
    [seedScript, JSON.stringify(config)],
    dir,
    { nice: OFF_NODE_NICE },
  );
  try {
    // Hashing is the slow part: about a second per 100 MiB when nothing else runs.
    const line = await proc.waitForLine(/^\{"ready":true/, 120_000);
    const ready = JSON.parse(line) as SeedReady;
    return {
      trackerAndSeeder: proc,
      announce: ready.announce,
      torrents: ready.torrents,
      stop: async () => {
        await proc.stop();
      },
    };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}

export interface BittorrentPullOptions {
  /** How long the whole pull may take before every node still downloading counts as failed. */
  timeoutMs?: number;
}

interface ClientReport {
  ms: number;
  bytes: number;
  failed: number;
}

/**
 * Runs a WebTorrent client on every node at once (or spread over `staggerS`) that fetches every
 * torrent, and resolves with each node's completion in seconds from its own start, in node order (NaN
 * for a node that failed or did not finish in time). Every client keeps seeding until all have reported,
 * then all are stopped; downloads and logs go under `dir`.
 */
export async function pullEverywhereBittorrent(
  network: Network,
  torrentFiles: readonly string[],
  staggerS: number,
  dir: string,
  options: BittorrentPullOptions = {},
): Promise<number[]> {
  const deadline = Date.now() + (options.timeoutMs ?? 30 * 60_000);
  const clients: ManagedProcess[] = [];
  try {
    // Every node's failure, starting its client included, is its own NaN: none may end the pull while
    // other clients are still being started, or those would escape the stop below.
    const completions = network.nodes.map(async (node, i) => {
      const delayMs = staggerS > 0 ? Math.round((i / network.nodes.length) * staggerS * 1000) : 0;
      const downloadDir = join(dir, `node-${i}`);
      try {
        await mkdir(downloadDir, { recursive: true });
        const [cmd, args] = network.exec(node, process.execPath, [
          clientScript,
          JSON.stringify({ torrents: torrentFiles, delayMs, downloadDir }),
        ]);
        const proc = await startProcess({
          name: `torrent-node-${i}`,
          cmd,
          args,
          logFile: join(dir, `torrent-node-${i}.log`),
        });
        clients.push(proc);
        const line = await proc.waitForLine(/^\{"ms":/, Math.max(1, deadline - Date.now()));
        const report = JSON.parse(line) as ClientReport;
        if (report.failed === 0) return report.ms / 1000;
        process.stderr.write(`${node.ns}: ${report.failed} torrents failed: ${proc.tail(10)}\n`);
      } catch (err) {
        process.stderr.write(`${node.ns}: ${err instanceof Error ? err.message : String(err)}\n`);
      }
      return Number.NaN;
    });
    return await Promise.all(completions);
  } finally {
    await Promise.allSettled(clients.map((proc) => proc.stop()));
  }
}
