/**
 * The start-up every control-plane service shares: serve /metrics and /healthz at once (503 while
 * waiting for NATS), connect, create the streams and buckets, build and start the service, and after
 * every reconnect put back what it depends on (the server may be a fresh one, or have lost its store).
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { Registry } from 'prom-client';
import { natsAuth } from './common-options.js';
import type { Stoppable } from './lifecycle.js';
import { defaultInstanceName } from './lifecycle.js';
import { createLogger, type Logger } from './logger.js';
import { createRegistry, metricsServer } from './metrics.js';
import {
  connectMesh,
  defaultStreamLimits,
  ensureStreams,
  jetStreamOf,
  type MeshBuckets,
  type MeshConnection,
  openBuckets,
} from './nats.js';

export interface ControlServiceConfig {
  instance: string;
  logLevel: string;
  metricsPort: number;
  metricsHost: string;
  natsServers: string[];
  natsUser: string;
  natsPassword: string;
  natsToken: string;
  natsCredsFile: string;
  natsTlsCa: string;
  natsTlsCert: string;
  natsTlsKey: string;
  eventsMaxAge: number;
  eventsMaxBytes: number;
  natsReplicas: number;
}

export interface ControlServiceApp {
  start(): Promise<void>;
  stop(): Promise<void>;
  health(): { ok: boolean; detail?: unknown };
}

export interface ControlServiceContext {
  mesh: MeshConnection;
  log: Logger;
  registry: Registry;
  instance: string;
  buckets: MeshBuckets;
}

export async function runControlService(options: {
  service: string;
  config: ControlServiceConfig;
  build(context: ControlServiceContext): ControlServiceApp;
  /** Anything beyond streams and buckets to re-create after a reconnect (e.g. a durable consumer). */
  restore?(jsm: JetStreamManager): Promise<void>;
}): Promise<Stoppable> {
  const { service, config } = options;
  const instance = config.instance || defaultInstanceName(service);
  const log = createLogger(service, config.logLevel).child({ instance });
  const limits = {
    ...defaultStreamLimits,
    eventsMaxAgeMs: config.eventsMaxAge,
    eventsMaxBytes: config.eventsMaxBytes,
    replicas: config.natsReplicas,
  };
  const registry = createRegistry(service);
  let app: ControlServiceApp | undefined;
  const server = metricsServer(registry, () => app?.health() ?? { ok: false, detail: 'connecting' });
  await server.listen({ port: config.metricsPort, host: config.metricsHost });
  const mesh = connectMesh({
    servers: config.natsServers,
    name: instance,
    log,
    auth: natsAuth(config),
  });
  let started: ControlServiceApp;
  try {
    const nc = await mesh.ready();
    await ensureStreams(await jetStreamOf(nc).jsm, limits);
    const buckets = await openBuckets(nc, limits.replicas);
    started = options.build({ mesh, log, registry, instance, buckets });
    app = started;
    await started.start();
  } catch (err) {
    await mesh.close().catch(() => undefined);
    await server.close();
    throw err;
  }
  let armed = false;
  mesh.onConnect((nc) => {
    if (!armed) return;
    void (async () => {
      const jsm = await jetStreamOf(nc).jsm;
      await ensureStreams(jsm, limits);
      await openBuckets(nc, limits.replicas);
      await options.restore?.(jsm);
    })().catch((err: unknown) =>
      log.error({ err }, 'could not re-create streams or buckets after reconnect'),
    );
  });
  armed = true;
  log.info({ metrics: server.addresses() }, `${service} started`);
  return {
    async stop() {
      await started.stop();
      await mesh.close();
      await server.close();
    },
  };
}
