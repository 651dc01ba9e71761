/** Kubernetes node topology: the reasons computed for one node, and the informers against a fake API server over HTTP. */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig, type V1Pod, type V1Toleration } from '@kubernetes/client-node';
import { createLogger, type Logger, ShoalError } from '@shoal/mesh';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  createKubeTopology,
  type KubeTopology,
  type KubeTopologyOptions,
  type NodeTopology,
  nodeTopology,
} from '../src/kubernetes.js';
import {
  agentSelector,
  daemonSetTolerations,
  type FakeKube,
  makeAgentPod,
  makeNode,
  startFakeKube,
} from '../src/testing/index.js';

const labelOptions = {
  zoneLabel: 'topology.kubernetes.io/zone',
  regionLabel: 'topology.kubernetes.io/region',
  vswitchLabel: 'shoal.io/vswitch',
  poolLabel: 'alibabacloud.com/nodepool-id',
  pool: '',
};

function placed(zone: string, pool = 'np-a'): Record<string, string> {
  return {
    'topology.kubernetes.io/zone': zone,
    'topology.kubernetes.io/region': 'cn-hangzhou',
    'shoal.io/vswitch': `vsw-${zone}`,
    'alibabacloud.com/nodepool-id': pool,
  };
}

async function waitFor(condition: () => boolean, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms: ${condition.toString()}`);
    await sleep(5);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('nodeTopology', () => {
  const gpuTaint = { key: 'dedicated', value: 'gpu', effect: 'NoSchedule' };

  it('reads the topology from the labels and reports a running agent without a reason', () => {
    const node = makeNode('n1', { labels: placed('cn-hangzhou-h') });
    const pod = makeAgentPod('shoal-agent-a', 'n1', { restarts: 2 });
    expect(nodeTopology(node, [pod], labelOptions, daemonSetTolerations)).toEqual({
      name: 'n1',
      zone: 'cn-hangzhou-h',
      region: 'cn-hangzhou',
      vswitch: 'vsw-cn-hangzhou-h',
      pool: 'np-a',
      ready: true,
      inMesh: true,
      agent: { state: 'running', pod: 'shoal-agent-a', restarts: 2, ready: true },
    });
  });

  it('leaves absent labels empty', () => {
    const topology = nodeTopology(makeNode('bare'), [], labelOptions, []);
    expect(topology).toMatchObject({ zone: '', region: '', vswitch: '', pool: '' });
  });

  it('keeps a node of another pool out of the mesh, first of all reasons', () => {
    const options = { ...labelOptions, pool: 'np-b' };
    const running = makeAgentPod('shoal-agent-a', 'n1');
    const other = nodeTopology(makeNode('n1', { labels: placed('z1', 'np-a') }), [running], options, []);
    expect(other.inMesh).toBe(false);
    expect(other.agent.state).toBe('running');
    expect(other.reason).toBe('not in node pool "np-a" (mesh restricted to pool "np-b")');

    const unlabelled = nodeTopology(makeNode('n2'), [], options, undefined);
    expect(unlabelled.agent.state).toBe('missing');
    expect(unlabelled.reason).toBe(
      'has no node pool label "alibabacloud.com/nodepool-id" (mesh restricted to pool "np-b")',
    );

    const member = nodeTopology(makeNode('n3', { labels: placed('z1', 'np-b') }), [running], options, []);
    expect(member.inMesh).toBe(true);
    expect(member.reason).toBeUndefined();
  });

  it('reports a crash-looping agent with its restarts and last exit', () => {
    const pod = makeAgentPod('shoal-agent-x', 'n1', { state: 'crashloop', restarts: 7 });
    const topology = nodeTopology(makeNode('n1'), [pod], labelOptions, daemonSetTolerations);
    expect(topology.agent).toEqual({ state: 'crashloop', pod: 'shoal-agent-x', restarts: 7, ready: false });
    expect(topology.reason).toBe(
      'agent pod shoal-agent-x is crash-looping (7 restarts; last exit: Error, code 1)',
    );
  });

  it('reports a pending agent with the reason and message it waits on', () => {
    const pulling = makeAgentPod('shoal-agent-x', 'n1', { state: 'pending' });
    const topology = nodeTopology(makeNode('n1'), [pulling], labelOptions, daemonSetTolerations);
    expect(topology.agent.state).toBe('starting');
    expect(topology.reason).toBe(
      'agent pod shoal-agent-x is waiting: ImagePullBackOff (Back-off pulling image "registry.example/shoal/agent:test")',
    );

    const creating = makeAgentPod('shoal-agent-y', 'n1', {
      state: 'pending',
      waiting: { reason: 'ContainerCreating' },
    });
    expect(nodeTopology(makeNode('n1'), [creating], labelOptions, []).reason).toBe(
      'agent pod shoal-agent-y is waiting: ContainerCreating',
    );
  });

  it('reports an agent that cannot be scheduled with the scheduler message', () => {
    const pod = makeAgentPod('shoal-agent-x', '', { state: 'pending' });
    pod.status = {
      phase: 'Pending',
      conditions: [
        {
          type: 'PodScheduled',
          status: 'False',
          reason: 'Unschedulable',
          message: '0/3 nodes are available: 1 Insufficient cpu.',
        },
      ],
    };
    const topology = nodeTopology(makeNode('n1'), [pod], labelOptions, []);
    expect(topology.agent.state).toBe('starting');
    expect(topology.reason).toBe(
      'agent pod shoal-agent-x cannot be scheduled: 0/3 nodes are available: 1 Insufficient cpu.',
    );
  });

  it('reports a failed agent pod', () => {
    const pod = makeAgentPod('shoal-agent-x', 'n1');
    pod.status = { phase: 'Failed', reason: 'Evicted', message: 'The node was low on resource: memory.' };
    const topology = nodeTopology(makeNode('n1'), [pod], labelOptions, []);
    expect(topology.agent.state).toBe('failed');
    expect(topology.reason).toBe(
      'agent pod shoal-agent-x failed (Evicted: The node was low on resource: memory.)',
    );
  });

  it('reports a running agent that is not ready as starting', () => {
    const pod = makeAgentPod('shoal-agent-x', 'n1');
    pod.status!.conditions = [
      {
        type: 'Ready',
        status: 'False',
        reason: 'ContainersNotReady',
        message: 'containers with unready status: [agent]',
      },
    ];
    const topology = nodeTopology(makeNode('n1'), [pod], labelOptions, []);
    expect(topology.agent).toMatchObject({ state: 'starting', ready: false });
    expect(topology.reason).toBe(
      'agent pod shoal-agent-x is running but not ready (containers with unready status: [agent])',
    );
  });

  it('speaks for the newest agent pod that is not being deleted', () => {
    const old = makeAgentPod('shoal-agent-old', 'n1', { created: 100 });
    const terminating = makeAgentPod('shoal-agent-gone', 'n1', { created: 300 });
    terminating.metadata!.deletionTimestamp = new Date(400_000);
    const fresh = makeAgentPod('shoal-agent-new', 'n1', { created: 200, state: 'pending' });
    const topology = nodeTopology(makeNode('n1'), [old, terminating, fresh], labelOptions, []);
    expect(topology.agent.pod).toBe('shoal-agent-new');
  });

  it('names a taint the agent pods do not tolerate', () => {
    const node = makeNode('gpu', { taints: [gpuTaint] });
    const topology = nodeTopology(node, [], labelOptions, daemonSetTolerations);
    expect(topology.agent).toEqual({ state: 'missing', restarts: 0, ready: false });
    expect(topology.reason).toBe(
      'taint dedicated=gpu:NoSchedule is not tolerated by the agent DaemonSet (add a toleration)',
    );

    const twice = makeNode('gpu', { taints: [gpuTaint, { key: 'spot', effect: 'NoExecute' }] });
    expect(nodeTopology(twice, [], labelOptions, daemonSetTolerations).reason).toBe(
      'taints dedicated=gpu:NoSchedule, spot:NoExecute are not tolerated by the agent DaemonSet (add tolerations)',
    );
  });

  const generic = "no agent pod scheduled on this node (check the agent DaemonSet's events)";
  const untolerated =
    'taint dedicated=gpu:NoSchedule is not tolerated by the agent DaemonSet (add a toleration)';
  it.each<[string, V1Toleration, string]>([
    ['Exists on the key', { key: 'dedicated', operator: 'Exists' }, generic],
    ['Equal on key and value', { key: 'dedicated', operator: 'Equal', value: 'gpu' }, generic],
    ['Equal by default', { key: 'dedicated', value: 'gpu', effect: 'NoSchedule' }, generic],
    ['Exists with an empty key', { operator: 'Exists' }, generic],
    [
      'Exists on the key for another effect',
      { key: 'dedicated', operator: 'Exists', effect: 'NoExecute' },
      untolerated,
    ],
    ['Equal with another value', { key: 'dedicated', operator: 'Equal', value: 'cpu' }, untolerated],
    ['Exists on another key', { key: 'spot', operator: 'Exists' }, untolerated],
  ])('matches tolerations as Kubernetes does: %s', (_name, toleration, reason) => {
    const node = makeNode('gpu', { taints: [gpuTaint] });
    expect(nodeTopology(node, [], labelOptions, [...daemonSetTolerations, toleration]).reason).toBe(reason);
  });

  it('ignores PreferNoSchedule taints', () => {
    const node = makeNode('n1', { taints: [{ key: 'soft', effect: 'PreferNoSchedule' }] });
    expect(nodeTopology(node, [], labelOptions, []).reason).toBe(generic);
  });

  it('says so when there is no agent pod anywhere, and still names a suspect taint', () => {
    const none =
      'no agent pod on this node, and none in the cluster to compare tolerations with (is the agent DaemonSet installed?)';
    expect(nodeTopology(makeNode('n1'), [], labelOptions, undefined).reason).toBe(none);
    const tainted = makeNode('gpu', { taints: [gpuTaint], ready: false });
    expect(nodeTopology(tainted, [], labelOptions, undefined).reason).toBe(
      `${none}; taint dedicated=gpu:NoSchedule would also need a toleration`,
    );
  });

  it('reports a node that is not Ready rather than the taints Kubernetes puts on it', () => {
    const topology = nodeTopology(makeNode('n1', { ready: false }), [], labelOptions, daemonSetTolerations);
    expect(topology.ready).toBe(false);
    expect(topology.reason).toBe(
      'node is not Ready (KubeletNotReady: container runtime network not ready: NetworkReady=false), and no agent pod runs on it',
    );
  });

  it('reports a condition taint that keeps the agent off a Ready node', () => {
    const node = makeNode('n1', {
      taints: [{ key: 'node.kubernetes.io/network-unavailable', effect: 'NoSchedule' }],
    });
    expect(nodeTopology(node, [], labelOptions, daemonSetTolerations).reason).toBe(
      "taint node.kubernetes.io/network-unavailable:NoSchedule keeps the agent off this node (Kubernetes removes it when the node's condition clears)",
    );
  });
});

describe('createKubeTopology against a fake API server', () => {
  let kube: FakeKube;
  const started: KubeTopology[] = [];

  beforeEach(async () => {
    kube = await startFakeKube();
  });

  afterEach(async () => {
    await Promise.all(started.splice(0).map((t) => t.stop()));
    await kube.close();
  });

  function kubeConfig(server = kube.url, token = kube.token): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server, skipTLSVerify: true }],
      users: [{ name: 'u', token }],
      contexts: [{ name: 'c', cluster: 'fake', user: 'u' }],
      currentContext: 'c',
    });
    return kc;
  }

  function create(overrides: Partial<KubeTopologyOptions> = {}) {
    const changes: [string, NodeTopology | undefined][] = [];
    const log: Logger = createLogger('kubernetes-test', 'silent');
    const warn = vi.spyOn(log, 'warn');
    const topology = createKubeTopology({
      kubeConfig: kubeConfig(),
      ...labelOptions,
      agentNamespace: 'shoal',
      agentSelector,
      log,
      onChange: (name, topology) => changes.push([name, topology]),
      backoffMs: 20,
      maxBackoffMs: 100,
      startTimeoutMs: 3000,
      ...overrides,
    });
    started.push(topology);
    const changesOf = (name: string) => changes.filter(([n]) => n === name).map(([, t]) => t);
    return { topology, changes, changesOf, log, warn };
  }

  function at(topology: KubeTopology, name: string): NodeTopology | undefined {
    return topology.nodes().get(name);
  }

  it('lists the nodes and agent pods there are on start, and reports each node once', async () => {
    kube.addNode(makeNode('n1', { labels: placed('z1') }));
    kube.addNode(makeNode('n2', { labels: placed('z2') }));
    kube.addNode(
      makeNode('n3', {
        labels: placed('z2'),
        taints: [{ key: 'dedicated', value: 'gpu', effect: 'NoSchedule' }],
      }),
    );
    kube.addPod(makeAgentPod('shoal-agent-1', 'n1'));
    kube.addPod(makeAgentPod('shoal-agent-2', 'n2', { state: 'crashloop', restarts: 3 }));
    // Neither of these is an agent pod of this namespace and selector.
    kube.addPod(makeAgentPod('web-1', 'n3', { labels: { 'app.kubernetes.io/name': 'web' } }));
    kube.addPod(makeAgentPod('shoal-agent-3', 'n3', { namespace: 'elsewhere' }));

    const { topology, changes } = create();
    await topology.start();

    expect(topology.connected()).toBe(true);
    expect([...topology.nodes().keys()].sort()).toEqual(['n1', 'n2', 'n3']);
    expect(at(topology, 'n1')).toMatchObject({ zone: 'z1', agent: { state: 'running' } });
    expect(at(topology, 'n1')?.reason).toBeUndefined();
    expect(at(topology, 'n2')?.agent).toMatchObject({ state: 'crashloop', restarts: 3 });
    expect(at(topology, 'n3')?.reason).toBe(
      'taint dedicated=gpu:NoSchedule is not tolerated by the agent DaemonSet (add a toleration)',
    );
    // Reported once each, with the agent pods already applied: no node was announced as missing its agent first.
    expect(changes.map(([name]) => name).sort()).toEqual(['n1', 'n2', 'n3']);

    expect(kube.count({ resource: 'nodes', watch: false })).toBe(1);
    expect(kube.count({ resource: 'pods', watch: false })).toBe(1);
    const podWatch = kube.requests.find((r) => r.resource === 'pods' && r.watch);
    expect(podWatch?.url).toContain('/api/v1/namespaces/shoal/pods?');
    const query = new URL(podWatch!.url, 'http://x').searchParams;
    expect(query.get('labelSelector')).toBe(agentSelector);
    expect(query.get('allowWatchBookmarks')).toBe('true');
    expect(Number(query.get('timeoutSeconds'))).toBeGreaterThanOrEqual(300);
  });

  it('follows nodes and agent pods as they change, and reports only real changes', async () => {
    kube.addNode(makeNode('n1', { labels: placed('z1') }));
    kube.addNode(makeNode('n2', { labels: placed('z1') }));
    const crashing = makeAgentPod('shoal-agent-1', 'n1', { state: 'crashloop', restarts: 5 });
    kube.addPod(crashing);
    kube.addPod(makeAgentPod('shoal-agent-2', 'n2'));
    const { topology, changes, changesOf } = create();
    await topology.start();
    expect(at(topology, 'n1')?.agent.state).toBe('crashloop');
    changes.length = 0;

    kube.updateNode(makeNode('n1', { labels: placed('z9') }));
    await waitFor(() => at(topology, 'n1')?.zone === 'z9');
    expect(changesOf('n1')).toEqual([expect.objectContaining({ zone: 'z9', vswitch: 'vsw-z9' })]);

    kube.updatePod(makeAgentPod('shoal-agent-1', 'n1', { restarts: 5 }));
    await waitFor(() => at(topology, 'n1')?.agent.state === 'running');
    expect(at(topology, 'n1')?.reason).toBeUndefined();
    expect(changesOf('n1')).toHaveLength(2);

    // A change that leaves the topology as it was is not reported: the node after it is, the node itself not.
    const annotated = makeNode('n1', { labels: placed('z9') });
    annotated.metadata!.annotations = { 'node.alpha.kubernetes.io/ttl': '0' };
    kube.updateNode(annotated);
    kube.updateNode(makeNode('n2', { labels: placed('z2') }));
    await waitFor(() => at(topology, 'n2')?.zone === 'z2');
    expect(changesOf('n1')).toHaveLength(2);

    kube.deletePod('shoal', 'shoal-agent-2');
    await waitFor(() => at(topology, 'n2')?.agent.state === 'missing');
    expect(at(topology, 'n2')?.reason).toBe(
      "no agent pod scheduled on this node (check the agent DaemonSet's events)",
    );

    kube.deleteNode('n1');
    await waitFor(() => !topology.nodes().has('n1'));
    expect(changes.at(-1)).toEqual(['n1', undefined]);

    kube.addNode(makeNode('n3', { labels: placed('z3') }));
    await waitFor(() => topology.nodes().has('n3'));
    expect(at(topology, 'n3')?.agent.state).toBe('missing');
  });

  it('places an agent pod that is not scheduled yet on the node its affinity names', async () => {
    kube.addNode(makeNode('n1'));
    kube.addPod(makeAgentPod('shoal-agent-0', 'n0'));
    const pending = makeAgentPod('shoal-agent-1', '');
    delete pending.spec!.nodeName;
    pending.spec!.affinity = {
      nodeAffinity: {
        requiredDuringSchedulingIgnoredDuringExecution: {
          nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.name', operator: 'In', values: ['n1'] }] }],
        },
      },
    };
    pending.status = {
      phase: 'Pending',
      conditions: [
        {
          type: 'PodScheduled',
          status: 'False',
          reason: 'Unschedulable',
          message: '0/2 nodes are available: 1 Insufficient memory.',
        },
      ],
    };
    kube.addPod(pending);
    const { topology } = create();
    await topology.start();
    expect(at(topology, 'n1')?.reason).toBe(
      'agent pod shoal-agent-1 cannot be scheduled: 0/2 nodes are available: 1 Insufficient memory.',
    );

    const bound: V1Pod = makeAgentPod('shoal-agent-1', 'n1');
    bound.spec!.affinity = pending.spec!.affinity;
    kube.updatePod(bound);
    await waitFor(() => at(topology, 'n1')?.agent.state === 'running');
  });

  it('judges taints again when the agent pods start tolerating them', async () => {
    const gpu = { key: 'dedicated', value: 'gpu', effect: 'NoSchedule' };
    kube.addNode(makeNode('n1'));
    kube.addNode(makeNode('gpu', { taints: [gpu] }));
    kube.addPod(makeAgentPod('shoal-agent-old', 'n1', { created: 100 }));
    const { topology } = create();
    await topology.start();
    expect(at(topology, 'gpu')?.reason).toContain('taint dedicated=gpu:NoSchedule is not tolerated');

    // A rollout: the new pod carries the new template's tolerations.
    const tolerations = [...daemonSetTolerations, { key: 'dedicated', operator: 'Exists' }];
    kube.addPod(makeAgentPod('shoal-agent-new', 'n1', { created: 200, tolerations }));
    kube.deletePod('shoal', 'shoal-agent-old');
    await waitFor(() => at(topology, 'gpu')?.reason?.startsWith('no agent pod scheduled') === true);

    kube.deletePod('shoal', 'shoal-agent-new');
    await waitFor(() => at(topology, 'gpu')?.reason?.includes('none in the cluster') === true);
  });

  it('reconnects a dropped watch from where it was and sees the changes made meanwhile', async () => {
    kube.addNode(makeNode('n1'));
    kube.addPod(makeAgentPod('shoal-agent-1', 'n1'));
    const { topology, warn } = create();
    await topology.start();

    kube.dropWatches();
    kube.addNode(makeNode('n2', { labels: placed('z2') }));
    await waitFor(() => topology.nodes().has('n2'));
    await waitFor(() => topology.connected() && kube.openWatches() === 2);
    kube.updatePod(makeAgentPod('shoal-agent-1', 'n1', { state: 'crashloop', restarts: 1 }));
    await waitFor(() => at(topology, 'n1')?.agent.state === 'crashloop');

    expect(kube.count({ resource: 'nodes', watch: true })).toBe(2);
    // The watch resumed from its resourceVersion: nothing was listed again.
    expect(kube.count({ resource: 'nodes', watch: false })).toBe(1);
    expect(warn).toHaveBeenCalledWith(
      expect.objectContaining({
        resource: 'nodes',
        err: expect.stringContaining('Premature close') as unknown,
      }),
      'kubernetes watch failed; restarting it',
    );
  });

  it.each(['event', 'status'] as const)(
    'lists again after a 410 Gone (as an %s) and reconciles what changed in the gap',
    async (as) => {
      kube.addNode(makeNode('n1'));
      kube.addNode(makeNode('n2'));
      kube.addPod(makeAgentPod('shoal-agent-1', 'n1'));
      kube.addPod(makeAgentPod('shoal-agent-2', 'n2'));
      const { topology, changesOf } = create();
      await topology.start();

      kube.dropWatches();
      kube.deleteNode('n2');
      kube.deletePod('shoal', 'shoal-agent-1');
      kube.addNode(makeNode('n3', { labels: placed('z3') }));
      kube.expireHistory(as);

      await waitFor(() => !topology.nodes().has('n2') && topology.nodes().has('n3'));
      await waitFor(() => at(topology, 'n1')?.agent.state === 'missing');
      expect(changesOf('n2').at(-1)).toBeUndefined();
      expect(kube.count({ resource: 'nodes', watch: false })).toBe(2);
      expect(kube.count({ resource: 'pods', watch: false })).toBe(2);
      await waitFor(() => topology.connected() && kube.openWatches() === 2);
    },
  );

  it('re-establishes a watch the server ends, without a backoff or a new list', async () => {
    kube.addNode(makeNode('n1'));
    const { topology, warn } = create({ watchTimeoutSeconds: 1 });
    await topology.start();
    await waitFor(() => kube.count({ resource: 'nodes', watch: true }) === 2, 3000);
    kube.addNode(makeNode('n2'));
    await waitFor(() => topology.nodes().has('n2'));
    expect(kube.count({ resource: 'nodes', watch: false })).toBe(1);
    expect(warn).not.toHaveBeenCalled();
  });

  it('starts once the API answers after failing for a while', async () => {
    kube.addNode(makeNode('n1'));
    kube.failNext(4, 500);
    const { topology, warn } = create();
    await topology.start();
    expect(topology.nodes().has('n1')).toBe(true);
    expect(kube.requests.filter((r) => r.status === 500)).toHaveLength(4);
    expect(warn).toHaveBeenCalledWith(
      expect.objectContaining({ err: expect.stringContaining('answered HTTP 500') as unknown }),
      'kubernetes API not ready; retrying',
    );
  });

  it('restarts a failed informer with a doubling, capped backoff, reset once it reconnects', async () => {
    kube.addNode(makeNode('n1'));
    const { topology, warn } = create();
    await topology.start();

    kube.failNext(4, 500, { resource: 'nodes', watch: true });
    kube.dropWatches();
    kube.addNode(makeNode('n2'));
    await waitFor(() => topology.nodes().has('n2'));
    await waitFor(() => topology.connected());

    kube.dropWatches();
    await waitFor(() => topology.connected() && kube.openWatches() === 2);

    const delays = warn.mock.calls
      .map(([fields]) => fields as { resource: string; retryInMs: number })
      .filter((fields) => fields.resource === 'nodes')
      .map((fields) => fields.retryInMs);
    expect(delays).toEqual([20, 40, 80, 100, 100, 20]);

    const failed = kube.requests.filter((r) => r.resource === 'nodes' && r.watch && r.status === 500);
    const gaps = failed.slice(1).map((r, i) => r.at - failed[i]!.at);
    gaps.forEach((gap, i) => expect(gap).toBeGreaterThanOrEqual([40, 80, 100][i]! - 5));
  });

  it('rejects start at once when the credentials are refused', async () => {
    const { topology } = create({ kubeConfig: kubeConfig(kube.url, 'wrong') });
    const failure = await topology.start().catch((err: unknown) => err);
    expect(failure).toBeInstanceOf(ShoalError);
    expect((failure as ShoalError).code).toBe('SHOAL_ERR_UNAUTHORIZED');
    expect((failure as Error).message).toMatch(
      /^the Kubernetes API at http:\/\/127\.0\.0\.1:\d+ rejected the credentials when asked to list (nodes|pods in namespace "shoal") \(401 Unauthorized\)/,
    );
    // No retry: one request per informer at most (the second may be cut short by the first failing).
    expect(kube.count()).toBeLessThanOrEqual(2);
    expect(topology.connected()).toBe(false);
  });

  it('rejects start naming the permission that is missing', async () => {
    kube.failNext(1, 403, { resource: 'pods' });
    const { topology } = create();
    await expect(topology.start()).rejects.toThrow(
      'not allowed to list pods in namespace "shoal" (403 Forbidden: pods is forbidden: User "system:serviceaccount:shoal:discovery" cannot list resource "pods" in API group "" at the cluster scope): grant the service account list and watch on pods in a Role in namespace "shoal"',
    );
  });

  it('rejects start when the watch is forbidden, naming the watch', async () => {
    kube.failNext(1, 403, { resource: 'nodes', watch: true });
    const { topology } = create({ agentNamespace: '' });
    await expect(topology.start()).rejects.toThrow(
      'not allowed to watch nodes (403 Forbidden): grant the service account list and watch on nodes in a ClusterRole (nodes are cluster-scoped)',
    );
  });

  it('rejects start when the API cannot be reached', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const { topology } = create({ kubeConfig: kubeConfig(`http://127.0.0.1:${port}`), startTimeoutMs: 150 });
    await expect(topology.start()).rejects.toThrow(
      /^cannot list (nodes|pods in namespace "shoal") from the Kubernetes API at http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED.*\(gave up after \d+ ms\)$/,
    );
  });

  it('watches agent pods in all namespaces and keeps nodes of other pools out of the mesh', async () => {
    kube.addNode(makeNode('n1', { labels: placed('z1', 'np-a') }));
    kube.addNode(makeNode('n2', { labels: placed('z1', 'np-b') }));
    kube.addPod(makeAgentPod('shoal-agent-1', 'n1', { namespace: 'one' }));
    kube.addPod(makeAgentPod('shoal-agent-2', 'n2', { namespace: 'two' }));
    const { topology } = create({ agentNamespace: '', pool: 'np-a' });
    await topology.start();
    expect(kube.requests.find((r) => r.resource === 'pods')?.url).toMatch(/^\/api\/v1\/pods\?/);
    expect(at(topology, 'n1')).toMatchObject({ inMesh: true, agent: { state: 'running' } });
    expect(at(topology, 'n2')).toMatchObject({
      inMesh: false,
      agent: { state: 'running' },
      reason: 'not in node pool "np-b" (mesh restricted to pool "np-a")',
    });
  });

  it('keeps applying events when the change handler throws', async () => {
    kube.addNode(makeNode('n1'));
    const { topology, log } = create({
      onChange: () => {
        throw new Error('handler broke');
      },
    });
    const error = vi.spyOn(log, 'error');
    await topology.start();
    kube.addNode(makeNode('n2'));
    await waitFor(() => topology.nodes().has('n2'));
    expect(error).toHaveBeenCalledWith(
      expect.objectContaining({ node: 'n2', err: 'handler broke' }),
      'topology change handler failed',
    );
  });

  it('stop leaves no watch, connection, timer or request behind', async () => {
    kube.addNode(makeNode('n1'));
    const { topology } = create();
    await topology.start();
    await topology.stop();
    expect(topology.connected()).toBe(false);
    await waitFor(() => kube.openWatches() === 0);
    const seen = kube.count();
    await sleep(150);
    expect(kube.count()).toBe(seen);
    expect(await kube.connections()).toBe(0);
  });

  it('stop during a start that keeps failing rejects the start and stops retrying', async () => {
    kube.failNext(1000, 503);
    const { topology } = create();
    const starting = topology.start();
    await waitFor(() => kube.count() >= 4);
    await topology.stop();
    await expect(starting).rejects.toThrow(/^stopped before (nodes|pods in namespace "shoal") were loaded$/);
    const seen = kube.count();
    await sleep(150);
    expect(kube.count()).toBe(seen);
    expect(await kube.connections()).toBe(0);
  });

  it('stop while a watch request is in flight does not leave that watch open', async () => {
    kube.addNode(makeNode('n1'));
    const { topology } = create();
    await topology.start();
    kube.delayWatches(100);
    kube.dropWatches();
    // Stop once the reconnecting watch has been sent, before its answer arrives.
    await waitFor(() => kube.count({ resource: 'nodes', watch: true }) === 2);
    await topology.stop();
    await waitFor(
      () => kube.count({ resource: 'nodes', watch: true }) === 2 && kube.openWatches() === 0,
      500,
    );
    await sleep(150);
    expect(kube.openWatches()).toBe(0);
    expect(await kube.connections()).toBe(0);
  });
});
