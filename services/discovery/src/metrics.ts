/** Discovery metrics, declared once on the registry the caller injects. */
import { Counter, Gauge, type Registry } from 'prom-client';

export interface DiscoveryMetrics {
  joins: Counter;
  leaves: Counter<'reason'>;
  heartbeats: Counter<'outcome'>;
  endpointHealthy: Gauge<'registry'>;
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
      help: 'Whether a registry endpoint answered its last health check (1) or not (0).',
      labelNames: ['registry'],
      registers: [registry],
    }),
  };
}
