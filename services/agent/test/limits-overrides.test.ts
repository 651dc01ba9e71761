/**
 * Limits changed through the API outlive a restart: they are saved as overrides in the cache directory,
 * merged change by change, applied over the configuration at the next start, and dropped by a reset. A
 * file that cannot be used is set aside with a warning, and the configured limits apply.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AgentLimits,
  createLogger,
  limitsPath,
  loadConfig,
  type Logger,
  MESH_TOKEN_HEADER,
  peerTokenSource,
} from '@shoal/mesh';
import { type Agent, createAgent } from '../src/agent.js';
import { agentSpec } from '../src/config.js';
import {
  AgentLimiters,
  fileOverrideStore,
  LIMITS_FILE,
  type LimitsHooks,
  openAgentLimiters,
} from '../src/limits.js';
import { MemoryTier } from '../src/memory-tier.js';
import { ChunkStore } from '../src/store.js';

const MiB = 1024 * 1024;
const SECRET = 'overrides-secret';
const meshAuth = () => ({ [MESH_TOKEN_HEADER]: peerTokenSource(SECRET, 'shoalctl')() });

const configured: AgentLimits = {
  downloadRate: 10_000_000,
  downloadBurst: 8 * MiB,
  uploadRate: 0,
  uploadBurst: 4 * MiB,
  uploadsPerPeer: 4,
  registryRate: 0,
  registryBurst: 8 * MiB,
  share: true,
  cacheMaxSize: 1024 * MiB,
  memory: 0,
};

interface Logged {
  level: 'info' | 'warn';
  fields: Record<string, unknown>;
  message: string;
}

/** A logger that keeps what the limits code says, to check the warnings name the file. */
function recordingLog(): { log: Logger; lines: Logged[] } {
  const lines: Logged[] = [];
  const record = (level: Logged['level']) => (fields: Record<string, unknown>, message: string) =>
    lines.push({ level, fields, message });
  // The limits code uses only info and warn with (fields, message); a pino logger would need a stream.
  const log = { info: record('info'), warn: record('warn') } as unknown as Logger;
  return { log, lines };
}

let dir: string;
let counter = 0;
const stores: ChunkStore[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shoal-limits-'));
});
afterAll(async () => {
  await Promise.allSettled(stores.map((store) => store.close()));
  await rm(dir, { recursive: true, force: true });
});

/** A fresh cache directory with a store and memory tier sized by the configuration. */
async function cacheDir(): Promise<{ path: string; file: string; hooks: () => Promise<LimitsHooks> }> {
  const path = join(dir, `cache-${++counter}`);
  await mkdir(path, { recursive: true });
  return {
    path,
    file: join(path, LIMITS_FILE),
    hooks: async () => {
      const store = new ChunkStore(path, { maxBytes: configured.cacheMaxSize });
      stores.push(store);
      await store.open();
      return { store, memory: new MemoryTier(configured.memory) };
    },
  };
}

async function readSaved(file: string): Promise<{ version: number; overrides: Partial<AgentLimits> }> {
  return JSON.parse(await readFile(file, 'utf8')) as { version: number; overrides: Partial<AgentLimits> };
}

