// WebTorrent options shared by the seeder (torrent-seed.mjs) and the node clients (torrent-client.mjs):
// TCP peers from the tracker and PEX only — no DHT, local discovery, uTP or port mapping, no web seeds —
// and no protocol encryption, which would only spend the CPU that every emulated host shares.
export const webTorrentOptions = {
  dht: false,
  lsd: false,
  utp: false,
  natUpnp: false,
  natPmp: false,
  webSeeds: false,
  secure: 0,
};
