/**
 * Structured logging. Credentials are removed by configuration of the logger itself, so a careless
 * `log.info({ headers })` still cannot write a token or password.
 */
import { pino, type Logger as PinoLogger, type LoggerOptions } from 'pino';

export type Logger = PinoLogger;

const secretKeys = [
  'authorization',
  'Authorization',
  'proxy-authorization',
  'cookie',
  'password',
  'pass',
  'token',
  'secret',
  'accessKeySecret',
];

/**
 * Every place a secret may sit in a log object, up to three levels deep (e.g. err.request.headers),
 * for any spelling of the header name pino sees.
 */
export const redactPaths = secretKeys
  .flatMap((key) => {
    const k = /^[A-Za-z_]+$/.test(key) ? key : `["${key}"]`;
    const dot = k.startsWith('[') ? '' : '.';
    return [k, `*${dot}${k}`, `*.*${dot}${k}`, `*.*.*${dot}${k}`];
  })
  .concat(['res.headers["set-cookie"]']);

export function loggerOptions(service: string, level: string): LoggerOptions {
  return {
    name: service,
    level,
    redact: { paths: redactPaths, censor: '[redacted]' },
    base: { service },
  };
}

export function createLogger(service: string, level = 'info'): Logger {
  return pino(loggerOptions(service, level));
}
