/**
 * Configuration files with every kind of mistake: whatever a file holds, loading it either succeeds or
 * stops with one line, a SHOAL_ERR_CONFIG that names the file and, where there is one, the key.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, opt } from '../src/config.js';
import { isShoalError } from '../src/errors.js';

const spec = {
  port: opt.int('port', 65001, 'Port.', { min: 0, max: 65535 }),
  cacheDir: opt.string('cache.dir', '/var/lib/shoal', 'Cache.'),
  cacheSize: opt.bytes('cache.size', '1GiB', 'Size.'),
  timeout: opt.duration('upstream.timeout', '30s', 'Timeout.', { minMs: 10 }),
  registries: opt.list('registries', [], 'Registries.', { pattern: /^https?:\/\/\S+$/, hint: 'URL' }),
  share: opt.bool('share', true, 'Share.'),
  level: opt.oneOf('log.level', ['info', 'debug'] as const, 'info', 'Level.'),
};

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-config-fuzz-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const key = fc.constantFrom(
  'port',
  'cache',
  'cache.dir',
  'dir',
  'size',
  'upstream',
  'timeout',
  'registries',
  'share',
  'log',
  'level',
  'prot',
  'cache.sise',
  '',
);
const scalar = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.string({ maxLength: 20 }),
  fc.constantFrom(
    '4MiB',
    '10 parsecs',
    '30s',
    'fast',
    '-1',
    '70000',
    'http://x',
    'ftp://x',
    'yes',
    'debug',
    'loud',
  ),
);
const value = fc.letrec((tie) => ({
  node: fc.oneof(
    { depthSize: 'small' },
    scalar,
    fc.array(tie('node'), { maxLength: 3 }),
    fc.dictionary(key, tie('node'), { maxKeys: 3 }),
  ),
})).node;

/** YAML text: structures made of right and wrong keys and values, and plain broken text. */
const files = fc.oneof(
  fc.dictionary(key, value, { maxKeys: 4 }).map((doc) => JSON.stringify(doc)),
  fc.dictionary(key, value, { maxKeys: 4 }).map((doc) =>
    Object.entries(doc)
      .map(([k, v]) => `${k}: ${JSON.stringify(v)}`)
      .join('\n'),
  ),
  fc.string({ maxLength: 80 }),
  fc.constantFrom(
    'port: [',
    'cache:\n  dir: /x\n   size: 3',
    '\t- a',
    'a: b: c',
    '{{{',
    '---\n---\nport: 1',
    'port: 1\nport: 2',
  ),
);

describe('configuration files', () => {
  it('load, or stop with one line naming the file and the key', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(files, async (text) => {
        const file = join(dir, `c${n++}.yaml`);
        await writeFile(file, text);
        try {
          loadConfig(spec, { argv: ['--config', file], env: {}, command: 'test' });
        } catch (err) {
          expect(isShoalError(err, 'SHOAL_ERR_CONFIG'), String(err)).toBe(true);
          const message = (err as Error).message;
          expect(message.split('\n'), message).toHaveLength(1);
          expect(message.startsWith(file) || message.startsWith(`config file ${file}`), message).toBe(true);
        }
      }),
      { numRuns: 400 },
    );
  });
});
