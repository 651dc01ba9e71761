/** Announcer metrics, declared once on the registry the caller injects. */
import { Counter, Histogram, type Registry } from 'prom-client';

export type AnnouncementType = 'chunks' | 'withdraw' | 'unknown';

export interface AnnouncerMetrics {
  applied: Counter<'type'>;
  stale: Counter<'type'>;
  rejected: Counter<'type' | 'reason'>;
  retried: Counter<'type'>;
  conflicts: Counter;
  applySeconds: Histogram<'type'>;
}

export function createAnnouncerMetrics(registry: Registry): AnnouncerMetrics {
  return {
    applied: new Counter({
      name: 'shoal_announcer_announcements_applied_total',
      help: 'Announcements applied to the chunk index, by type.',
      labelNames: ['type'],
      registers: [registry],
    }),
    stale: new Counter({
      name: 'shoal_announcer_announcements_stale_total',
      help: 'Announcements ignored because a newer one (or a withdrawal) for the same node and blob was already applied.',
      labelNames: ['type'],
      registers: [registry],
    }),
    rejected: new Counter({
      name: 'shoal_announcer_announcements_rejected_total',
      help: 'Announcements refused for good, by type and reason (invalid, node_mismatch, bad_index, manifest_mismatch).',
      labelNames: ['type', 'reason'],
      registers: [registry],
    }),
    retried: new Counter({
      name: 'shoal_announcer_announcements_retried_total',
      help: 'Announcements handed back to the stream after a transient KV error.',
      labelNames: ['type'],
      registers: [registry],
    }),
    conflicts: new Counter({
      name: 'shoal_announcer_manifest_conflicts_total',
      help: 'Chunk hashes announced that differ from the hash already in the manifest (the first one is kept).',
      registers: [registry],
    }),
    applySeconds: new Histogram({
      name: 'shoal_announcer_apply_duration_seconds',
      help: 'Time to apply one announcement to KV, by type.',
      labelNames: ['type'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    }),
  };
}
