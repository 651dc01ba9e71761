/**
 * `shoalctl status` against a running mesh: after a layer is pulled through an agent, the node shows
 * the bytes in its cache (from its heartbeat, through discovery) and the layer is among the rollouts.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  type BuiltImage,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  runCommand,
  startNats,
  startRegistry,
  waitFor,
} from './kit/index.js';
import {
  type ControlPlane,
  type ShoalService,
  shoalctlMain,
  startControlPlane,
  startPatientAgents,
} from './support/shoal.js';

const MiB = 1024 * 1024;

interface Status {
  nodes: { id: string; state: string; cacheBytes?: number; downloads?: number }[];
  totals: { nodes: number; ready: number; cacheBytes: number; downloads: number };
  registries: { registry: string; healthy: boolean }[];
  rollouts: {
    blob: string;
    repository: string;
    nodes: { started: number; finished: number; failed: number; running: number };
    fetched: { bytes: number; originBytes: number };
  }[];
}

describe('shoalctl status', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let agent: ShoalService;
  let image: BuiltImage;

  const status = (...args: string[]) =>
    runCommand(process.execPath, [shoalctlMain, 'status', `--nats-servers=${nats.url}`, ...args], {
      timeoutMs: 20_000,
    });

  beforeAll(async () => {
    dir = await makeTempDir('status');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
    image = await buildAndPushImage({ registry, repo: 'team/app', tag: 'v1', layers: 1, layerSize: 3 * MiB });
    control = await startControlPlane(nats.url, dir, [registry.url]);
    [agent] = (await startPatientAgents(nats.url, registry.url, dir, ['node-1'])) as [ShoalService];
  });

  afterAll(async () => {
    await agent?.stop();
    await control?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('shows the node with the bytes in its cache, and the layer among the recent rollouts', async () => {
    const layer = image.layers[0]!;
    const res = await fetch(`${agent.url}/v2/${image.repo}/blobs/${layer.digest}`);
    expect(res.status).toBe(200);
    const body = Buffer.from(await res.arrayBuffer());
    expect(`sha256:${createHash('sha256').update(body).digest('hex')}`).toBe(layer.digest);

    // The cache size reaches the node record with the agent's next heartbeat after the download.
    let report: Status | undefined;
    await waitFor(
      async () => {
        const result = await status('--output=json');
        if (result.code !== 0) throw new Error(result.stderr);
        report = JSON.parse(result.stdout) as Status;
        const node = report.nodes[0];
        return node?.cacheBytes === layer.size && node.downloads === 0 && report.rollouts.length > 0;
      },
      // Each probe starts a shoalctl process, which takes seconds on a loaded machine.
      { timeoutMs: 40_000, intervalMs: 200, what: 'status showing the cache and the rollout' },
    );
    expect(report!.nodes).toEqual([
      expect.objectContaining({ id: 'node-1', state: 'ready', cacheBytes: layer.size, downloads: 0 }),
    ]);
    expect(report!.totals).toMatchObject({ nodes: 1, ready: 1, cacheBytes: layer.size, downloads: 0 });
    expect(report!.registries).toEqual([expect.objectContaining({ registry: registry.host, healthy: true })]);
    expect(report!.rollouts).toHaveLength(1);
    expect(report!.rollouts[0]).toMatchObject({
      blob: layer.digest,
      repository: 'team/app',
      nodes: { started: 1, finished: 1, failed: 0, running: 0 },
      fetched: { bytes: layer.size, originBytes: layer.size },
    });

    const table = await status();
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.split('\n');
    expect(lines).toContain('NODES');
    expect(lines.find((l) => /^zone-a\s+vsw-1\s+node-1\s+ready\s/.test(l))).toMatch(/\s3\.0 MiB\s+0\s/);
    expect(table.stdout).toContain(`${registry.host}  ${registry.url}  registry`);
    const rollout = lines.find((l) => l.startsWith(`${layer.digest.slice(0, 19)}…`));
    expect(rollout, table.stdout).toMatch(
      /team\/app\s+3\.0 MiB\s+1\s+1\s+0\s+0\s+3\.0 MiB\s+origin 3\.0 MiB\s+-$/,
    );
  });
});