describe('limits overrides file', () => {
  it('saves a change and merges later ones into it, leaving no temporary file', async () => {
    const cache = await cacheDir();
    const { log } = recordingLog();
    const limits = await openAgentLimiters(
      configured,
      await cache.hooks(),
      fileOverrideStore(cache.file, log),
      log,
    );
    expect(limits.overridden()).toEqual([]);

    await limits.change({ downloadRate: 50_000_000, share: false });
    expect(await readSaved(cache.file)).toMatchObject({
      version: 1,
      overrides: { downloadRate: 50_000_000, share: false },
    });
    const view = await limits.change({ uploadsPerPeer: 2, downloadRate: 20_000_000 });
    expect(view).toMatchObject({ downloadRate: 20_000_000, uploadsPerPeer: 2, share: false });
    expect(view.overridden).toEqual(['downloadRate', 'uploadsPerPeer', 'share']);
    expect((await readSaved(cache.file)).overrides).toEqual({
      downloadRate: 20_000_000,
      share: false,
      uploadsPerPeer: 2,
    });
    expect((await readdir(cache.path)).filter((name) => name.startsWith(LIMITS_FILE))).toEqual([LIMITS_FILE]);
  });

  it('applies saved overrides over the configuration at start, and says which', async () => {
    const cache = await cacheDir();
    const first = recordingLog();
    const before = await openAgentLimiters(
      configured,
      await cache.hooks(),
      fileOverrideStore(cache.file, first.log),
      first.log,
    );
    await before.change({ downloadRate: 50_000_000, memory: 16 * MiB, cacheMaxSize: 512 * MiB });
    expect(first.lines).toEqual([]);

    const second = recordingLog();
    const hooks = await cache.hooks();
    const after = await openAgentLimiters(
      configured,
      hooks,
      fileOverrideStore(cache.file, second.log),
      second.log,
    );
    expect(after.current()).toEqual({
      ...configured,
      downloadRate: 50_000_000,
      memory: 16 * MiB,
      cacheMaxSize: 512 * MiB,
    });
    expect(after.download.limit.rate).toBe(50_000_000);
    expect(hooks.memory.stats().budget).toBe(16 * MiB);
    expect(hooks.store.capacity).toBe(512 * MiB);
    expect(after.overridden()).toEqual(['downloadRate', 'cacheMaxSize', 'memory']);
    expect(second.lines).toHaveLength(1);
    expect(second.lines[0]).toMatchObject({
      level: 'info',
      fields: {
        file: cache.file,
        overridden: {
          downloadRate: { configured: 10_000_000, override: 50_000_000 },
          cacheMaxSize: { configured: 1024 * MiB, override: 512 * MiB },
          memory: { configured: 0, override: 16 * MiB },
        },
      },
    });
    expect(second.lines[0]?.message).toContain('downloadRate, cacheMaxSize, memory');
  });

  it('drops every override on reset: the configured limits apply and the file is gone', async () => {
    const cache = await cacheDir();
    const { log } = recordingLog();
    const hooks = await cache.hooks();
    const limits = await openAgentLimiters(configured, hooks, fileOverrideStore(cache.file, log), log);
    await limits.change({ uploadRate: 5_000_000, uploadsPerPeer: 1, share: false, memory: 8 * MiB });
    const view = await limits.reset();
    expect(view).toEqual({ ...configured, overridden: [] });
    expect(limits.uploadsPerPeer.limit).toBe(4);
    expect(hooks.memory.stats().budget).toBe(0);
    await expect(readFile(cache.file)).rejects.toMatchObject({ code: 'ENOENT' });

    // A later start finds nothing to apply; a reset with nothing saved is harmless.
    const again = await openAgentLimiters(
      configured,
      await cache.hooks(),
      fileOverrideStore(cache.file, log),
      log,
    );
    expect(again.view()).toEqual({ ...configured, overridden: [] });
    expect(await again.reset()).toEqual({ ...configured, overridden: [] });
  });

  for (const [what, content, reason] of [
    ['not JSON', '{"version": 1, "overrides": {"downloadRate": 5', /not JSON/],
    ['of another version', '{"version": 2, "overrides": {}}', /version 2, expected 1/],
    ['holding a bad value', '{"version": 1, "overrides": {"uploadBurst": 10}}', /uploadBurst/],
    ['naming an unknown limit', '{"version": 1, "overrides": {"speed": 1}}', /speed: unknown limit/],
    ['not an object', '[1, 2]', /not a JSON object/],
  ] as const) {
    it(`sets aside a file ${what}, warns naming it, and starts with the configured limits`, async () => {
      const cache = await cacheDir();
      await writeFile(cache.file, content);
      const { log, lines } = recordingLog();
      const limits = await openAgentLimiters(
        configured,
        await cache.hooks(),
        fileOverrideStore(cache.file, log),
        log,
      );
      expect(limits.view()).toEqual({ ...configured, overridden: [] });
      expect(lines).toHaveLength(1);
      expect(lines[0]?.level).toBe('warn');
      expect(lines[0]?.message).toContain(`ignoring the limits overrides file ${cache.file}`);
      expect(lines[0]?.message).toMatch(reason);
      expect(lines[0]?.fields).toMatchObject({ file: cache.file, movedTo: `${cache.file}.bad` });
      expect(await readFile(`${cache.file}.bad`, 'utf8')).toBe(content);
      await expect(readFile(cache.file)).rejects.toMatchObject({ code: 'ENOENT' });

      // The next change starts a new file from nothing.
      await limits.change({ uploadsPerPeer: 3 });
      expect((await readSaved(cache.file)).overrides).toEqual({ uploadsPerPeer: 3 });
    });
  }

  it('changes nothing when the overrides cannot be saved', async () => {
    const cache = await cacheDir();
    const { log } = recordingLog();
    const unwritable = join(cache.path, 'missing-dir', LIMITS_FILE);
    const limits = new AgentLimiters(configured, await cache.hooks(), fileOverrideStore(unwritable, log));
    await expect(limits.change({ downloadRate: 1_000_000 })).rejects.toMatchObject({
      code: 'SHOAL_ERR_CACHE',
      message: expect.stringContaining(`could not save the limits overrides in ${unwritable}`) as unknown,
    });
    expect(limits.view()).toEqual({ ...configured, overridden: [] });
  });

  it('runs concurrent changes one after another, each saved', async () => {
    const cache = await cacheDir();
    const { log } = recordingLog();
    const limits = await openAgentLimiters(
      configured,
      await cache.hooks(),
      fileOverrideStore(cache.file, log),
      log,
    );
    await Promise.all([
      limits.change({ downloadRate: 1_000_000 }),
      limits.change({ uploadRate: 2_000_000 }),
      limits.change({ registryRate: 3_000_000 }),
    ]);
    expect((await readSaved(cache.file)).overrides).toEqual({
      downloadRate: 1_000_000,
      uploadRate: 2_000_000,
      registryRate: 3_000_000,
    });
  });
});

