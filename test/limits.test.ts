/**
 * `shoalctl limits` against real agents: a change made with `--set` is in force at once and still after
 * the agent restarts on the same cache directory, `--reset` returns it to its configuration, bad input is
 * refused in one line naming the key, and a node that is unknown or unreachable is named.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentLimitsView, limitsPath, MESH_TOKEN_HEADER, peerTokenSource } from '@shoal/mesh';
import { makeTempDir, type NatsServer, removeTempDir, runCommand, startNats } from './kit/index.js';
import {
  type AgentOptions,
  meshSecret,
  type ShoalService,
  shoalctlMain,
  startAgent,
  startControlService,
  waitForNodes,
} from './support/shoal.js';

const MiB = 1024 * 1024;

describe('shoalctl limits', () => {
  let dir: string;
  let nats: NatsServer;
  let discovery: ShoalService;
  const agents = new Map<string, ShoalService>();
  const options = new Map<string, AgentOptions>();

  const shoalctl = (args: string[], env: Record<string, string | undefined> = {}) =>
    runCommand(process.execPath, [shoalctlMain, 'limits', '--nats-servers', nats.url, ...args], {
      timeoutMs: 60_000,
      env: { SHOAL_PEER_SECRET: meshSecret, ...env },
    });
  const getLimits = async (id: string): Promise<AgentLimitsView> => {
    const res = await fetch(`${agents.get(id)!.url}${limitsPath}`, {
      headers: { [MESH_TOKEN_HEADER]: peerTokenSource(meshSecret, 'test')() },
    });
    expect(res.status).toBe(200);
    return (await res.json()) as AgentLimitsView;
  };
  const cacheDir = (id: string) => join(dir, id, 'cache');
  /** The table's row for a node, split into its cells. */
  const row = (stdout: string, id: string) =>
    stdout
      .split('\n')
      .find((line) => line.startsWith(`${id} `))
      ?.split(/\s{2,}/);

  beforeAll(async () => {
    dir = await makeTempDir('limits');
    nats = await startNats();
    discovery = await startControlService('discovery', { natsUrl: nats.url, dir });
    for (const [id, zone] of [
      ['n1', 'zone-a'],
      ['n2', 'zone-b'],
    ] as const) {
      const agent: AgentOptions = {
        id,
        natsUrl: nats.url,
        registries: ['http://127.0.0.1:1'],
        dir,
        zone,
        extraArgs: ['--download-rate=10MB', '--peer-uploads-per-peer=4', '--cache-memory=16MiB'],
      };
      const started = await startAgent(agent);
      agents.set(id, started);
      // A restart comes back on the same port and cache directory.
      options.set(id, { ...agent, port: started.port });
    }
    await waitForNodes(nats.url, ['n1', 'n2']);
  });

  afterAll(async () => {
    await Promise.allSettled([...agents.values()].map((a) => a.stop()));
    await discovery?.stop();
    await nats?.stop();
    if (dir !== undefined) await removeTempDir(dir);
  });

  it('shows every node with its configured limits', async () => {
    const result = await shoalctl([]);
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(
      /^NODE\s+DOWNLOAD \(BURST\)\s+REGISTRY \(BURST\)\s+UPLOAD \(BURST\)\s+PER PEER\s+SHARE\s+CACHE\s+MEMORY$/,
    );
    for (const id of ['n1', 'n2']) {
      expect(row(result.stdout, id)).toEqual([
        id,
        '10 MB/s (8 MiB)',
        'unlimited',
        'unlimited',
        '4',
        'yes',
        'unlimited',
        '16 MiB',
      ]);
    }
    expect(result.stdout).not.toContain('*');
  });

  it('keeps a change made with --set in force after the agent restarts', async () => {
    const set = await shoalctl([
      '--nodes',
      'n1',
      '--set',
      'downloadRate=50MB/s,uploadsPerPeer=2,share=false',
    ]);
    expect(set.code, set.stderr).toBe(0);
    expect(row(set.stdout, 'n1')).toEqual([
      'n1',
      '50 MB/s* (8 MiB)',
      'unlimited',
      'unlimited',
      '2*',
      'no*',
      'unlimited',
      '16 MiB',
    ]);
    expect(set.stdout).toContain('* set through the limits API instead of the configuration');
    expect(await getLimits('n1')).toMatchObject({
      downloadRate: 50_000_000,
      uploadsPerPeer: 2,
      share: false,
      overridden: ['downloadRate', 'uploadsPerPeer', 'share'],
    });
    // The other node was not chosen, and is as configured.
    expect(await getLimits('n2')).toMatchObject({ downloadRate: 10_000_000, share: true, overridden: [] });
    const saved = JSON.parse(await readFile(join(cacheDir('n1'), 'limits.json'), 'utf8')) as unknown;
    expect(saved).toMatchObject({
      version: 1,
      overrides: { downloadRate: 50_000_000, uploadsPerPeer: 2, share: false },
    });

    // A second change is merged with the first.
    const more = await shoalctl(['--nodes', 'n1', '--set', 'memory=32MiB']);
    expect(more.code, more.stderr).toBe(0);
    expect(row(more.stdout, 'n1')?.at(-1)).toBe('32 MiB*');

    await agents.get('n1')!.stop();
    const restarted = await startAgent(options.get('n1')!);
    agents.set('n1', restarted);
    await waitForNodes(nats.url, ['n1']);

    const limits = await getLimits('n1');
    expect(limits).toMatchObject({
      downloadRate: 50_000_000,
      uploadsPerPeer: 2,
      share: false,
      memory: 32 * MiB,
      overridden: ['downloadRate', 'uploadsPerPeer', 'share', 'memory'],
    });
    expect(
      restarted.process
        .lines()
        .filter((line) => line.includes('override the configuration'))
        .join('\n'),
    ).toContain('downloadRate, uploadsPerPeer, share, memory');

    const read = await shoalctl(['--nodes', 'n1', '--output', 'json']);
    expect(read.code, read.stderr).toBe(0);
    expect(JSON.parse(read.stdout)).toEqual({
      node: 'n1',
      url: restarted.url,
      limits: {
        downloadRate: 50_000_000,
        downloadBurst: 8 * MiB,
        uploadRate: 0,
        uploadBurst: 4 * MiB,
        uploadsPerPeer: 2,
        registryRate: 0,
        registryBurst: 8 * MiB,
        share: false,
        cacheMaxSize: 0,
        memory: 32 * MiB,
      },
      overridden: ['downloadRate', 'uploadsPerPeer', 'share', 'memory'],
    });
    const table = await shoalctl(['--nodes', 'zone=zone-a']);
    expect(table.code, table.stderr).toBe(0);
    expect(row(table.stdout, 'n1')).toEqual([
      'n1',
      '50 MB/s* (8 MiB)',
      'unlimited',
      'unlimited',
      '2*',
      'no*',
      'unlimited',
      '32 MiB*',
    ]);
    expect(row(table.stdout, 'n2')).toBeUndefined();
  });

  it('returns to the configured limits with --reset, also after a restart', async () => {
    const reset = await shoalctl(['--nodes', 'n1', '--reset']);
    expect(reset.code, reset.stderr).toBe(0);
    expect(row(reset.stdout, 'n1')).toEqual([
      'n1',
      '10 MB/s (8 MiB)',
      'unlimited',
      'unlimited',
      '4',
      'yes',
      'unlimited',
      '16 MiB',
    ]);
    expect(reset.stdout).not.toContain('*');
    await expect(readFile(join(cacheDir('n1'), 'limits.json'))).rejects.toMatchObject({ code: 'ENOENT' });

    await agents.get('n1')!.stop();
    agents.set('n1', await startAgent(options.get('n1')!));
    await waitForNodes(nats.url, ['n1']);
    expect(await getLimits('n1')).toMatchObject({
      downloadRate: 10_000_000,
      uploadsPerPeer: 4,
      share: true,
      memory: 16 * MiB,
      overridden: [],
    });
  });

  it('refuses bad --set input in one line naming the key, before asking any node', async () => {
    for (const [setting, message] of [
      ['downloadRate=fast', /^error: --set downloadRate: "fast" is not a rate: write bytes per second like/],
      ['speed=10MB/s', /^error: --set speed: unknown limit; the limits are downloadRate, /],
      ['uploadBurst=1KiB', /^error: --set uploadBurst: 1KiB is below the minimum burst of 64\.0 KiB$/],
      ['share=maybe', /^error: --set share: "maybe" is not true or false$/],
    ] as const) {
      const result = await shoalctl(['--nodes', 'n1', '--set', setting]);
      expect(result.code, setting).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr.trim().split('\n')).toEqual([expect.stringMatching(message)]);
    }
    const both = await shoalctl(['--set', 'share=false', '--reset']);
    expect(both.code).toBe(2);
    expect(both.stderr.trim()).toBe('error: --set and --reset cannot go together: run one, then the other');
    expect(await getLimits('n1')).toMatchObject({ share: true, overridden: [] });
  });

  it('names a node that is not in the mesh', async () => {
    const result = await shoalctl(['--nodes', 'n1,n9', '--set', 'share=false']);
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toEqual(['error: no node n9 in the mesh; its nodes are n1, n2']);
    const zone = await shoalctl(['--nodes', 'zone=zone-x']);
    expect(zone.code).toBe(2);
    expect(zone.stderr.trim()).toMatch(/^error: no node matches zone=zone-x; zones: zone-a, zone-b;/);
    expect(await getLimits('n1')).toMatchObject({ share: true, overridden: [] });
  });

  it('says which node it cannot reach, shows the others, and exits non-zero', async () => {
    const n2 = agents.get('n2')!;
    // Killed, not stopped: discovery keeps listing the node until its heartbeats are overdue.
    await n2.stop('SIGKILL');
    agents.delete('n2');
    const result = await shoalctl([]);
    expect(result.code).toBe(1);
    expect(row(result.stdout, 'n1')?.[1]).toBe('10 MB/s (8 MiB)');
    expect(result.stdout).toContain('1 of 2 nodes failed:');
    expect(result.stdout).toMatch(
      new RegExp(`^  n2: agent n2 at ${n2.url.replace(/\./g, '\\.')} is unreachable \\(ECONNREFUSED\\)`, 'm'),
    );
    expect(result.stderr.trim()).toBe('error: could not read the limits of n2 (1 of 2 nodes)');

    const set = await shoalctl(['--set', 'uploadsPerPeer=3', '--output', 'json']);
    expect(set.code).toBe(1);
    const lines = set.stdout
      .trimEnd()
      .split('\n')
      .map((line) => JSON.parse(line) as { node: string; error?: string; overridden?: string[] });
    expect(lines.map((l) => l.node)).toEqual(['n1', 'n2']);
    expect(lines[0]?.overridden).toEqual(['uploadsPerPeer']);
    expect(lines[1]?.error).toMatch(/is unreachable \(ECONNREFUSED\)/);
    expect(set.stderr.trim()).toBe(
      'error: could not change the limits of n2 (1 of 2 nodes); 1 other node did',
    );
  });

  it('asks for the mesh secret when it has none', async () => {
    const result = await shoalctl(['--nodes', 'n1'], { SHOAL_PEER_SECRET: undefined });
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/n1: agent n1 at .* wants a mesh token: pass --peer-secret/);
  });
});
