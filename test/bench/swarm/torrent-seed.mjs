/* global process */
// The BitTorrent baseline's origin, run inside the registry host's network namespace: an HTTP tracker
// and a WebTorrent client seeding each layer file as a torrent of its own, in one process so that one
// handle stops both. Writes every .torrent into `torrentDir`, waits until the tracker has seen the seeder
// announce each of them, then prints one line {"ready": true, "announce", "torrents": [{name, infoHash,
// torrentFile}]} and seeds until SIGTERM. Plain JavaScript so that it runs on bare node in a namespace.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Server } from 'bittorrent-tracker';
import WebTorrent from 'webtorrent';
import { webTorrentOptions } from './torrent-options.mjs';

const { host, port, files, torrentDir, pieceLength, announceIntervalMs } = JSON.parse(
  process.argv[2] ?? '{}',
);
const announce = `http://${host}:${port}/announce`;

const fail = (err) => {
  process.stderr.write(`torrent-seed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
};

// HTTP only: the nodes are plain TCP peers, so neither the UDP nor the WebSocket (WebRTC) tracker has
// anyone to serve. A short announce interval lets a node that asked before others had announced learn
// of them soon, on top of what PEX and incoming connections tell it.
const tracker = new Server({ http: true, udp: false, ws: false, stats: false, interval: announceIntervalMs });
tracker.on('error', fail);
const announced = new Set();
let waitingFor = () => undefined;
tracker.on('start', (_addr, params) => {
  announced.add(params.info_hash);
  waitingFor();
});
await new Promise((resolve) => tracker.listen(port, host, resolve));

// Only what a data-centre swarm would use: TCP to peers the tracker (and PEX) names. No DHT, local
// discovery, uTP or port mapping, and no protocol encryption, which would only spend the CPU that every
// emulated host shares.
const client = new WebTorrent(webTorrentOptions);
client.on('error', fail);

const torrents = await Promise.all(
  files.map(
    (file) =>
      new Promise((resolve, reject) => {
        // The torrent's name is the file's own name: seeding from a path serves that very file.
        const torrent = client.seed(file.path, { announce: [announce], pieceLength }, async (seeded) => {
          const torrentFile = join(torrentDir, `${file.name}.torrent`);
          try {
            await writeFile(torrentFile, seeded.torrentFile);
            resolve({ name: file.name, infoHash: seeded.infoHash, torrentFile });
          } catch (err) {
            reject(err);
          }
        });
        torrent.once('error', reject);
      }),
  ),
).catch(fail);

await new Promise((resolve) => {
  waitingFor = () => {
    if (torrents.every((t) => announced.has(t.infoHash))) resolve();
  };
  waitingFor();
});
process.stdout.write(`${JSON.stringify({ ready: true, announce, torrents })}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) process.once(signal, () => process.exit(0));
