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
    "Registries to publish as endpoints, each [name=]URL (the name images use defaults to the URL's host), e.g. registry.example.com=https://registry.example.com.",
    { pattern: /^([^\s=/@]+=)?https?:\/\/[^\s/?#@]+\/?$/, hint: '[name=]http(s)://host[:port]' },
  ),
  mirrors: opt.list(
    'mirrors',
    [],
    'Further endpoints of registries listed in registries, tried before the registry itself: name[@zone:Z|@region:R]=URL. A zone mirror is preferred by nodes of that zone; a region endpoint is used only by nodes of that region.',
    { pattern: /^[^@=\s]+(@(zone|region):[^=\s]+)?=https?:\/\/\S+$/, hint: 'name[@zone:Z|@region:R]=URL' },
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
  'nodeTtl' | 'registries' | 'mirrors' | 'endpointsInterval' | 'endpointsTimeout'
>;
