/**
 * Discovery in Kubernetes mode, on a real nats-server and the fake API server over real HTTP: nodes are
 * placed by their labels whatever their agents say, the node-pool filter keeps other pools out, nodes
 * without a working agent are published with the reason, and label changes and deletions reach the
 * node registry the scheduler reads.
 */
import { KubeConfig } from '@kubernetes/client-node';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import {
  connectMesh,
  createLogger,
  decode,
  ensureStreams,
  jetStreamOf,
  type MeshBuckets,
  type MeshConnection,
  openBuckets,
  type ShoalEvent,
  subjects,
  topologyRecord,
  type TopologyRecord,
} from '@shoal/mesh';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDiscovery, type Discovery } from '../src/app.js';
import { createKubeTopology } from '../src/kubernetes.js';
import { readNode, sendHeartbeat, until } from './helpers.js';
import { agentSelector, type FakeKube, makeAgentPod, makeNode, startFakeKube } from '../src/testing/index.js';

const ZONE = 'topology.kubernetes.io/zone';
const VSWITCH = 'topology.shoal.io/vswitch';
const POOL = 'alibabacloud.com/nodepool-id';

let nats: NatsServer;
let nc: NatsConnection;
let buckets: MeshBuckets;
let kube: FakeKube;
let mesh: MeshConnection;
let discovery: Discovery;
let eventSub: Subscription;
const events: ShoalEvent[] = [];

function kubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'fake', server: kube.url, skipTLSVerify: true }],
    users: [{ name: 'u', token: kube.token }],
    contexts: [{ name: 'c', cluster: 'fake', user: 'u' }],
    currentContext: 'c',
  });
  return kc;
}

const heartbeat = (id: string) =>
  sendHeartbeat(nc, id, { zone: 'agent-says-zone', vswitch: 'agent-says-vsw', pool: '' });
const node = async (id: string) => (await readNode(buckets.nodes, id)) ?? undefined;

async function topology(id: string): Promise<TopologyRecord | undefined> {
  const entry = await buckets.topology.get(id);
  return entry?.operation === 'PUT' ? decode(topologyRecord, entry.value, id) : undefined;
}

const labels = (zone: string, vswitch: string, pool: string) => ({
  [ZONE]: zone,
  [VSWITCH]: vswitch,
  [POOL]: pool,
});

beforeAll(async () => {
  [nats, kube] = await Promise.all([startNatsServer(), startFakeKube()]);
  nc = await connect({ servers: nats.url });
  await ensureStreams(await jetStreamOf(nc).jsm);
  buckets = await openBuckets(nc);
  eventSub = nc.subscribe(subjects.eventsAll, {
    callback: (_err, msg) => {
      events.push(msg.json<ShoalEvent>());
    },
  });
  // Nodes whose names a mesh node ID cannot carry as they are: cloud providers name nodes by region and IP.
  kube.addNode(makeNode('cn-a.10.0.0.1', { labels: labels('zone-a', 'vsw-1', 'np-edge') }));
  kube.addNode(makeNode('cn-a.10.0.0.2', { labels: labels('zone-a', 'vsw-2', 'np-edge') }));
  kube.addNode(makeNode('cn-a.10.0.0.3', { labels: labels('zone-b', 'vsw-3', 'np-edge') }));
  kube.addNode(makeNode('cn-a.10.0.0.9', { labels: labels('zone-b', 'vsw-3', 'np-general') }));
  kube.addPod(makeAgentPod('agent-1', 'cn-a.10.0.0.1', { namespace: 'shoal' }));
  kube.addPod(
    makeAgentPod('agent-2', 'cn-a.10.0.0.2', { namespace: 'shoal', state: 'crashloop', restarts: 7 }),
  );
  kube.addPod(makeAgentPod('agent-9', 'cn-a.10.0.0.9', { namespace: 'shoal' }));
  mesh = connectMesh({ servers: [nats.url], name: 'disc-kube', log: createLogger('test', 'silent') });
  const log = createLogger('disc-kube', 'silent');
  discovery = createDiscovery({
    mesh,
    log,
    registry: new Registry(),
    config: {
      nodeTtl: 60_000,
      registries: [],
      mirrors: [],
      endpointsInterval: 10_000,
      endpointsTimeout: 500,
      kubeResync: 200,
    },
    instance: 'disc-kube',
    topology: (onChange) =>
      createKubeTopology({
        kubeConfig: kubeConfig(),
        zoneLabel: ZONE,
        regionLabel: 'topology.kubernetes.io/region',
        vswitchLabel: VSWITCH,
        poolLabel: POOL,
        pool: 'np-edge',
        agentNamespace: 'shoal',
        agentSelector,
        log,
        onChange,
        backoffMs: 20,
      }),
  });
  await discovery.start();
});

afterAll(async () => {
  await discovery?.stop();
  await mesh?.close();
  await eventSub?.drain();
  await nc?.close();
  await Promise.allSettled([kube?.close(), nats?.stop()]);
});

