/**
 * `shoalctl nodes` against a running mesh: agents registering themselves with their zone and vSwitch
 * through discovery, listed by zone and vSwitch, and an agent that stops heartbeating shown as silent.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakeKube, makeAgentPod, makeNode, startFakeKube } from '@shoal/discovery/testing';
import { makeTempDir, type NatsServer, removeTempDir, runCommand, startNats } from './kit/index.js';
import {
  type ShoalService,
  shoalctlMain,
  startAgent,
  startControlService,
  waitForNodes,
} from './support/shoal.js';

describe('shoalctl nodes', () => {
  let dir: string;
  let nats: NatsServer;
  let discovery: ShoalService;
  const agents: ShoalService[] = [];
  const shoalctl = (...args: string[]) =>
    runCommand(process.execPath, [shoalctlMain, 'nodes', '--nats-servers', nats.url, ...args], {
      timeoutMs: 20_000,
    });

  beforeAll(async () => {
    dir = await makeTempDir('nodes');
    nats = await startNats();
    discovery = await startControlService('discovery', { natsUrl: nats.url, dir });
    const placed = [
      ['n1', 'zone-b', 'vsw-3'],
      ['n2', 'zone-a', 'vsw-2'],
      ['n3', 'zone-a', 'vsw-1'],
      ['n4', 'zone-a', 'vsw-1'],
    ] as const;
    for (const [id, zone, vswitch] of placed)
      agents.push(
        await startAgent({ id, natsUrl: nats.url, registries: ['http://127.0.0.1:1'], dir, zone, vswitch }),
      );
    await waitForNodes(
      nats.url,
      placed.map(([id]) => id),
    );
  });

  afterAll(async () => {
    await Promise.allSettled(agents.map((a) => a.stop()));
    await discovery?.stop();
    await nats?.stop();
    await removeTempDir(dir);
  });

  it('lists every node by zone and vSwitch with its agent', async () => {
    const result = await shoalctl();
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ZONE\s+VSWITCH\s+NODE\s+AGENT\s+ADDRESS\s+POOL\s+UP\s+LAST HEARTBEAT$/);
    // Zone and vSwitch are printed where they change.
    expect(lines.slice(1, 5)).toEqual([
      expect.stringMatching(/^zone-a\s+vsw-1\s+n3\s+ready\s+http:\/\/127\.0\.0\.1:\d+\s+-\s+\S+\s+\S+ ago$/),
      expect.stringMatching(/^\s+n4\s+ready\s/),
      expect.stringMatching(/^\s+vsw-2\s+n2\s+ready\s/),
      expect.stringMatching(/^zone-b\s+vsw-3\s+n1\s+ready\s/),
    ]);
    expect(result.stdout).toContain(agents[0]!.url);
    expect(lines.at(-1)).toBe('4 nodes in 2 zones and 3 vSwitches');
  });

  it('says no node is registered where discovery has never run', async () => {
    const empty = await startNats();
    try {
      const result = await runCommand(
        process.execPath,
        [shoalctlMain, 'nodes', '--nats-servers', empty.url],
        { timeoutMs: 20_000 },
      );
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout.trim()).toBe('no nodes registered');
    } finally {
      await empty.stop();
    }
  });

  it('shows an agent that stopped heartbeating as silent, before discovery removes it', async () => {
    await agents[0]!.process.stop('SIGKILL', 5_000);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    const result = await shoalctl('--silent-after', '1s', '--output', 'json');
    expect(result.code, result.stderr).toBe(0);
    const views = result.stdout
      .trimEnd()
      .split('\n')
      .map(
        (line) =>
          JSON.parse(line) as { id: string; zone: string; vswitch: string; state: string; url: string },
      );
    expect(views.map((v) => [v.id, v.zone, v.vswitch, v.state])).toEqual([
      ['n3', 'zone-a', 'vsw-1', 'ready'],
      ['n4', 'zone-a', 'vsw-1', 'ready'],
      ['n2', 'zone-a', 'vsw-2', 'ready'],
      ['n1', 'zone-b', 'vsw-3', 'silent'],
    ]);
    const table = await shoalctl('--silent-after', '1s');
    expect(table.stdout).toContain('4 nodes in 2 zones and 3 vSwitches; 1 silent');
  });
});

describe('shoalctl nodes with discovery reading Kubernetes', () => {
  let dir: string;
  let nats: NatsServer;
  let kube: FakeKube;
  let discovery: ShoalService;
  let agent: ShoalService;
  const labels = (zone: string, pool: string) => ({
    'topology.kubernetes.io/zone': zone,
    'topology.shoal.io/vswitch': `vsw-${zone}`,
    'alibabacloud.com/nodepool-id': pool,
  });

  beforeAll(async () => {
    dir = await makeTempDir('nodes-kube');
    [nats, kube] = await Promise.all([startNats(), startFakeKube({ token: 'discovery-token' })]);
    kube.addNode(makeNode('cn-a.10.0.0.1', { labels: labels('zone-a', 'np-edge') }));
    kube.addNode(makeNode('cn-a.10.0.0.2', { labels: labels('zone-a', 'np-edge') }));
    kube.addNode(
      makeNode('cn-a.10.0.0.3', {
        labels: labels('zone-b', 'np-edge'),
        taints: [{ key: 'dedicated', value: 'gpu', effect: 'NoSchedule' }],
      }),
    );
    kube.addNode(makeNode('cn-a.10.0.0.4', { labels: labels('zone-b', 'np-general') }));
    kube.addPod(makeAgentPod('shoal-agent-1', 'cn-a.10.0.0.1', { namespace: 'shoal' }));
    kube.addPod(
      makeAgentPod('shoal-agent-2', 'cn-a.10.0.0.2', { namespace: 'shoal', state: 'crashloop', restarts: 5 }),
    );
    const kubeconfig = join(dir, 'kubeconfig');
    await writeFile(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        // Plain HTTP, which the client refuses unless TLS checks are off: the fake speaks no TLS.
        `clusters: [{ name: fake, cluster: { server: "${kube.url}", insecure-skip-tls-verify: true } }]`,
        'users: [{ name: discovery, user: { token: discovery-token } }]',
        'contexts: [{ name: fake, context: { cluster: fake, user: discovery } }]',
        'current-context: fake',
      ].join('\n'),
    );
    discovery = await startControlService('discovery', {
      natsUrl: nats.url,
      dir,
      extraArgs: [
        '--topology-source=kubernetes',
        `--kubernetes-kubeconfig=${kubeconfig}`,
        '--kubernetes-pool=np-edge',
        '--kubernetes-agent-namespace=shoal',
      ],
    });
    // The agent names itself as Kubernetes names the node, and says it is somewhere else: the labels win.
    agent = await startAgent({
      id: 'cn-a.10.0.0.1',
      natsUrl: nats.url,
      registries: ['http://127.0.0.1:1'],
      dir,
      zone: 'wrong-zone',
    });
    await waitForNodes(nats.url, ['cn-a-10-0-0-1']);
  });

  afterAll(async () => {
    await agent?.stop();
    await discovery?.stop();
    await Promise.allSettled([kube?.close(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('lists every node of the cluster, and says why three have no working agent', async () => {
    const result = await runCommand(process.execPath, [shoalctlMain, 'nodes', '--nats-servers', nats.url], {
      timeoutMs: 20_000,
    });
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.trimEnd().split('\n');
    expect(lines.slice(1, 5)).toEqual([
      expect.stringMatching(
        /^zone-a\s+vsw-zone-a\s+cn-a-10-0-0-1\s+ready\s+http:\/\/127\.0\.0\.1:\d+\s+np-edge\s/,
      ),
      expect.stringMatching(/^\s+cn-a-10-0-0-2\s+crashloop\s+-\s+np-edge\s+-\s+-$/),
      expect.stringMatching(/^zone-b\s+vsw-zone-b\s+cn-a-10-0-0-3\s+missing\s+-\s+np-edge\s/),
      expect.stringMatching(/^\s+cn-a-10-0-0-4\s+excluded\s+-\s+np-general\s/),
    ]);
    expect(lines).toContain('4 nodes in 2 zones and 2 vSwitches; 3 without a working agent:');
    expect(result.stdout).toMatch(/cn-a-10-0-0-2: agent pod shoal-agent-2 is crash-looping \(5 restarts/);
    expect(result.stdout).toMatch(/cn-a-10-0-0-3: .*taint dedicated=gpu:NoSchedule/);
    expect(result.stdout).toMatch(
      /cn-a-10-0-0-4: not in node pool "np-general" \(mesh restricted to pool "np-edge"\)/,
    );
  });
});
