/** `shoal announcer`: the composition root. The launcher parses the config and handles signals; this wires the parts. */
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
import { createAnnouncer, ensureAnnouncerConsumer, type Announcer } from './app.js';
import { announcerSpec } from './config.js';

export const announcerCommand: CommandDefinition<typeof announcerSpec> = {
  command: 'shoal announcer',
  summary:
    'Keeps the chunk index (which node holds which chunks, and each blob’s chunk manifest) from agents’ announcements. Run any number of replicas.',
  spec: announcerSpec,
  async start(config) {
    const instance = config.instance || defaultInstanceName('announcer');
    const log = createLogger('announcer', config.logLevel).child({ instance });
    const registry = createRegistry('announcer');
    let announcer: Announcer | undefined;
    // Metrics and health are served from the start, so an announcer waiting for NATS reports 503, not nothing.
    const server = metricsServer(registry, () => announcer?.health() ?? { ok: false, detail: 'connecting' });
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
      announcer = createAnnouncer({ mesh, log, registry, config, instance, buckets });
      await announcer.start();
    } catch (err) {
      await mesh.close().catch(() => undefined);
      await server.close();
      throw err;
    }
    const app = announcer;
    // After a reconnect the server may be a fresh one (or have lost its store): put back what this
    // service depends on. The consumer's pull loop recovers by itself once its consumer exists again.
    let armed = false;
    mesh.onConnect((nc) => {
      if (!armed) return;
      void (async () => {
        const jsm = await jetStreamOf(nc).jsm;
        await ensureStreams(jsm);
        await openBuckets(nc);
        await ensureAnnouncerConsumer(jsm, config);
      })().catch((err: unknown) =>
        log.error({ err }, 'could not re-create streams, buckets or consumer after reconnect'),
      );
    });
    armed = true;
    log.info({ metrics: server.addresses() }, 'announcer started');
    return {
      async stop() {
        await app.stop();
        await mesh.close();
        await server.close();
      },
    };
  },
};
