/** Builds an agent from its config: every dependency is created here and nowhere else. */
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import {
  connectMesh,
  createRegistry,
  type EventPublisher,
  type Logger,
  type MeshConnection,
  natsAuth,
  countDroppedEvents,
  natsEventPublisher,
  peerTokenSource,
} from '@shoal/mesh';
import { buildAgentApp } from './app.js';
import { type AgentConfig, checkAgentConfig } from './config.js';
import { BufferPool } from './buffers.js';
import { createHashPool, type HashPool } from './hash-pool.js';
import { type AgentLimiters, fileOverrideStore, LIMITS_FILE, openAgentLimiters } from './limits.js';
import { MemoryTier } from './memory-tier.js';
import { MeshClient } from './mesh-client.js';
import { agentMetrics, type AgentMetrics } from './metrics.js';
import { PeerClient } from './peers.js';
import { ChunkStore, type DiscardReason, type OpenReport } from './store.js';
import { ByteBudget, type TokenBucket } from './rate-limit.js';
import { Transfers } from './transfer.js';
import {
  followOwnTopology,
  followPublishedEndpoints,
  parseRegistries,
  RegistryEndpoints,
} from './endpoints.js';
import { Upstream } from './upstream.js';

/** Idle chunk buffers kept for reuse: a few default-sized chunks between one download's fetches. */
const IDLE_CHUNK_BUFFER_BYTES = 16 * 1024 * 1024;

