/** Options every service shares: where NATS is, how to log, where to serve metrics. */
import { opt } from './config.js';

export const natsOptions = {
  natsServers: opt.list('nats.servers', ['nats://127.0.0.1:4222'], 'NATS server URLs (JetStream enabled).'),
  natsUser: opt.string('nats.user', '', 'NATS user name, if the server requires one.'),
  natsPassword: opt.string('nats.password', '', 'NATS password. Prefer the environment variable to a flag.', {
    secret: true,
  }),
  natsToken: opt.string('nats.token', '', 'NATS authentication token.', { secret: true }),
};

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

export const metricsPortOption = (def: number) => ({
  metricsPort: opt.int('metrics.port', def, 'Port for /metrics and /healthz (0 picks a free port).', {
    min: 0,
    max: 65535,
  }),
  metricsHost: opt.string('metrics.host', '0.0.0.0', 'Address to serve /metrics and /healthz on.'),
});
