/** Options of shoalctl, defined once like every service's. */
import { type ConfigOf, natsOptions, opt } from '@shoal/mesh';

export const ctlSpec = {
  ...natsOptions,
  since: opt.duration('since', '1h', 'How far back to read events (e.g. 10m, 2h).'),
  node: opt.string('node', '', 'Only events of this node.'),
  blob: opt.string('blob', '', 'Only events of this blob digest (sha256:…).', {
    pattern: /^(|sha256:[a-f0-9]{64})$/,
    hint: 'digest sha256:<64 hex>',
  }),
  type: opt.string('type', '', 'Only events of this type (e.g. chunk_fetched).'),
  output: opt.oneOf(
    'output',
    ['table', 'json'] as const,
    'table',
    'Output format: a readable table or JSON lines.',
  ),
  follow: opt.bool('follow', false, 'Keep printing new events as they arrive (events only).'),
  timeoutMs: opt.duration('timeout', '5s', 'How long to wait for NATS before giving up.'),
  silentAfter: opt.duration(
    'silent-after',
    '15s',
    "nodes: show an agent as silent when its last heartbeat is older than this (discovery's node.ttl).",
  ),
};

export type CtlConfig = ConfigOf<typeof ctlSpec>;