describe('discovery with Kubernetes topology', () => {
  it('publishes every node with its agent state, and why a node has no working agent', async () => {
    expect(discovery.health().detail.kubernetes).toBe(true);
    expect(await topology('cn-a-10-0-0-1')).toMatchObject({
      name: 'cn-a.10.0.0.1',
      zone: 'zone-a',
      vswitch: 'vsw-1',
      pool: 'np-edge',
      inMesh: true,
      agent: { state: 'running', pod: 'agent-1' },
    });
    expect((await topology('cn-a-10-0-0-1'))?.reason).toBeUndefined();
    expect(await topology('cn-a-10-0-0-2')).toMatchObject({
      agent: { state: 'crashloop', restarts: 7 },
      reason: expect.stringMatching(/^agent pod agent-2 is crash-looping \(7 restarts/) as unknown,
    });
    expect(await topology('cn-a-10-0-0-3')).toMatchObject({
      agent: { state: 'missing' },
      reason: expect.stringContaining('no agent pod') as unknown,
    });
    expect(await topology('cn-a-10-0-0-9')).toMatchObject({
      inMesh: false,
      reason: expect.stringContaining('np-general') as unknown,
    });
    const published = events.filter((e) => e.type === 'node_topology');
    expect(published.map((e) => e.type === 'node_topology' && e.node).sort()).toEqual([
      'cn-a-10-0-0-1',
      'cn-a-10-0-0-2',
      'cn-a-10-0-0-3',
      'cn-a-10-0-0-9',
    ]);
  });

  it('places a node by its labels, not by what its agent says', async () => {
    heartbeat('cn-a-10-0-0-1');
    const record = await until(() => node('cn-a-10-0-0-1'), Boolean);
    expect(record).toMatchObject({ zone: 'zone-a', vswitch: 'vsw-1', pool: 'np-edge' });
  });

  it('keeps nodes of other pools out of the mesh', async () => {
    heartbeat('cn-a-10-0-0-9');
    heartbeat('cn-a-10-0-0-1');
    await new Promise((r) => setTimeout(r, 300));
    expect(await node('cn-a-10-0-0-9')).toBeUndefined();
  });

  it('moves a live node when its labels change, and takes it out when it leaves the pool', async () => {
    kube.updateNode(makeNode('cn-a.10.0.0.1', { labels: labels('zone-b', 'vsw-4', 'np-edge') }));
    expect(
      await until(
        () => node('cn-a-10-0-0-1'),
        (r) => r?.zone === 'zone-b',
      ),
    ).toMatchObject({ zone: 'zone-b', vswitch: 'vsw-4' });
    expect(
      await until(
        () => topology('cn-a-10-0-0-1'),
        (t) => t?.zone === 'zone-b',
      ),
    ).toMatchObject({ zone: 'zone-b', vswitch: 'vsw-4' });

    kube.updateNode(makeNode('cn-a.10.0.0.1', { labels: labels('zone-b', 'vsw-4', 'np-general') }));
    expect(
      await until(
        () => node('cn-a-10-0-0-1'),
        (r) => r === undefined,
      ),
    ).toBeUndefined();
    expect(
      await until(() => events.find((e) => e.type === 'node_left' && e.node === 'cn-a-10-0-0-1'), Boolean),
    ).toMatchObject({ reason: expect.stringContaining('np-general') as unknown });
  });

  it('reports an agent that recovers, and forgets a node deleted from the cluster', async () => {
    kube.updatePod(makeAgentPod('agent-2', 'cn-a.10.0.0.2', { namespace: 'shoal', restarts: 7 }));
    expect(
      await until(
        () => topology('cn-a-10-0-0-2'),
        (t) => t?.agent.state === 'running',
      ),
    ).toMatchObject({ agent: { state: 'running' } });
    expect((await topology('cn-a-10-0-0-2'))?.reason).toBeUndefined();

    heartbeat('cn-a-10-0-0-2');
    await until(() => node('cn-a-10-0-0-2'), Boolean);
    kube.deleteNode('cn-a.10.0.0.2');
    expect(
      await until(
        () => node('cn-a-10-0-0-2'),
        (r) => r === undefined,
      ),
    ).toBeUndefined();
    // The topology record is removed by a write of its own, which may land after the node record's.
    expect(
      await until(
        () => topology('cn-a-10-0-0-2'),
        (t) => t === undefined,
      ),
    ).toBeUndefined();
  });

  it('makes good a topology write that was lost, and removes records of nodes it does not know', async () => {
    await buckets.topology.delete('cn-a-10-0-0-3');
    await buckets.topology.put('cn-a-gone', new TextEncoder().encode('{}'));
    expect(
      await until(
        () => topology('cn-a-10-0-0-3'),
        (t) => t !== undefined,
      ),
    ).toMatchObject({ name: 'cn-a.10.0.0.3', agent: { state: 'missing' } });
    expect(
      await until(
        async () => (await buckets.topology.get('cn-a-gone'))?.operation,
        (op) => op !== 'PUT',
      ),
    ).not.toBe('PUT');
  });
});
