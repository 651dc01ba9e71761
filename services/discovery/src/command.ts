/** `shoal discovery`: the composition root. The launcher parses the config and handles signals; this wires the parts. */
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
import { createDiscovery, type Discovery } from './app.js';
import { discoverySpec } from './config.js';

export const discoveryCommand: CommandDefinition<typeof discoverySpec> = {
  command: 'shoal discovery',
  summary:
    'Keeps the node registry from agents’ heartbeats and publishes the configured registry endpoints with their health.',
  spec: discoverySpec,
  async start(config) {
    const instance = config.instance || defaultInstanceName('discovery');
    const log = createLogger('discovery', config.logLevel).child({ instance });
    const registry = createRegistry('discovery');
    let discovery: Discovery | undefined;
    // Metrics and health are served from the start, so discovery waiting for NATS reports 503, not nothing.
    const server = metricsServer(registry, () => discovery?.health() ?? { ok: false, detail: 'connecting' });
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
      discovery = createDiscovery({ mesh, log, registry, config, instance, buckets });
      await discovery.start();
    } catch (err) {
      await mesh.close().catch(() => undefined);
      await server.close();
      throw err;
    }
    const app = discovery;
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
    log.info({ metrics: server.addresses() }, 'discovery started');
    return {
      async stop() {
        await app.stop();
        await mesh.close();
        await server.close();
      },
    };
  },
};
