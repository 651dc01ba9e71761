/**
 * Structured logging. Credentials are removed by configuration of the logger itself, so a careless
 * `log.info({ headers })` still cannot write a token or password.
 */
import { pino, type Logger as PinoLogger, type LoggerOptions } from 'pino';

export type Logger = PinoLogger;

export const redactPaths = [
  'authorization',
  'password',
  'pass',
  'token',
  'secret',
  'accessKeySecret',
  '*.authorization',
  '*.Authorization',
  '*.password',
  '*.pass',
  '*.token',
  '*.secret',
  '*.accessKeySecret',
  'req.headers.authorization',
  'req.headers.cookie',
  'headers.authorization',
  'headers.cookie',
  'res.headers["set-cookie"]',
];

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
