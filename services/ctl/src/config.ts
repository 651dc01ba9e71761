/** Options every shoalctl command shares, defined once like every service's; each command adds its own. */
import { natsOptions, opt } from '@shoal/mesh';

export const commonSpec = {
  ...natsOptions,
  output: opt.oneOf(
    'output',
    ['table', 'json'] as const,
    'table',
    'Output format: a readable table or JSON lines.',
  ),
  timeoutMs: opt.duration('timeout', '5s', 'How long to wait for NATS before giving up.'),
};

/** Which events to read: shared by the commands that read the event stream. */
export const eventFilterSpec = {
  since: opt.duration('since', '1h', 'How far back to read events (e.g. 10m, 2h).'),
  node: opt.string('node', '', 'Only events of this node.'),
  blob: opt.string('blob', '', 'Only events of this blob digest (sha256:…).', {
    pattern: /^(|sha256:[a-f0-9]{64})$/,
    hint: 'digest sha256:<64 hex>',
  }),
};
