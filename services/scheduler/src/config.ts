/** Scheduler options: each key defined once, with its flag, environment variable, default and help. */
import {
  eventsRetentionOptions,
  instanceOption,
  logOptions,
  metricsPortOption,
  natsOptions,
  opt,
  type ConfigOf,
} from '@shoal/mesh';

export const schedulerSpec = {
  ...natsOptions,
  ...logOptions,
  ...instanceOption('scheduler'),
  ...metricsPortOption(9403),
  ...eventsRetentionOptions,
  nodeTtl: opt.duration(
    'node.ttl',
    '15s',
    'A node whose last heartbeat is older than this is never offered as a parent.',
    { minMs: 100 },
  ),
  originPerChunk: opt.int(
    'origin.perChunk',
    1,
    "How many nodes may fetch the same chunk from the origin at once (blobs of at most the agents' origin.directMax are not asked for: every node fetches them itself).",
    {
      min: 1,
      max: 64,
    },
  ),
  originPerZone: opt.int(
    'origin.perZone',
    1,
    'How many nodes of one zone may fetch the same chunk from outside the zone (another zone or the origin) at once, while no one in the zone holds it; the rest of the zone waits for them.',
    { min: 1, max: 64 },
  ),
  originLease: opt.duration(
    'origin.lease',
    '10s',
    'How long an origin or zone lease lasts; after that another node may take the chunk over. A node still fetching the chunk has it extended while it keeps saying so (every quarter of the lease).',
    { minMs: 100 },
  ),
  originMaxPerRequest: opt.int(
    'origin.maxPerRequest',
    4,
    'At most this many origin grants in one reply (0: no limit), so that the first nodes of a swarm fetch different chunks from the origin.',
    { min: 0 },
  ),
  originBudgetMax: opt.int(
    'origin.budgetMax',
    256,
    'Most origin leases the whole mesh may hold at once (0: no budget). The budget follows the registry: it grows while origin chunks arrive within origin.target and shrinks when they take longer.',
    { min: 0 },
  ),
  originBudgetMin: opt.int('origin.budgetMin', 4, 'The origin budget never falls below this many leases.', {
    min: 1,
  }),
  originPerNode: opt.int(
    'origin.perNode',
    4,
    "Origin leases one node may hold at once to begin with (with origin.budgetMax above 0). Each of the node's origin chunks that arrives within origin.target raises it by one, up to the budget; but a node is never granted more than its fair share of the budget, divided among the nodes fetching from or waiting for the origin, so that first copies come from many nodes rather than a few.",
    { min: 1 },
  ),
  originTarget: opt.duration(
    'origin.target',
    '5s',
    "An origin chunk that takes longer than this from grant to announcement shrinks the origin budget (and its node's own limit, see origin.perNode); a node told to wait for the origin counts among those sharing the budget for this long. Keep it well under the agents' origin.waitTimeout.",
    { minMs: 10 },
  ),
  waitRetry: opt.duration(
    'wait.retry',
    '100ms',
    'How long a node is told to wait before asking again for a chunk no one can serve yet; a download told to wait again with nothing in flight doubles it each time, up to 8 times it.',
    {
      minMs: 1,
    },
  ),
  parentSlots: opt.int(
    'parent.slots',
    8,
    'Transfers a parent may be serving at once before it counts as busy and gets no more (its upload lanes); a node with nothing of the blob in flight may take one more.',
    { min: 1, max: 1024 },
  ),
  parentExpire: opt.duration(
    'parent.expire',
    '10s',
    'How long an assignment counts against its parent when the child never announces the chunk.',
    { minMs: 100 },
  ),
  inOrder: opt.int(
    'plan.inOrder',
    2,
    'When a node lets the scheduler choose, this many of the chunks it lists first are taken in order (the runtime streams them); the rest rarest first.',
    { min: 0, max: 64 },
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
  | 'originPerZone'
  | 'originLease'
  | 'originMaxPerRequest'
  | 'originBudgetMax'
  | 'originBudgetMin'
  | 'originPerNode'
  | 'originTarget'
  | 'waitRetry'
  | 'parentSlots'
  | 'parentExpire'
  | 'inOrder'
  | 'alternates'
>;
