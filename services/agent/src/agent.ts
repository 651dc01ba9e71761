/** Builds an agent from its config: every dependency is created here and nowhere else. */
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
import type { AgentConfig } from './config.js';
import { BufferPool } from './buffers.js';
import { createHashPool, type HashPool } from './hash-pool.js';
import { MeshClient } from './mesh-client.js';
import { agentMetrics } from './metrics.js';
import { PeerClient } from './peers.js';
import { ChunkStore } from './store.js';
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
  const registry = createRegistry('agent');
  const metrics = agentMetrics(registry);
  const store = new ChunkStore(config.cacheDir);
  await store.open();
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
      peerSlowFactor: config.peerSlowFactor,
      peerSlowMinMs: config.peerSlowMinMs,
    },
    { store, upstream, peers, mesh: meshClient, hashes, buffers, metrics, events, log },
  );
  const utilization = setInterval(() => metrics.hashPoolUtilization.set(hashes.utilization()), 5_000);
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
    events,
    async start() {
      meshClient.start();
    },
    async stop() {
      clearInterval(utilization);
      await app.close();
      await meshClient.stop();
      await Promise.all([published.stop(), placed.stop()]);
      await mesh.close();
      await Promise.allSettled([peers.close(), upstream.close(), hashes.close()]);
    },
  };
}
