/** Every option of the agent, defined once. */
import { hostname } from 'node:os';
import { type ConfigOf, logOptions, MiB, natsOptions, nodeIdOf, opt, ShoalError } from '@shoal/mesh';

/** The node ID used when none is configured: the host name, made a valid subject token. */
export function defaultNodeId(): string {
  return nodeIdOf(hostname());
}

export const agentSpec = {
  host: opt.string('host', '0.0.0.0', 'Address the mirror and peer API listen on.'),
  port: opt.int('port', 65001, 'Port of the mirror API (for the container runtime) and the peer API.', {
    min: 0,
    max: 65535,
  }),
  advertiseUrl: opt.string(
    'advertise.url',
    '',
    'URL other agents use to reach this one; defaults to http://<host>:<port> (set it when host is 0.0.0.0).',
    { pattern: /^(|https?:\/\/[^\s/]+)$/, hint: 'http(s)://host:port URL' },
  ),
  advertiseHost: opt.string(
    'advertise.host',
    '',
    "Address other agents use to reach this one, with this agent's port (an IPv6 address is bracketed in the URL); for a node's IP from the environment. advertise.url wins when both are set.",
    { pattern: /^[A-Za-z0-9.:_-]{0,253}$/, hint: 'an IP address or host name' },
  ),
  nodeId: opt.string(
    'node.id',
    '',
    "Unique name of this node in the mesh; defaults to the host name. In Kubernetes, the node's name (characters other than [A-Za-z0-9_-] become '-', as discovery maps node names).",
    { pattern: /^[A-Za-z0-9_.-]{0,253}$/, hint: 'node name of 1-253 [A-Za-z0-9_.-]' },
  ),
  zone: opt.string('node.zone', '', 'Zone of this node (topology.kubernetes.io/zone).'),
  vswitch: opt.string(
    'node.vswitch',
    '',
    'vSwitch (subnet) of this node; peers on the same vSwitch are preferred.',
  ),
  pool: opt.string('node.pool', '', 'Node pool of this node.'),
  region: opt.string(
    'node.region',
    '',
    'Region of this node (topology.kubernetes.io/region); registry endpoints published for another region are not used.',
  ),
  registries: opt.list(
    'registries',
    [],
    'Registries this agent mirrors, as URL or name=URL (e.g. docker.io=https://registry-1.docker.io). The first is used when a request names none. Registries discovery publishes are mirrored too, at the endpoints it publishes; the URL given here stays the last resort.',
    {
      pattern: /^([A-Za-z0-9.:_-]+=)?https?:\/\/[^\s/@]+$/,
      hint: 'registry [name=]http(s)://host[:port] (no credentials in it)',
    },
  ),
  distributedPort: opt.int(
    'distributed.port',
    0,
    'Port that serves registries by their "distributed" host name, for Docker nodes (which cannot name a mirror per registry): a request for <label>-distributed.<rest> goes to registry <label>.<rest> (65002, or 443). 0: off.',
    { min: 0, max: 65535 },
  ),
  distributedTlsCert: opt.string(
    'distributed.tls.cert',
    '',
    'Certificate (PEM) for the distributed host names; without it the port speaks plain HTTP and Docker must list the names as insecure-registries.',
  ),
  distributedTlsKey: opt.string('distributed.tls.key', '', 'Key (PEM) of that certificate.'),
  cacheDir: opt.string('cache.dir', '/var/lib/shoal/cache', 'Directory of the chunk cache.'),
  cacheMaxSize: opt.bytes(
    'cache.maxSize',
    '0',
    'Bytes of chunks the disk cache may hold; least recently used blobs are evicted beyond it (blobs in use are kept). 0: unlimited.',
  ),
  cacheHighWatermark: opt.int(
    'cache.highWatermark',
    90,
    'Eviction starts once the cache holds more than this percentage of cache.maxSize.',
    { min: 1, max: 100 },
  ),
  cacheLowWatermark: opt.int(
    'cache.lowWatermark',
    80,
    'Eviction stops once the cache holds no more than this percentage of cache.maxSize; below cache.highWatermark.',
    { min: 1, max: 99 },
  ),
  cacheTtlMs: opt.duration(
    'cache.ttl',
    '0',
    'A blob not read or written for this long is evicted. 0: blobs are evicted only for room.',
  ),
  cacheSweepIntervalMs: opt.duration(
    'cache.sweepInterval',
    '30s',
    'How often the cache is checked for blobs past cache.ttl (room is made at every write anyway).',
    { minMs: 100 },
  ),
  cacheMemory: opt.bytes(
    'cache.memory',
    '0',
    "Bytes of hot chunks (those streamed to clients while they download) kept in memory in front of the disk cache, to serve peers and other clients without reading the disk; for nodes with memory to spare (it adds that much to the agent's RSS). 0: off.",
  ),
  cacheParkedMemory: opt.bytes(
    'cache.parkedMemory',
    '64MiB',
    "Bytes of chunks held in memory, over all blobs, for downloads whose chunks no longer fit on a full cache disk: their clients are served from there, uncached. A download needing more fails over to the registry. Counts against the agent's memory like cache.memory.",
  ),
  chunkSize: opt.bytes('chunk.size', '0', 'Fixed chunk size; 0 derives it from the blob size.', {
    min: 64 * 1024,
    max: 1024 * MiB,
  }),
  chunkMinSize: opt.bytes('chunk.minSize', '1MiB', 'Smallest chunk size when derived from the blob size.', {
    min: 64 * 1024,
  }),
  chunkMaxSize: opt.bytes('chunk.maxSize', '64MiB', 'Largest chunk size when derived from the blob size.', {
    max: 1024 * MiB,
  }),
  chunkTargetCount: opt.int(
    'chunk.targetCount',
    256,
    'Chunks per blob to aim for when deriving the chunk size.',
    { min: 1 },
  ),
  hashWorkers: opt.int('hash.workers', 2, 'Worker threads that hash chunks.', { min: 1, max: 64 }),
  downloadConcurrency: opt.int('download.concurrency', 8, 'Chunks of one blob fetched at once.', {
    min: 1,
    max: 256,
  }),
  downloadMemory: opt.bytes(
    'download.memory',
    '128MiB',
    'Bytes of chunk buffers all downloads may hold at once. Layers with large chunks (32 MiB for a 5 GiB layer) get fewer chunks in flight, so memory stays bounded whatever the layer size; a download may always fetch one chunk.',
    { min: 1024 * 1024 },
  ),
  askWhenFree: opt.int(
    'download.askWhenFree',
    4,
    'Ask the scheduler for more chunks once this many fetch slots are free (or none is busy): one decision fills several slots.',
    { min: 1, max: 256 },
  ),
  schedulerTimeoutMs: opt.duration(
    'scheduler.timeout',
    '1s',
    'How long to wait for a scheduler reply. After a late reply a download asks again, taking one chunk from the registry meanwhile if it has nothing in flight (two at a second late reply in a row); the third late reply in a row counts as no scheduler, and the download uses the registry for 3 s.',
    { minMs: 10 },
  ),
  originWaitMs: opt.duration(
    'origin.waitTimeout',
    '15s',
    'How long a download may be told to wait, with none of its chunks in flight, before this agent fetches from the registry itself (±15% jitter; four times as long while the scheduler says its chunks are queued for the registry or for the node that holds their lease): one chunk, then twice as many each time the scheduler still has nothing for it.',
  ),
  originDirectMax: opt.bytes(
    'origin.directMax',
    '16KiB',
    'Blobs of at most this size (image configs, tiny layers) are fetched from the registry by every node itself, without asking the scheduler: for so few bytes a turn in the mesh costs more time than it saves the registry. If the registry fails one, it is asked of the mesh like any other blob (that first attempt is one more than origin.retries). At most 64KiB, so that such a blob is one chunk under any chunk size. 0: every blob goes through the mesh.',
    { max: 64 * 1024 },
  ),
  originRetries: opt.int(
    'origin.retries',
    5,
    'Attempts per chunk, authorisation or manifest request against the registry (a reset, timeout, 5xx or 429 is asked again after a backoff with jitter) before the pull fails.',
    { min: 1 },
  ),
  upstreamTimeoutMs: opt.duration('upstream.timeout', '30s', 'Timeout for the registry to start answering.'),
  upstreamCooldownMs: opt.duration(
    'upstream.cooldown',
    '30s',
    'A registry endpoint that could not be reached or answered 5xx is tried after the others for this long.',
  ),
  peerTimeoutMs: opt.duration(
    'peer.timeout',
    '3s',
    'Timeout for a peer to start answering, and between body bytes.',
  ),
  peerMinRate: opt.bytes(
    'peer.minRate',
    '256KiB',
    "The slowest rate, per second, tolerated from this node's peer transfers together: each chunk has peer.timeout plus its size at its share of this rate (divided among the fetches in flight) before it goes to another source. Keep it well below the node's link speed.",
    { min: 1024 },
  ),
  peerSlowFactor: opt.int(
    'peer.slowFactor',
    4,
    "A parent this many times slower than the median of the download's other parents is dropped for that blob and its chunk fetched elsewhere (0: only the absolute floor, peer.minRate, applies).",
    { min: 0, max: 100 },
  ),
  peerSlowMinMs: opt.duration(
    'peer.slowMin',
    '1s',
    'The shortest time a peer chunk may take before its parent can count as slow.',
  ),
  peerSecret: opt.string(
    'peer.secret',
    '',
    'Secret shared by the agents of one mesh; peer requests carry tokens signed with it. Unset, the peer API is open to anyone who can reach it.',
    { secret: true },
  ),
  peerShare: opt.bool(
    'peer.share',
    true,
    'Serve chunks to other agents and announce them. false: this node still pulls through the mesh, but its peer API answers 503 and it announces nothing.',
  ),
  peerUploadRate: opt.bytes(
    'peer.uploadRate',
    '0',
    'Bytes per second this node uploads to other agents, all together. 0: unlimited.',
  ),
  peerUploadBurst: opt.bytes(
    'peer.uploadBurst',
    '4MiB',
    'The most bytes uploaded to peers at once after a quiet spell, when peer.uploadRate is set.',
    { min: 64 * 1024 },
  ),
  peerUploadsPerPeer: opt.int(
    'peer.uploadsPerPeer',
    4,
    'Chunks served to one peer at once; a peer asking for more is answered 429 and tries another holder. 0: unlimited.',
    { min: 0, max: 1024 },
  ),
  downloadRate: opt.bytes(
    'download.rate',
    '0',
    'Bytes per second this node downloads (from peers and the registry together). 0: unlimited.',
  ),
  downloadBurst: opt.bytes(
    'download.burst',
    '8MiB',
    'The most bytes downloaded at once after a quiet spell, when download.rate is set.',
    { min: 64 * 1024 },
  ),
  registryRate: opt.bytes(
    'registry.rate',
    '0',
    'Bytes per second this node fetches from the registry (chunks only; a subset of download.rate). 0: unlimited.',
  ),
  registryBurst: opt.bytes(
    'registry.burst',
    '8MiB',
    'The most bytes fetched from the registry at once after a quiet spell, when registry.rate is set.',
    { min: 64 * 1024 },
  ),
  authCacheMs: opt.duration(
    'auth.cacheTtl',
    '30s',
    'How long a registry decision that a credential may read a blob is remembered.',
  ),
  announceIntervalMs: opt.duration(
    'announce.interval',
    '50ms',
    'How often new chunks are announced, batched.',
  ),
  heartbeatIntervalMs: opt.duration(
    'heartbeat.interval',
    '3s',
    'How often the agent tells discovery it is alive.',
  ),
  ...natsOptions,
  ...logOptions,
};

export type AgentConfig = ConfigOf<typeof agentSpec>;

/** Checks what no single option can: the watermarks' order. Throws SHOAL_ERR_CONFIG naming both keys. */
export function checkAgentConfig(config: AgentConfig): void {
  if (['0.0.0.0', '::', '[::]'].includes(config.advertiseHost)) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `advertise.host: ${config.advertiseHost} is where the agent listens, not an address peers can reach; give this node's IP or name`,
      { details: { source: 'advertise.host' } },
    );
  }
  if (config.advertiseUrl !== '' && !URL.canParse(config.advertiseUrl)) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `advertise.url: ${JSON.stringify(config.advertiseUrl)} is not a URL (an IPv6 address goes in brackets: http://[fd00::1]:65001, or set advertise.host)`,
      { details: { source: 'advertise.url' } },
    );
  }
  if (config.cacheLowWatermark >= config.cacheHighWatermark) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `cache.lowWatermark (${config.cacheLowWatermark}) must be below cache.highWatermark (${config.cacheHighWatermark})`,
      { details: { source: 'cache.lowWatermark' } },
    );
  }
}
