/* global process, setTimeout, performance */
// One node's pull in the BitTorrent baseline, run inside the node's network namespace: waits `delayMs`,
// then adds every layer's torrent at once, and when all are complete (WebTorrent checks each piece's
// hash before it counts) prints {"ms", "bytes", "failed"} as JSON, like client.mjs. Unlike client.mjs
// it does not exit then: a BitTorrent peer that finished keeps seeding for the others, so the process
// stays until SIGTERM. Plain JavaScript so that it runs on bare node in a namespace.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import WebTorrent from 'webtorrent';
import { webTorrentOptions } from './torrent-options.mjs';

const { torrents, delayMs, downloadDir } = JSON.parse(process.argv[2] ?? '{}');
for (const signal of ['SIGTERM', 'SIGINT']) process.once(signal, () => process.exit(0));

const files = await Promise.all(torrents.map((path) => readFile(path)));
// The same choices as the seeder (torrent-seed.mjs): TCP peers from the tracker and PEX, nothing else.
// The namespace has no address but its own veth's and loopback, so listening on every address is
// listening on the node's.
const client = new WebTorrent(webTorrentOptions);
await new Promise((resolve) => setTimeout(resolve, delayMs ?? 0));

const started = performance.now();
let bytes = 0;
let failed = 0;
const report = (message) => process.stderr.write(`${message}\n`);
client.on('error', (err) => report(`client: ${err instanceof Error ? err.message : String(err)}`));
await Promise.all(
  files.map(
    (file, i) =>
      new Promise((resolve) => {
        // Rarest first, as BitTorrent clients fetch; WebTorrent's default, in order, suits streaming a
        // video and would have every node ask the seeder for the same pieces at the same time.
        // A directory per torrent: layers seeded straight from a registry's storage are all named `data`.
        const torrent = client.add(file, { path: join(downloadDir, String(i)), strategy: 'rarest' });
        torrent.once('done', () => {
          bytes += torrent.length;
          const from = torrent.wires.map((wire) => `${wire.remoteAddress}:${wire.downloaded}`);
          report(`${torrent.name}: done, bytes by peer still connected: ${from.join(' ')}`);
          resolve();
        });
        torrent.once('error', (err) => {
          failed++;
          report(`${torrents[i]}: ${err instanceof Error ? err.message : String(err)}`);
          resolve();
        });
      }),
  ),
);
process.stdout.write(`${JSON.stringify({ ms: performance.now() - started, bytes, failed })}\n`);
