/** Prometheus helpers: one registry per service instance, and a small server for services without HTTP. */
import Fastify, { type FastifyInstance } from 'fastify';
import { collectDefaultMetrics, Counter, Registry } from 'prom-client';

export function createRegistry(service: string, defaults = true): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  if (defaults) collectDefaultMetrics({ register: registry, prefix: 'shoal_process_' });
  return registry;
}

/**
 * Counts events the publisher dropped (NATS away or too slow) on the given registry; pass the result as
 * natsEventPublisher's onDrop.
 */
export function countDroppedEvents(registry: Registry): () => void {
  const dropped = new Counter({
    name: 'shoal_events_dropped_total',
    help: 'Events not published because NATS was not connected or too much was waiting to be sent.',
    registers: [registry],
  });
  return () => dropped.inc();
}

/** Serves /metrics and /healthz on its own port, for services whose only other interface is NATS. */
export function metricsServer(
  registry: Registry,
  health: () => { ok: boolean; detail?: unknown },
): FastifyInstance {
  const app = Fastify({ logger: false });
  app.get('/metrics', async (_req, reply) => {
    void reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
  app.get('/healthz', async (_req, reply) => {
    const state = health();
    void reply.code(state.ok ? 200 : 503);
    return state;
  });
  return app;
}
