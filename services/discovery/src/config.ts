/** Discovery options: each key defined once, with its flag, environment variable, default and help. */
import { instanceOption, logOptions, metricsPortOption, natsOptions, opt, type ConfigOf } from '@shoal/mesh';

export const discoverySpec = {
  ...natsOptions,
  ...logOptions,
  ...instanceOption('discovery'),
  ...metricsPortOption(9401),
  nodeTtl: opt.duration(
    'node.ttl',
    '15s',
    'A node that has not sent a heartbeat for this long is removed from the node registry (checked every third of it).',
    { minMs: 300 },
  ),
  registries: opt.list(
    'registries',
    [],
    'Registry base URLs to health-check (GET /v2/) and publish as endpoints, e.g. http://127.0.0.1:5000.',
    { pattern: /^https?:\/\/[^\s/?#]+\/?$/, hint: 'http(s)://host[:port] URL' },
  ),
  endpointsInterval: opt.duration(
    'endpoints.interval',
    '10s',
    'How often each registry endpoint is health-checked.',
    {
      minMs: 100,
    },
  ),
  endpointsTimeout: opt.duration(
    'endpoints.timeout',
    '5s',
    'How long a registry endpoint may take to answer a health check.',
    {
      minMs: 10,
    },
  ),
};

export type DiscoveryConfig = ConfigOf<typeof discoverySpec>;

/** The part of the configuration discovery itself uses; the command handles NATS, logs and metrics. */
export type DiscoverySettings = Pick<
  DiscoveryConfig,
  'nodeTtl' | 'registries' | 'endpointsInterval' | 'endpointsTimeout'
>;
