/** The agent's metrics, declared once on an injected registry. */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export function agentMetrics(registry: Registry) {
  return {
    clientBytes: new Counter({
      name: 'shoal_agent_client_bytes_total',
      help: 'Blob bytes served to clients (the container runtime), by where the chunk came from.',
      labelNames: ['source'] as const,
      registers: [registry],
    }),
    fetchBytes: new Counter({
      name: 'shoal_agent_fetch_bytes_total',
      help: 'Chunk bytes fetched and verified, by source (peer or origin).',
      labelNames: ['source'] as const,
      registers: [registry],
    }),
    fetchDuration: new Histogram({
      name: 'shoal_agent_chunk_fetch_duration_seconds',
      help: 'Time to fetch and verify one chunk, by source.',
      labelNames: ['source'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    peerFetchBytes: new Counter({
      name: 'shoal_agent_peer_fetch_bytes_total',
      help: 'Chunk bytes fetched from peers and verified, by where the peer stands: same vSwitch (vswitch), same zone (zone), another zone (cross_zone), or unknown (a scheduler that does not say).',
      labelNames: ['locality'] as const,
      registers: [registry],
    }),
    registryEndpoints: new Gauge({
      name: 'shoal_agent_registry_endpoints',
      help: 'Endpoints discovery publishes for a registry, as this agent last heard, by registry.',
      labelNames: ['registry'] as const,
      registers: [registry],
    }),
    endpointSwitches: new Counter({
      name: 'shoal_agent_registry_endpoint_switches_total',
      help: 'Times this agent reached a registry at another endpoint than before (a failover or a better endpoint), by registry.',
      labelNames: ['registry'] as const,
      registers: [registry],
    }),
    endpointFailures: new Counter({
      name: 'shoal_agent_registry_endpoint_failures_total',
      help: 'Requests to a registry endpoint that could not be reached or answered 5xx, by registry.',
      labelNames: ['registry'] as const,
      registers: [registry],
    }),
    peerUploadBytes: new Counter({
      name: 'shoal_agent_peer_upload_bytes_total',
      help: 'Chunk bytes uploaded to other agents.',
      registers: [registry],
    }),
    verifyFailures: new Counter({
      name: 'shoal_agent_chunk_verify_failures_total',
      help: 'Chunks (or whole blobs) whose sha256 did not match, by source.',
      labelNames: ['source'] as const,
      registers: [registry],
    }),
    chunkFailures: new Counter({
      name: 'shoal_agent_chunk_failures_total',
      help: 'Chunk fetches that failed, by source and reason.',
      labelNames: ['source', 'reason'] as const,
      registers: [registry],
    }),
    fallbacks: new Counter({
      name: 'shoal_agent_fallbacks_total',
      help: 'Times the agent went to the registry itself because the mesh could not serve, by reason.',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    requestDuration: new Histogram({
      name: 'shoal_agent_http_request_duration_seconds',
      help: 'HTTP request durations, by route, method and status.',
      labelNames: ['route', 'method', 'status'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60],
      registers: [registry],
    }),
    scheduleDuration: new Histogram({
      name: 'shoal_agent_schedule_duration_seconds',
      help: 'Round trip of a request to the scheduler, by outcome (ok, refused, timeout, no_scheduler, error).',
      labelNames: ['outcome'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    originRequests: new Counter({
      name: 'shoal_agent_origin_requests_total',
      help: 'Requests sent to the registry, by kind (manifest, authorize, chunk) and status class.',
      labelNames: ['kind', 'status'] as const,
      registers: [registry],
    }),
    cacheBytes: new Gauge({
      name: 'shoal_agent_cache_bytes',
      help: 'Bytes of verified chunks in the disk cache.',
      registers: [registry],
    }),
    cacheEvictions: new Counter({
      name: 'shoal_agent_cache_evictions_total',
      help: 'Blobs evicted from the disk cache, by reason (capacity, ttl).',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    cacheEvictedBytes: new Counter({
      name: 'shoal_agent_cache_evicted_bytes_total',
      help: 'Bytes of chunks evicted from the disk cache, by reason (capacity, ttl).',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    cacheDiscardedFiles: new Counter({
      name: 'shoal_agent_cache_discarded_files_total',
      help: 'Files the agent threw away when it opened its cache at start, by reason (temporary, wrong_size, no_hash, bad_meta, out_of_range, incomplete).',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    cachePinnedBytes: new Gauge({
      name: 'shoal_agent_cache_pinned_bytes',
      help: 'Bytes of cached blobs in use (downloading, being served), which eviction must keep.',
      registers: [registry],
    }),
    cacheFull: new Counter({
      name: 'shoal_agent_cache_full_total',
      help: 'Times the cache was full of blobs in use, by what the agent did: passthrough (a blob served from the registry without caching it) or overshoot (a chunk of a running download written over cache.maxSize).',
      labelNames: ['action'] as const,
      registers: [registry],
    }),
    memoryTierHits: new Counter({
      name: 'shoal_agent_memory_tier_hits_total',
      help: 'Chunks served from the memory tier (to clients and peers).',
      registers: [registry],
    }),
    memoryTierMisses: new Counter({
      name: 'shoal_agent_memory_tier_misses_total',
      help: 'Chunks looked up in the memory tier and not found there (served from disk instead).',
      registers: [registry],
    }),
    memoryTierBytes: new Gauge({
      name: 'shoal_agent_memory_tier_bytes',
      help: 'Bytes of chunks held in the memory tier.',
      registers: [registry],
    }),
    diskTierHits: new Counter({
      name: 'shoal_agent_disk_tier_hits_total',
      help: 'Chunks served from the disk cache (to clients and peers); with the memory tier hits, the share each tier serves.',
      registers: [registry],
    }),
    limiterThrottledBytes: new Counter({
      name: 'shoal_agent_limiter_throttled_bytes_total',
      help: 'Bytes that had to wait for a rate limiter, by limiter (peer_upload, download, registry).',
      labelNames: ['limiter'] as const,
      registers: [registry],
    }),
    limiterWait: new Counter({
      name: 'shoal_agent_limiter_wait_seconds_total',
      help: 'Time transfers waited for a rate limiter, summed, by limiter (peer_upload, download, registry).',
      labelNames: ['limiter'] as const,
      registers: [registry],
    }),
    peerUploadsRefused: new Counter({
      name: 'shoal_agent_peer_uploads_refused_total',
      help: 'Peer chunk requests answered 429 because the peer already had peer.uploadsPerPeer uploads running.',
      registers: [registry],
    }),
    activeDownloads: new Gauge({
      name: 'shoal_agent_active_downloads',
      help: 'Blobs being downloaded right now.',
      registers: [registry],
    }),
    hashPoolUtilization: new Gauge({
      name: 'shoal_agent_hash_pool_utilization_ratio',
      help: 'Utilisation of the chunk-hashing worker pool (0-1).',
      registers: [registry],
    }),
    announcements: new Counter({
      name: 'shoal_agent_announcements_total',
      help: 'Chunk announcements published, by outcome.',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
  };
}

export type AgentMetrics = ReturnType<typeof agentMetrics>;
