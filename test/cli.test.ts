/**
 * The `shoal` and `shoalctl` entry points as a user runs them: every option documented in --help and in
 * docs/configuration.md (generated, so it cannot drift), and a bad option or value refused with one line
 * that names it and a non-zero exit.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir, runCommand } from './kit/index.js';
import { shoalctlMain } from './support/shoal.js';

const shoalMain = fileURLToPath(new URL('../services/shoal/dist/main.js', import.meta.url));
const shoal = (args: string[], env: Record<string, string> = {}) =>
  runCommand(process.execPath, [shoalMain, ...args], { env, timeoutMs: 20_000 });

describe('the shoal entry point', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await makeTempDir('cli');
  });
  afterAll(() => removeTempDir(dir));

  it('keeps docs/configuration.md in step with the option definitions', async () => {
    const onDisk = await readFile(
      fileURLToPath(new URL('../docs/configuration.md', import.meta.url)),
      'utf8',
    );
    const services = await shoal(['config-reference']);
    const ctl = await runCommand(process.execPath, [shoalctlMain, 'config-reference'], { timeoutMs: 20_000 });
    expect(services.code).toBe(0);
    expect(ctl.code).toBe(0);
    // The file on disk is formatted by prettier; compare the facts, not the column padding.
    const facts = (text: string) =>
      text
        .split('\n')
        .map((line) =>
          line
            .replace(/\s*\|\s*/g, '|')
            .replace(/\|-+/g, '|-')
            .trim(),
        )
        .filter((line) => line !== '');
    expect(facts(onDisk)).toEqual(facts(services.stdout + ctl.stdout));
  });

  it('lists every service, and every option of each in its --help', async () => {
    const top = await shoal(['--help']);
    expect(top.code).toBe(0);
    const reference = (await shoal(['config-reference'])).stdout;
    const sections = reference.split(/^## `shoal ([\w-]+)`$/m).slice(1);
    expect(sections.length / 2).toBe(5);
    for (let i = 0; i < sections.length; i += 2) {
      const name = sections[i]!;
      const rows = [...sections[i + 1]!.matchAll(/^\| `[^`]+` \| `(--[a-z-]+)` \| `(SHOAL_[A-Z_]+)` \|/gm)];
      expect(rows.length).toBeGreaterThan(3);
      expect(top.stdout).toContain(name);
      const help = await shoal([name, '--help']);
      expect(help.code, help.stderr).toBe(0);
      for (const [, flag, env] of rows) {
        expect(help.stdout).toContain(flag);
        expect(help.stdout).toContain(env);
      }
    }
  });

  it('refuses an unknown command, option, value or file key with one line naming it', async () => {
    const file = join(dir, 'agent.yaml');
    await writeFile(file, 'cache:\n  dir: /tmp/x\n  sise: 3\n');
    const cases: [string[], Record<string, string>, RegExp][] = [
      [['frobnicate'], {}, /unknown command "frobnicate"/],
      [['agent', '--prot', '1'], {}, /--prot: unknown option; run "shoal agent --help"/],
      [['agent', '--port', 'abc'], {}, /--port: "abc" is not an integer/],
      [['scheduler', '--origin-per-chunk', '0'], {}, /--origin-per-chunk: 0 is below the minimum/],
      [['agent'], { SHOAL_SCHEDULER_TIMEOUT: 'soon' }, /SHOAL_SCHEDULER_TIMEOUT: "soon" is not a duration/],
      [['agent', '--config', file], {}, /agent\.yaml: cache\.sise: unknown key/],
      [['agent', '--registries', 'ftp://x'], {}, /--registries: "ftp:\/\/x" is not a valid registry/],
    ];
    for (const [args, env, pattern] of cases) {
      const result = await shoal(args, env);
      expect({ args, code: result.code }).toEqual({ args, code: 2 });
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toMatch(pattern);
    }
  });

  it('shoalctl names a bad option and an unreachable NATS in one line', async () => {
    const bad = await runCommand(process.execPath, [shoalctlMain, 'pulls', '--blob', 'latest'], {
      timeoutMs: 20_000,
    });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--blob: "latest" is not a valid digest/);
    const down = await runCommand(
      process.execPath,
      [shoalctlMain, 'events', '--nats-servers', 'nats://127.0.0.1:1', '--timeout', '500ms'],
      { timeoutMs: 20_000 },
    );
    expect(down.code).toBe(1);
    expect(down.stderr.trim().split('\n')).toHaveLength(1);
    expect(down.stderr).toMatch(/cannot reach NATS at nats:\/\/127\.0\.0\.1:1: check --nats-servers/);
  });
});