export interface Agent {
  app: FastifyInstance;
  registry: Registry;
  store: ChunkStore;
  memory: MemoryTier;
  limits: AgentLimiters;
  events: EventPublisher;
  /** Starts background work (NATS, announcements); the caller decides where the app listens. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function createAgent(
  config: AgentConfig,
  log: Logger,
  advertiseUrl: () => string,
): Promise<Agent> {
  checkAgentConfig(config);
  const registry = createRegistry('agent');
  const metrics = agentMetrics(registry);
  const memory = new MemoryTier(config.cacheMemory, config.cacheParkedMemory);
  // Set once the mesh client exists; eviction runs only after that (the first sweep is below).
  let onEvicted: (hex: string) => void = () => undefined;
  const store = new ChunkStore(config.cacheDir, {
    maxBytes: config.cacheMaxSize,
    highWatermark: config.cacheHighWatermark / 100,
    lowWatermark: config.cacheLowWatermark / 100,
    ttlMs: config.cacheTtlMs,
    onEvict(hex, reason, bytes) {
      memory.drop(hex);
      onEvicted(hex);
      metrics.cacheEvictions.inc({ reason });
      metrics.cacheEvictedBytes.inc({ reason }, bytes);
      metrics.cacheBytes.set(store.totalBytes);
      log.info({ blob: `sha256:${hex}`, reason, bytes }, 'blob evicted from the cache');
    },
  });
  reportOpen(await store.open(), metrics, log);
  metrics.cacheBytes.set(store.totalBytes);
  const mesh: MeshConnection = connectMesh({
    servers: config.natsServers,
    name: `shoal-agent-${config.nodeId}`,
    log,
    auth: natsAuth(config),
  });
  const events = natsEventPublisher(mesh, config.nodeId, countDroppedEvents(registry));
  const endpoints = new RegistryEndpoints(
    parseRegistries(config.registries),
    { zone: config.zone, region: config.region },
    config.upstreamCooldownMs,
    {
      onFailure(registry, url, reason) {
        metrics.endpointFailures.inc({ registry });
        log.warn({ registry, url, reason }, 'registry endpoint failed; trying the next one');
      },
      onUpdate(registry, count) {
        if (count > 0) metrics.registryEndpoints.set({ registry }, count);
        else metrics.registryEndpoints.remove({ registry });
      },
      onSwitch(change) {
        metrics.endpointSwitches.inc({ registry: change.registry });
        log.info(change, 'registry endpoint switched');
        events.publish({ type: 'endpoint_switched', node: config.nodeId, ...change });
      },
    },
  );
  const published = followPublishedEndpoints(mesh, endpoints, log);
  const placed = followOwnTopology(mesh, config.nodeId, endpoints, log);
  const upstream = new Upstream({
    endpoints,
    timeoutMs: config.upstreamTimeoutMs,
    authCacheMs: config.authCacheMs,
    attempts: config.originRetries,
    // Manifest and authorisation requests are counted where they are made; chunk ranges here.
    onRequest: (kind, status) => {
      if (kind === 'chunk') metrics.originRequests.inc({ kind, status: `${Math.floor(status / 100)}xx` });
    },
  });
  const startedAt = Date.now();
  const meshClient = new MeshClient(
    mesh,
    store,
    {
      nodeId: config.nodeId,
      schedulerTimeoutMs: config.schedulerTimeoutMs,
      announceIntervalMs: config.announceIntervalMs,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      share: () => limits.share,
      self: () => ({
        id: config.nodeId,
        url: advertiseUrl(),
        zone: config.zone,
        vswitch: config.vswitch,
        pool: config.pool,
        startedAt,
        cacheBytes: store.totalBytes,
        // Heartbeats start with meshClient.start(), after the transfers below exist.
        downloads: transfers.size,
      }),
    },
    metrics,
    log,
  );
  // The withdrawal goes out at once, not with the next batch: a scheduler must stop planning this node
  // for the blob before a peer asks for chunks that are gone.
  onEvicted = (hex) => meshClient.withdraw(`sha256:${hex}`, false, { now: true });
  // Limits changed through the API are kept beside the cache and override the configuration at start.
  const limits = await openAgentLimiters(
    {
      downloadRate: config.downloadRate,
      downloadBurst: config.downloadBurst,
      uploadRate: config.peerUploadRate,
      uploadBurst: config.peerUploadBurst,
      uploadsPerPeer: config.peerUploadsPerPeer,
      registryRate: config.registryRate,
      registryBurst: config.registryBurst,
      share: config.peerShare,
      cacheMaxSize: config.cacheMaxSize,
      memory: config.cacheMemory,
    },
    { store, memory, onShareChange: (share) => meshClient.shareChanged(share) },
    fileOverrideStore(join(config.cacheDir, LIMITS_FILE), log),
    log,
  );
  // Evictions due while the agent was down (a smaller cache.maxSize, blobs past the TTL) happen now.
  await store.sweep();
  const sweeper = setInterval(() => {
    store.sweep().then(
      (result) => {
        for (const { hex, message } of result.errors)
          log.warn({ blob: `sha256:${hex}`, err: message }, 'could not delete an evicted blob');
      },
      (err: unknown) => log.warn({ err }, 'cache sweep failed'),
    );
  }, config.cacheSweepIntervalMs);
  sweeper.unref();
  const hashes: HashPool = createHashPool(config.hashWorkers);
  // Chunks in flight are taken from the pool and handed back once written; what sits idle between
  // them is a few chunks' worth, released after a quiet spell.
  const buffers = new BufferPool(IDLE_CHUNK_BUFFER_BYTES);
  const peers = new PeerClient(
    config.peerTimeoutMs,
    config.peerSecret ? peerTokenSource(config.peerSecret, config.nodeId) : undefined,
    config.peerMinRate,
  );
  if (!config.peerSecret) {
    log.warn('peer.secret is not set: any client that reaches this port can read cached chunks');
  }
  const transfers: Transfers = new Transfers(
    {
      nodeId: config.nodeId,
      chunkPolicy: {
        fixedSize: config.chunkSize,
        minSize: config.chunkMinSize,
        maxSize: config.chunkMaxSize,
        targetCount: config.chunkTargetCount,
      },
      concurrency: config.downloadConcurrency,
      askWhenFree: Math.min(config.askWhenFree, config.downloadConcurrency),
      originWaitMs: config.originWaitMs,
      originRetries: config.originRetries,
      originDirectMax: config.originDirectMax,
      peerSlowFactor: config.peerSlowFactor,
      peerSlowMinMs: config.peerSlowMinMs,
    },
    {
      store,
      upstream,
      peers,
      mesh: meshClient,
      hashes,
      buffers,
      metrics,
      events,
      log,
      memory,
      limits: { download: limits.download, registry: limits.registry },
      chunkMemory: new ByteBudget(config.downloadMemory),
    },
  );
  const refreshMetrics = statsSampler(metrics, store, memory, {
    peer_upload: limits.peerUploads,
    download: limits.download,
    registry: limits.registry,
  });
  const utilization = setInterval(() => {
    metrics.hashPoolUtilization.set(hashes.utilization());
    refreshMetrics();
  }, 5_000);
  utilization.unref();
  const app = buildAgentApp({
    nodeId: config.nodeId,
    peerSecret: config.peerSecret,
    store,
    upstream,
    transfers,
    buffers,
    metrics,
    registry,
    events,
    log,
    memory,
    limits,
    refreshMetrics,
    health: () => ({
      ok: true,
      node: config.nodeId,
      nats: meshClient.usable,
      downloads: transfers.size,
      placement: endpoints.placement,
    }),
  });

  return {
    app,
    registry,
    store,
    memory,
    limits,
    events,
    async start() {
      meshClient.start();
    },
    async stop() {
      clearInterval(utilization);
      clearInterval(sweeper);
      await app.close();
      await meshClient.stop();
      await Promise.all([published.stop(), placed.stop()]);
      await mesh.close();
      await Promise.allSettled([peers.close(), upstream.close(), hashes.close(), store.close()]);
      memory.clear();
    },
  };
}

/** Logs what the cache held at start, and what it threw away, and counts the files thrown away. */
function reportOpen(report: OpenReport, metrics: AgentMetrics, log: Logger): void {
  const discarded: Partial<Record<DiscardReason, number>> = {};
  for (const [reason, count] of Object.entries(report.discardedByReason) as [DiscardReason, number][]) {
    if (count === 0) continue;
    discarded[reason] = count;
    metrics.cacheDiscardedFiles.inc({ reason }, count);
  }
  log.info(
    {
      blobs: report.blobs,
      complete: report.completeBlobs,
      chunks: report.chunks,
      bytes: report.bytes,
      discarded,
      ...(report.corruptSumsLines > 0 ? { corruptSumsLines: report.corruptSumsLines } : {}),
    },
    'cache opened',
  );
}

/**
 * Returns a function that brings the counters kept by the store, the memory tier and the limiters into
 * the metrics, as the increase since it last ran (they count for themselves; the metrics follow).
 */
function statsSampler(
  metrics: AgentMetrics,
  store: ChunkStore,
  memory: MemoryTier,
  buckets: Record<'peer_upload' | 'download' | 'registry', TokenBucket>,
): () => void {
  let hits = 0;
  let misses = 0;
  const seen = new Map<string, { throttled: number; waitMs: number }>();
  return () => {
    const tier = memory.stats();
    metrics.memoryTierHits.inc(Math.max(0, tier.hits - hits));
    metrics.memoryTierMisses.inc(Math.max(0, tier.misses - misses));
    hits = tier.hits;
    misses = tier.misses;
    metrics.memoryTierBytes.set(tier.bytes);
    const cache = store.stats();
    metrics.cachePinnedBytes.set(cache.pinnedBytes);
    metrics.cacheBytes.set(cache.totalBytes);
    for (const [limiter, bucket] of Object.entries(buckets)) {
      const now = bucket.stats();
      const before = seen.get(limiter) ?? { throttled: 0, waitMs: 0 };
      metrics.limiterThrottledBytes.inc({ limiter }, Math.max(0, now.throttledBytes - before.throttled));
      metrics.limiterWait.inc({ limiter }, Math.max(0, now.waitMs - before.waitMs) / 1000);
      seen.set(limiter, { throttled: now.throttledBytes, waitMs: now.waitMs });
    }
  };
}
