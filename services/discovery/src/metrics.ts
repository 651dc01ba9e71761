/** Discovery metrics, declared once on the registry the caller injects. */
import { Counter, Gauge, type Registry } from 'prom-client';

export interface DiscoveryMetrics {
  joins: Counter;
  leaves: Counter<'reason'>;
  heartbeats: Counter<'outcome'>;
  endpointHealthy: Gauge<'registry'>;
  providerErrors: Counter<'provider'>;
  providerLastSuccess: Gauge<'provider'>;
}

export function createDiscoveryMetrics(registry: Registry, nodeCount: () => number): DiscoveryMetrics {
  new Gauge({
    name: 'shoal_discovery_nodes',
    help: 'Live nodes in the node registry.',
    registers: [registry],
    collect() {
      this.set(nodeCount());
    },
  });
  return {
    joins: new Counter({
      name: 'shoal_discovery_node_joins_total',
      help: 'Nodes that joined (first heartbeat, or first after leaving), as recorded by this instance.',
      registers: [registry],
    }),
    leaves: new Counter({
      name: 'shoal_discovery_node_leaves_total',
      help: 'Nodes removed by this instance, by reason (left, timeout).',
      labelNames: ['reason'],
      registers: [registry],
    }),
    heartbeats: new Counter({
      name: 'shoal_discovery_heartbeats_total',
      help: 'Heartbeats received, by outcome (accepted, rejected, error).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    endpointHealthy: new Gauge({
      name: 'shoal_discovery_endpoint_healthy',
      help: 'Whether a registry had a healthy endpoint at its last health check (1) or not (0).',
      labelNames: ['registry'],
      registers: [registry],
    }),
    providerErrors: new Counter({
      name: 'shoal_discovery_provider_errors_total',
      help: 'Failed attempts to read endpoints from a provider (a registry instance API), by provider.',
      labelNames: ['provider'],
      registers: [registry],
    }),
    providerLastSuccess: new Gauge({
      name: 'shoal_discovery_provider_last_success_seconds',
      help: 'When a provider last answered, in seconds since the epoch.',
      labelNames: ['provider'],
      registers: [registry],
    }),
  };
}
