import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { envName, flagName, loadConfig, opt, renderHelp, renderReference } from '../src/config.js';
import { isShoalError } from '../src/errors.js';

const spec = {
  port: opt.int('port', 65001, 'Port.', { min: 0, max: 65535 }),
  cacheDir: opt.string('cache.dir', '/var/lib/shoal', 'Cache directory.'),
  timeoutMs: opt.duration('scheduler.timeout', '1s', 'Timeout.'),
  chunkSize: opt.bytes('chunk.size', '4MiB', 'Chunk size.'),
  share: opt.bool('share', true, 'Share chunks.'),
  registries: opt.list('registries', [], 'Registries.'),
  level: opt.oneOf('log.level', ['info', 'debug'] as const, 'info', 'Level.'),
  password: opt.string('nats.password', '', 'Password.', { secret: true }),
};

const load = (argv: string[], env: Record<string, string> = {}) =>
  loadConfig(spec, { argv, env, command: 'shoal test' });

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected an error');
}

describe('config', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-config-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('derives flag and environment names from the key', () => {
    expect(flagName('cache.dir')).toBe('--cache-dir');
    expect(envName('cache.dir')).toBe('SHOAL_CACHE_DIR');
    expect(flagName('chunk.minSize')).toBe('--chunk-min-size');
    expect(envName('chunk.minSize')).toBe('SHOAL_CHUNK_MIN_SIZE');
  });

  it('uses defaults, converted to base units, and freezes the result', () => {
    const { config } = load([]);
    expect(config).toMatchObject({ port: 65001, timeoutMs: 1000, chunkSize: 4 * 1024 * 1024, share: true });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('prefers flags over environment over the file', async () => {
    const file = join(dir, 'a.yaml');
    await writeFile(
      file,
      'port: 1000\ncache:\n  dir: /from/file\nscheduler:\n  timeout: 250ms\nregistries: [http://a:1, http://b:2]\n',
    );
    const { config } = load(['--config', file, '--port', '3000'], {
      SHOAL_PORT: '2000',
      SHOAL_CACHE_DIR: '/from/env',
    });
    expect(config.port).toBe(3000);
    expect(config.cacheDir).toBe('/from/env');
    expect(config.timeoutMs).toBe(250);
    expect(config.registries).toEqual(['http://a:1', 'http://b:2']);
  });

  it('accepts --flag=value, boolean flags and --no-flag', () => {
    expect(load(['--port=42', '--no-share']).config).toMatchObject({ port: 42, share: false });
    expect(load(['--share']).config.share).toBe(true);
    expect(load(['--registries', 'http://a:1,http://b:2']).config.registries).toEqual([
      'http://a:1',
      'http://b:2',
    ]);
  });

  it('names the unknown flag', () => {
    const err = errorOf(() => load(['--prot', '1']));
    expect(isShoalError(err, 'SHOAL_ERR_CONFIG')).toBe(true);
    expect(err.message).toContain('--prot');
    expect(err.message).toContain('shoal test --help');
  });

  it('names the bad value and its source', () => {
    expect(errorOf(() => load(['--port', 'abc'])).message).toMatch(/--port: "abc" is not an integer/);
    expect(errorOf(() => load(['--port', '70000'])).message).toMatch(
      /--port: 70000 is above the maximum 65535/,
    );
    expect(errorOf(() => load([], { SHOAL_SCHEDULER_TIMEOUT: 'soon' })).message).toMatch(
      /SHOAL_SCHEDULER_TIMEOUT: "soon" is not a duration/,
    );
    expect(errorOf(() => load(['--log-level', 'loud'])).message).toMatch(/not one of info, debug/);
    expect(errorOf(() => load(['--port'])).message).toMatch(/--port: needs a value/);
  });

  it('names an unknown key in the file', async () => {
    const file = join(dir, 'b.yaml');
    await writeFile(file, 'cache:\n  dri: /x\n');
    expect(errorOf(() => load(['--config', file])).message).toMatch(/b\.yaml: cache\.dri: unknown key/);
  });

  it('never prints a secret in help or the reference', () => {
    const help = renderHelp('shoal test', 'Test.', spec);
    expect(help).toContain('--nats-password');
    expect(help).toContain('SHOAL_NATS_PASSWORD');
    const reference = renderReference([{ command: 'shoal test', summary: 'Test.', spec }]);
    expect(reference).toContain('| `cache.dir` | `--cache-dir` | `SHOAL_CACHE_DIR` |');
  });
});
