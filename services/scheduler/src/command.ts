/** `shoal scheduler`: the composition root. The launcher parses the config and handles signals; this wires the parts. */
import {
  connectMesh,
  createLogger,
  createRegistry,
  defaultInstanceName,
  ensureStreams,
  jetStreamOf,
  metricsServer,
  openBuckets,
  type CommandDefinition,
} from '@shoal/mesh';
import { createScheduler, type Scheduler } from './app.js';
import { schedulerSpec } from './config.js';

export const schedulerCommand: CommandDefinition<typeof schedulerSpec> = {
  command: 'shoal scheduler',
  summary:
    'Decides, for a node that needs a blob, which parent serves each chunk and who may fetch it from the origin. Run any number of replicas.',
  spec: schedulerSpec,
  async start(config) {
    const instance = config.instance || defaultInstanceName('scheduler');
    const log = createLogger('scheduler', config.logLevel).child({ instance });
    const registry = createRegistry('scheduler');
    let scheduler: Scheduler | undefined;
    // Metrics and health are served from the start, so a scheduler waiting for NATS reports 503, not nothing.
    const server = metricsServer(registry, () => scheduler?.health() ?? { ok: false, detail: 'connecting' });
    await server.listen({ port: config.metricsPort, host: config.metricsHost });
    const mesh = connectMesh({
      servers: config.natsServers,
      name: instance,
      log,
      user: config.natsUser || undefined,
      pass: config.natsPassword || undefined,
      token: config.natsToken || undefined,
    });
    try {
      const nc = await mesh.ready();
      await ensureStreams(await jetStreamOf(nc).jsm);
      const buckets = await openBuckets(nc);
      scheduler = createScheduler({ mesh, log, registry, config, instance, buckets });
      await scheduler.start();
    } catch (err) {
      await mesh.close().catch(() => undefined);
      await server.close();
      throw err;
    }
    const app = scheduler;
    // After a reconnect the server may be a fresh one (or have lost its store): put back what this
    // service depends on.
    let armed = false;
    mesh.onConnect((nc) => {
      if (!armed) return;
      void (async () => {
        await ensureStreams(await jetStreamOf(nc).jsm);
        await openBuckets(nc);
      })().catch((err: unknown) =>
        log.error({ err }, 'could not re-create streams or buckets after reconnect'),
      );
    });
    armed = true;
    log.info({ metrics: server.addresses() }, 'scheduler started');
    return {
      async stop() {
        await app.stop();
        await mesh.close();
        await server.close();
      },
    };
  },
};
