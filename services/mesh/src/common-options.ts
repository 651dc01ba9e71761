/** Options every service shares: where NATS is, how to log, where to serve metrics. */
import { opt } from './config.js';

export const natsOptions = {
  natsServers: opt.list('nats.servers', ['nats://127.0.0.1:4222'], 'NATS server URLs (JetStream enabled).'),
  natsUser: opt.string('nats.user', '', 'NATS user name, if the server requires one.'),
  natsPassword: opt.string('nats.password', '', 'NATS password. Prefer the environment variable to a flag.', {
    secret: true,
  }),
  natsToken: opt.string('nats.token', '', 'NATS authentication token.', { secret: true }),
  natsCredsFile: opt.string(
    'nats.credsFile',
    '',
    'NATS credentials file (a user JWT and NKEY seed, as `nsc` writes them) for servers run in operator mode with accounts.',
  ),
  natsTlsCa: opt.string(
    'nats.tls.ca',
    '',
    'CA certificate file (PEM) to verify the NATS servers with; setting it requires TLS.',
  ),
  natsTlsCert: opt.string(
    'nats.tls.cert',
    '',
    'Client certificate file (PEM), for servers that verify clients.',
  ),
  natsTlsKey: opt.string('nats.tls.key', '', 'Key file (PEM) of the client certificate.'),
};

/** How to authenticate to NATS and verify it, from the options above; empty values are left out. */
export function natsAuth(config: {
  natsUser: string;
  natsPassword: string;
  natsToken: string;
  natsCredsFile: string;
  natsTlsCa: string;
  natsTlsCert: string;
  natsTlsKey: string;
}): NatsAuth {
  const tls = {
    ...(config.natsTlsCa ? { caFile: config.natsTlsCa } : {}),
    ...(config.natsTlsCert ? { certFile: config.natsTlsCert } : {}),
    ...(config.natsTlsKey ? { keyFile: config.natsTlsKey } : {}),
  };
  return {
    ...(config.natsUser ? { user: config.natsUser, pass: config.natsPassword } : {}),
    ...(config.natsToken ? { token: config.natsToken } : {}),
    ...(config.natsCredsFile ? { credsFile: config.natsCredsFile } : {}),
    ...(Object.keys(tls).length ? { tls } : {}),
  };
}

export interface NatsAuth {
  user?: string;
  pass?: string;
  token?: string;
  /** Read at connect time, and again at every reconnect (so a rotated file is picked up). */
  credsFile?: string;
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
}

export const logOptions = {
  logLevel: opt.oneOf(
    'log.level',
    ['trace', 'debug', 'info', 'warn', 'error', 'silent'] as const,
    'info',
    'Log level.',
  ),
};

export const instanceOption = (what: string) => ({
  instance: opt.string(
    'instance',
    '',
    `Name of this ${what} instance in events and logs; defaults to the host name and process ID.`,
    { pattern: /^[A-Za-z0-9_-]{0,64}$/, hint: 'name of [A-Za-z0-9_-]' },
  ),
});

/** How long and how much of the event stream is kept; every control service applies them on connect. */
export const eventsRetentionOptions = {
  natsReplicas: opt.int(
    'nats.replicas',
    1,
    'Servers each JetStream stream and bucket is kept on: the size of a clustered NATS (3 or 5), so that losing one server loses nothing.',
    { min: 1, max: 5 },
  ),
  eventsMaxAge: opt.duration(
    'events.maxAge',
    '7d',
    'Events older than this are dropped from the event stream (replay, explain and trace can look back this far).',
    { minMs: 60_000 },
  ),
  eventsMaxBytes: opt.bytes(
    'events.maxBytes',
    '1GiB',
    'The event stream keeps at most this much; the oldest events go first.',
    { min: 1024 * 1024 },
  ),
};

export const metricsPortOption = (def: number) => ({
  metricsPort: opt.int('metrics.port', def, 'Port for /metrics and /healthz (0 picks a free port).', {
    min: 0,
    max: 65535,
  }),
  metricsHost: opt.string('metrics.host', '0.0.0.0', 'Address to serve /metrics and /healthz on.'),
});
