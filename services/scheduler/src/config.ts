/** Scheduler options: each key defined once, with its flag, environment variable, default and help. */
import { instanceOption, logOptions, metricsPortOption, natsOptions, opt, type ConfigOf } from '@shoal/mesh';

export const schedulerSpec = {
  ...natsOptions,
  ...logOptions,
  ...instanceOption('scheduler'),
  ...metricsPortOption(9403),
  nodeTtl: opt.duration(
    'node.ttl',
    '15s',
    'A node whose last heartbeat is older than this is never offered as a parent.',
    { minMs: 100 },
  ),
  originPerChunk: opt.int(
    'origin.perChunk',
    1,
    'How many nodes may fetch the same chunk from the origin at once.',
    {
      min: 1,
      max: 64,
    },
  ),
  originLease: opt.duration(
    'origin.lease',
    '10s',
    'How long an origin grant lasts; after that another node may take the chunk over.',
    { minMs: 100 },
  ),
  originMaxPerRequest: opt.int(
    'origin.maxPerRequest',
    0,
    'At most this many origin grants in one reply (0: no limit), so that the first nodes of a swarm fetch different chunks from the origin.',
    { min: 0 },
  ),
  waitRetry: opt.duration(
    'wait.retry',
    '250ms',
    'How long a node is told to wait before asking again for a chunk no one can serve yet.',
    {
      minMs: 1,
    },
  ),
  loadHalfLife: opt.duration(
    'load.halfLife',
    '5s',
    'Half-life of the per-parent assignment counter that spreads chunks over parents of the same topology tier.',
    { minMs: 1 },
  ),
  alternates: opt.int(
    'plan.alternates',
    3,
    'Further peers offered per chunk, to try if the chosen parent fails.',
    {
      min: 0,
      max: 16,
    },
  ),
};

export type SchedulerConfig = ConfigOf<typeof schedulerSpec>;

/** The part of the configuration the scheduler itself uses; the command handles NATS, logs and metrics. */
export type SchedulerSettings = Pick<
  SchedulerConfig,
  | 'nodeTtl'
  | 'originPerChunk'
  | 'originLease'
  | 'originMaxPerRequest'
  | 'waitRetry'
  | 'loadHalfLife'
  | 'alternates'
>;
