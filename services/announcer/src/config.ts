/** Announcer options: each key defined once, with its flag, environment variable, default and help. */
import {
  eventsRetentionOptions,
  instanceOption,
  logOptions,
  metricsPortOption,
  natsOptions,
  opt,
  type ConfigOf,
} from '@shoal/mesh';

export const announcerSpec = {
  ...natsOptions,
  ...logOptions,
  ...instanceOption('announcer'),
  ...metricsPortOption(9402),
  ...eventsRetentionOptions,
  batch: opt.int('consumer.batch', 100, 'Announcements pulled from the stream per request.', {
    min: 1,
    max: 10_000,
  }),
  concurrency: opt.int('consumer.concurrency', 32, 'Announcements applied at once by this replica.', {
    min: 1,
    max: 1_024,
  }),
  ackWait: opt.duration(
    'consumer.ackWait',
    '5s',
    'How long an announcement handed to a replica that stopped answering for it stays with that replica before the stream delivers it again, to this or another one. A replica applying an announcement, or holding it behind others from the same node, says so every third of this time.',
    { minMs: 1_000 },
  ),
  retryDelay: opt.duration(
    'retry.delay',
    '1s',
    'Delay before an announcement that failed on a transient KV error is delivered again.',
    { minMs: 0 },
  ),
  casAttempts: opt.int(
    'cas.attempts',
    25,
    'Compare-and-set attempts per announcement before it is handed back to the stream for a later retry.',
    { min: 1, max: 1_000 },
  ),
  tombstoneTtl: opt.duration(
    'tombstones.ttl',
    '30m',
    'How long withdrawals and invalidations are remembered, so that older announcements delivered late are ignored. Keep it above the announce stream’s retention (10 minutes).',
    { minMs: 60_000 },
  ),
};

export type AnnouncerConfig = ConfigOf<typeof announcerSpec>;

/** The part of the configuration the announcer itself uses; the command handles NATS, logs and metrics. */
export type AnnouncerSettings = Pick<
  AnnouncerConfig,
  'batch' | 'concurrency' | 'ackWait' | 'retryDelay' | 'casAttempts' | 'tombstoneTtl'
>;
