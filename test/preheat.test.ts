/**
 * `shoalctl preheat` against a real mesh: nats-server, docker-registry with htpasswd auth, the control
 * plane and three agents in two zones. The CLI reads the image from the registry with the user's
 * credentials and has the chosen agents fetch every blob through the mesh (the config, under
 * origin.directMax, from the registry), so pulls through them afterwards cost the registry nothing; the agents it did not choose stay cold.
 */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
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
  startProcess,
  startRegistry,
} from './kit/index.js';
import {
  bytesServed,
  type ControlPlane,
  meshSecret,
  metric,
  type ShoalService,
  shoalctlMain,
  startAgent,
  startControlPlane,
  waitForNodes,
} from './support/shoal.js';

const MiB = 1024 * 1024;
const USER = 'alice';
const PASSWORD = 'preheat-Pw-4b1e';
const WRONG_PASSWORD = 'wrong-Pw-9c2d';

describe('shoalctl preheat', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let image: BuiltImage;
  /** The image's blobs as the CLI preheats them: the config, then every layer. */
  let blobs: { digest: string; size: number }[];
  let total: number;
  const agents = new Map<string, ShoalService>();
  const placement = [
    ['n1', 'zone-a', 'vsw-1'],
    ['n2', 'zone-a', 'vsw-2'],
    ['n3', 'zone-b', 'vsw-3'],
  ] as const;

  /** Runs the built CLI with credentials from the environment, never from this machine's Docker config. */
  const shoalctl = (args: string[], env: Record<string, string> = {}) =>
    runCommand(process.execPath, [shoalctlMain, 'preheat', ...args, '--nats-servers', nats.url], {
      timeoutMs: 120_000,
      env: { HOME: dir, SHOAL_PASSWORD: undefined, SHOAL_PEER_SECRET: undefined, ...env },
    });
  const cacheBytes = async (id: string) => metric(await agents.get(id)!.metrics(), 'shoal_agent_cache_bytes');
  const basic = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;

  beforeAll(async () => {
    dir = await makeTempDir('preheat');
    [nats, registry] = await Promise.all([
      startNats(),
      startRegistry({ auth: { users: { [USER]: PASSWORD } } }),
    ]);
    image = await buildAndPushImage({ registry, repo: 'team/app', tag: 'v1', layers: 3, layerSize: 3 * MiB });
    blobs = [{ digest: image.config.digest, size: image.config.size }, ...image.layers];
    total = blobs.reduce((sum, b) => sum + b.size, 0);
    control = await startControlPlane(nats.url, dir);
    for (const [id, zone, vswitch] of placement) {
      agents.set(
        id,
        await startAgent({
          id,
          natsUrl: nats.url,
          registries: [registry.url],
          dir,
          zone,
          vswitch,
          // A loaded test machine must not turn a slow scheduler reply into a fallback to the registry.
          extraArgs: ['--scheduler-timeout=10s'],
        }),
      );
    }
    await waitForNodes(
      nats.url,
      placement.map(([id]) => id),
    );
  });

  afterAll(async () => {
    await Promise.allSettled([...agents.values()].map((a) => a.stop()));
    await control?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    if (dir !== undefined) await removeTempDir(dir);
  });

  it('says which zones and vSwitches exist when the selector matches no node', async () => {
    const result = await shoalctl([image.ref, '--nodes', 'zone=zone-x', '--username', USER], {
      SHOAL_PASSWORD: PASSWORD,
    });
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toEqual([
      'error: no node matches zone=zone-x; zones: zone-a, zone-b; vSwitches: zone-a/vsw-1, zone-a/vsw-2, zone-b/vsw-3',
    ]);
  });

  it('names the registry in one line when it refuses the password', async () => {
    const gets = registry.blobGets().length;
    const result = await shoalctl([image.ref, '--nodes', 'n1', '--username', USER], {
      SHOAL_PASSWORD: WRONG_PASSWORD,
      SHOAL_PEER_SECRET: meshSecret,
    });
    expect(result.code).toBe(1);
    const lines = result.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      new RegExp(`^error: registry ${registry.host.replace(/\./g, '\\.')} refused the credentials of alice`),
    );
    expect(result.stderr).not.toContain(WRONG_PASSWORD);
    expect(registry.blobGets().length).toBe(gets);
    expect(await cacheBytes('n1')).toBe(0);
  });

  it('warms every blob into the selected agents only, through the mesh', async () => {
    registry.clearRequests();
    const result = await shoalctl(
      [image.ref, '--nodes', 'n1,n2', '--username', USER, '--peer-secret', meshSecret],
      { SHOAL_PASSWORD: PASSWORD },
    );
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(result.stderr).toBe('');
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(
      `preheating ${image.ref} (4 blobs, ${(total / MiB).toFixed(1)} MiB) on 2 nodes: n1, n2`,
    );
    // Not a terminal: one line per blob once both nodes hold it, then the summary table.
    for (const blob of blobs) {
      expect(result.stdout).toMatch(
        new RegExp(`^${blob.digest.slice(0, 19)}… .* done on 2/2 nodes in `, 'm'),
      );
    }
    expect(result.stdout).toMatch(/^LAYER\s+KIND\s+SIZE\s+DONE\s+FAILED\s+TIME$/m);
    expect(lines.at(-1)).toMatch(/: 4 blobs \(.*\) on 2 nodes, every node holds every blob/);

    // Each selected agent holds every byte of every blob; the third holds nothing.
    expect(await cacheBytes('n1')).toBe(total);
    expect(await cacheBytes('n2')).toBe(total);
    expect(await cacheBytes('n3')).toBe(0);
    // Same zone: the two nodes shared the chunks instead of each downloading the whole image.
    const fromRegistry = blobs.reduce((sum, b) => sum + bytesServed(registry, b.digest), 0);
    expect(fromRegistry).toBeGreaterThanOrEqual(total);
    expect(fromRegistry).toBeLessThan(2 * total);
    const peerBytes = async (id: string) =>
      metric(await agents.get(id)!.metrics(), 'shoal_agent_fetch_bytes_total', { source: 'peer' });
    expect((await peerBytes('n1')) + (await peerBytes('n2'))).toBeGreaterThan(0);

    // The credential reached the agents but none of their logs.
    for (const [id, agent] of agents) {
      const log = agent.process.lines().join('\n');
      if (id !== 'n3') expect(log).toContain('preheat finished');
      for (const secret of [PASSWORD, basic.slice('Basic '.length)]) expect(log).not.toContain(secret);
    }

    // Pulling through them now costs the registry no blob bytes.
    for (const id of ['n1', 'n2']) {
      for (const blob of blobs) {
        const before = registry.blobGets(blob.digest).length;
        const res = await fetch(
          `${agents.get(id)!.url}/v2/team/app/blobs/${blob.digest}?ns=${encodeURIComponent(registry.host)}`,
          { headers: { authorization: basic }, signal: AbortSignal.timeout(15_000) },
        );
        const body = Buffer.from(await res.arrayBuffer());
        expect(res.status).toBe(200);
        expect(`sha256:${createHash('sha256').update(body).digest('hex')}`).toBe(blob.digest);
        expect(registry.blobGets(blob.digest).length, `${id} ${blob.digest}`).toBe(before);
      }
    }
  });

  it('cancels on every agent when interrupted, and exits non-zero with a summary', async () => {
    const slow = await buildAndPushImage({
      registry,
      repo: 'team/slow',
      tag: 'v1',
      layers: 2,
      layerSize: 4 * MiB,
    });
    // The registry sends the new image's blobs slowly enough to be interrupted midway.
    registry.setFault({ bytesPerSecond: 256 * 1024, match: /\/team\/slow\/blobs\//, methods: ['GET'] });
    try {
      const cli = await startProcess({
        name: 'shoalctl-preheat',
        cmd: process.execPath,
        args: [
          shoalctlMain,
          'preheat',
          slow.ref,
          '--nodes',
          'n3',
          '--username',
          USER,
          '--nats-servers',
          nats.url,
        ],
        env: { HOME: dir, SHOAL_PASSWORD: PASSWORD, SHOAL_PEER_SECRET: meshSecret },
        logFile: join(dir, 'shoalctl-preheat.log'),
      });
      await cli.waitForLine(/^preheating /, 30_000);
      // Let the agent start on the first chunks before the interrupt.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const exit = await cli.stop('SIGINT', 20_000);
      expect(exit.code).toBe(1);
      const output = cli.lines().join('\n');
      expect(output).toMatch(/^LAYER\s+KIND\s+SIZE\s+DONE\s+FAILED\s+TIME$/m);
      expect(output).toContain('  n3: cancelled');
      expect(output).toMatch(/^error: preheat of .*team\/slow:v1 cancelled with \d of 3 copies in place/m);
      // The agent was told: its job ended as cancelled rather than running on unobserved.
      await expect
        .poll(() =>
          agents
            .get('n3')!
            .process.lines()
            .some((l) => /"cancelled":true.*preheat finished/.test(l)),
        )
        .toBe(true);
    } finally {
      registry.setFault();
    }
  });

  it('warms another node with credentials from a Docker config, printing JSON lines', async () => {
    const dockerConfig = join(dir, 'docker-config.json');
    await writeFile(
      dockerConfig,
      JSON.stringify({
        auths: { [registry.host]: { auth: Buffer.from(`${USER}:${PASSWORD}`).toString('base64') } },
      }),
    );
    const result = await shoalctl(
      [image.ref, '--nodes', 'zone=zone-b', '--docker-config', dockerConfig, '--output', 'json'],
      {
        SHOAL_PEER_SECRET: meshSecret,
      },
    );
    expect(result.code, result.stderr).toBe(0);
    const records = result.stdout
      .trimEnd()
      .split('\n')
      .map(
        (line) =>
          JSON.parse(line) as { digest: string; kind: string; done: number; failed: number; nodes: number },
      );
    expect(records.map((r) => r.digest).sort()).toEqual(blobs.map((b) => b.digest).sort());
    for (const r of records) expect(r).toMatchObject({ nodes: 1, done: 1, failed: 0 });
    expect(records.filter((r) => r.kind === 'config')).toHaveLength(1);
    expect(await cacheBytes('n3')).toBeGreaterThanOrEqual(total);
  });

  it('names an agent it cannot reach', async () => {
    const n3 = agents.get('n3')!;
    // Killed, not stopped: discovery keeps listing the node until its heartbeats are overdue.
    await n3.stop('SIGKILL');
    agents.delete('n3');
    const result = await shoalctl([image.ref, '--nodes', 'n3', '--username', USER], {
      SHOAL_PASSWORD: PASSWORD,
      SHOAL_PEER_SECRET: meshSecret,
    });
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(
        new RegExp(
          `^error: preheat of .* incomplete on n3: agent n3 at ${n3.url.replace(/\./g, '\\.')} is unreachable \\(ECONNREFUSED\\)`,
        ),
      ),
    ]);
  });
});
