/** Prometheus helpers: one registry per service instance, and a small server for services without HTTP. */
import Fastify, { type FastifyInstance } from 'fastify';
import { collectDefaultMetrics, Registry } from 'prom-client';

export function createRegistry(service: string, defaults = true): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  if (defaults) collectDefaultMetrics({ register: registry, prefix: 'shoal_process_' });
  return registry;
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
