/** Scheduler metrics, declared once on the registry the caller injects. */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { IndexSizes } from './index-state.js';

export type RequestOutcome = 'ok' | 'bad_request' | 'error';

export interface SchedulerMetrics {
  requests: Counter<'outcome'>;
  decisionSeconds: Histogram;
  assignments: Counter<'kind'>;
  grantErrors: Counter;
  indexErrors: Counter;
  crossZone: Counter;
  originBudget: Gauge;
  originContenders: Gauge;
  originLeases: Gauge;
  leaseRenewals: Counter;
  suspected: Counter;
}

export function createSchedulerMetrics(
  registry: Registry,
  sizes: () => IndexSizes,
  suspectedNow: () => number = () => 0,
): SchedulerMetrics {
  const gauge = (name: string, help: string, pick: (s: IndexSizes) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(pick(sizes()));
      },
    });
  gauge(
    'shoal_scheduler_index_blobs',
    'Blobs with a chunk manifest in this replica’s index.',
    (s) => s.blobs,
  );
  gauge(
    'shoal_scheduler_index_holders',
    'Holder records (node, blob) in this replica’s index.',
    (s) => s.holders,
  );
  gauge('shoal_scheduler_index_nodes', 'Node records in this replica’s index.', (s) => s.nodes);
  new Gauge({
    name: 'shoal_scheduler_nodes_suspected',
    help: 'Nodes taken for dead now (unreachable for another node, heartbeats missed): offered to nobody, their leases free.',
    registers: [registry],
    collect() {
      this.set(suspectedNow());
    },
  });
  return {
    requests: new Counter({
      name: 'shoal_scheduler_requests_total',
      help: 'Schedule requests answered, by outcome (ok, bad_request, error).',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    decisionSeconds: new Histogram({
      name: 'shoal_scheduler_decision_duration_seconds',
      help: 'Time from receiving a schedule request to sending the reply.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    }),
    assignments: new Counter({
      name: 'shoal_scheduler_assignments_total',
      help: 'Chunk assignments made, by source kind (peer, origin, wait).',
      labelNames: ['kind'],
      registers: [registry],
    }),
    grantErrors: new Counter({
      name: 'shoal_scheduler_grant_errors_total',
      help: 'Origin or zone lease requests that failed because the grants bucket was unavailable.',
      registers: [registry],
    }),
    indexErrors: new Counter({
      name: 'shoal_scheduler_index_unreadable_total',
      help: 'KV values the index could not read and treated as deleted.',
      registers: [registry],
    }),
    originBudget: new Gauge({
      name: 'shoal_scheduler_origin_budget',
      help: 'Origin leases the mesh may hold at once, as this replica judges from how fast origin chunks arrive.',
      registers: [registry],
    }),
    originContenders: new Gauge({
      name: 'shoal_scheduler_origin_contenders',
      help: 'Nodes among which the origin budget is shared: those holding origin leases and those this replica told to wait for one within origin.target, as of the last time it weighed a node’s share.',
      registers: [registry],
    }),
    suspected: new Counter({
      name: 'shoal_scheduler_node_suspicions_total',
      help: 'Times a node was taken for dead: another node could not connect to it, and it missed its heartbeats.',
      registers: [registry],
    }),
    originLeases: new Gauge({
      name: 'shoal_scheduler_origin_leases',
      help: 'Origin leases held over the whole mesh, as of this replica’s last decision.',
      registers: [registry],
    }),
    leaseRenewals: new Counter({
      name: 'shoal_scheduler_lease_renewals_total',
      help: 'Origin and zone leases extended because their node was still fetching the chunk with less than two thirds of the lease left.',
      registers: [registry],
    }),
    crossZone: new Counter({
      name: 'shoal_scheduler_cross_zone_assignments_total',
      help: 'Chunks sent outside the requester’s zone (to another zone’s peer or the origin) under a zone lease.',
      registers: [registry],
    }),
  };
}