describe('limits API across a restart', () => {
  const agents: Agent[] = [];
  afterAll(async () => {
    await Promise.allSettled(agents.map((agent) => agent.stop()));
  });

  async function startAgent(cache: string): Promise<Agent> {
    const { config } = loadConfig(agentSpec, {
      argv: [
        '--node-id=overrides',
        `--cache-dir=${cache}`,
        '--registries=http://127.0.0.1:1',
        '--nats-servers=nats://127.0.0.1:1',
        `--peer-secret=${SECRET}`,
        '--download-rate=10MB',
        '--peer-uploads-per-peer=4',
      ],
      env: {},
      command: 'test',
    });
    const agent = await createAgent(config, createLogger('agent', 'silent'), () => 'http://127.0.0.1:1');
    agents.push(agent);
    return agent;
  }

  it('keeps a PUT through a restart, says what is overridden, and DELETE returns to the configuration', async () => {
    const cache = join(dir, 'agent-cache');
    let agent = await startAgent(cache);
    const put = await agent.app.inject({
      method: 'PUT',
      url: limitsPath,
      headers: meshAuth(),
      payload: { downloadRate: 50_000_000, share: false },
    });
    expect(put.statusCode).toBe(200);
    expect(put.json()).toMatchObject({ downloadRate: 50_000_000, share: false });
    await agent.stop();

    agent = await startAgent(cache);
    const read = await agent.app.inject({ method: 'GET', url: limitsPath, headers: meshAuth() });
    expect(read.json()).toMatchObject({
      downloadRate: 50_000_000,
      uploadsPerPeer: 4,
      share: false,
      overridden: ['downloadRate', 'share'],
    });
    expect(agent.limits.share).toBe(false);

    expect((await agent.app.inject({ method: 'DELETE', url: limitsPath })).statusCode).toBe(401);
    const reset = await agent.app.inject({ method: 'DELETE', url: limitsPath, headers: meshAuth() });
    expect(reset.statusCode).toBe(200);
    expect(reset.json()).toMatchObject({ downloadRate: 10_000_000, share: true, overridden: [] });
    await agent.stop();

    agent = await startAgent(cache);
    expect(agent.limits.view()).toMatchObject({ downloadRate: 10_000_000, share: true, overridden: [] });
  });

  it('starts despite a corrupt overrides file', async () => {
    const cache = join(dir, 'corrupt-cache');
    await mkdir(cache, { recursive: true });
    await writeFile(join(cache, LIMITS_FILE), 'garbage');
    const agent = await startAgent(cache);
    expect(agent.limits.view()).toMatchObject({ downloadRate: 10_000_000, overridden: [] });
    expect(await readFile(join(cache, `${LIMITS_FILE}.bad`), 'utf8')).toBe('garbage');
  });
});
