/** Discovery on a real nats-server, with a real HTTP server standing in for a registry. */
import { createServer, type Server } from 'node:http';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import {
  connectMesh,
  createLogger,
  decode,
  encode,
  endpointKey,
  endpointRecord,
  ensureStreams,
  jetStreamOf,
  openBuckets,
  subjects,
  type MeshBuckets,
  type MeshConnection,
  type NodeRecord,
  type ShoalEvent,
} from '@shoal/mesh';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDiscovery, type Discovery } from '../src/app.js';
import type { DiscoverySettings } from '../src/config.js';
import { freePort, startNatsServer, type NatsServer } from '@shoal/mesh/testing';
import { readNode, sendHeartbeat, until } from './helpers.js';

const TTL = 900;
let server: NatsServer;
let nc: NatsConnection;
let buckets: MeshBuckets;
let registryServer: Server;
let registryStatus = 401;
let registryPort: number;
let closedPort: number;
const events: ShoalEvent[] = [];
let eventSub: Subscription;
const running: { discovery: Discovery; mesh: MeshConnection; registry: Registry }[] = [];

async function startDiscovery(instance: string, overrides: Partial<DiscoverySettings> = {}) {
  const mesh = connectMesh({ servers: [server.url], name: instance, log: createLogger('test', 'silent') });
  const registry = new Registry();
  const discovery = createDiscovery({
    mesh,
    log: createLogger(instance, 'silent'),
    registry,
    config: {
      nodeTtl: TTL,
      registries: [],
      mirrors: [],
      endpointsInterval: 200,
      endpointsTimeout: 500,
      kubeResync: 300_000,
      ...overrides,
    },
    instance,
  });
  await discovery.start();
  const entry = { discovery, mesh, registry };
  running.push(entry);
  return entry;
}

async function stop(entry: (typeof running)[number]) {
  await entry.discovery.stop();
  await entry.mesh.close();
  running.splice(running.indexOf(entry), 1);
}

const heartbeat = (id: string, extra: Partial<NodeRecord> = {}) => sendHeartbeat(nc, id, extra);
const stored = (id: string) => readNode(buckets.nodes, id);

const eventsFor = (node: string, type: ShoalEvent['type']) =>
  events.filter((e) => e.type === type && 'node' in e && e.node === node);

async function metric(registry: Registry, name: string, labels: Record<string, string> = {}) {
  const { values } = await registry.getSingleMetric(name)!.get();
  return values
    .filter((v) => Object.entries(labels).every(([k, w]) => v.labels[k] === w))
    .reduce((s, v) => s + v.value, 0);
}

beforeAll(async () => {
  server = await startNatsServer();
  nc = await connect({ servers: server.url });
  await ensureStreams(await jetStreamOf(nc).jsm);
  buckets = await openBuckets(nc);
  eventSub = nc.subscribe(subjects.eventsAll, {
    callback: (_err, msg) => {
      events.push(JSON.parse(new TextDecoder().decode(msg.data)) as ShoalEvent);
    },
  });
  registryPort = await freePort();
  closedPort = await freePort();
  registryServer = createServer((req, res) => {
    res.statusCode = req.url === '/v2/' ? registryStatus : 404;
    if (registryStatus === 401) res.setHeader('www-authenticate', 'Bearer realm="http://127.0.0.1/token"');
    res.end('{}');
  });
  await new Promise<void>((resolve) => registryServer.listen(registryPort, '127.0.0.1', resolve));
});

afterAll(async () => {
  for (const entry of [...running]) await stop(entry);
  eventSub?.unsubscribe();
  await nc?.close();
  await server?.stop();
  await new Promise((resolve) => registryServer?.close(resolve));
});

describe('node registry', () => {
  it('records a node on its first heartbeat, stamps the receipt time, and announces the join once', async () => {
    const d = await startDiscovery('disc-a');
    const before = Date.now();
    heartbeat('n1');
    const record = await until(
      () => stored('n1'),
      (r) => r !== null,
    );
    expect(record).toMatchObject({ id: 'n1', zone: 'z1', vswitch: 'v1' });
    expect(record!.seenAt).toBeGreaterThanOrEqual(before);
    heartbeat('n1');
    heartbeat('n1');
    await until(
      () => stored('n1'),
      (r) => (r?.seenAt ?? 0) > record!.seenAt,
    );
    await until(
      () => eventsFor('n1', 'node_joined').length,
      (n) => n > 0,
    );
    expect(eventsFor('n1', 'node_joined')).toEqual([
      expect.objectContaining({
        type: 'node_joined',
        node: 'n1',
        zone: 'z1',
        vswitch: 'v1',
        origin: 'disc-a',
      }),
    ]);
    expect(await until(() => d.discovery.nodes().has('n1'), Boolean)).toBe(true);
    expect(await metric(d.registry, 'shoal_discovery_node_joins_total')).toBe(1);
    expect(await metric(d.registry, 'shoal_discovery_nodes')).toBeGreaterThanOrEqual(1);
  });

  it('removes a node that stops heartbeating within node.ttl (plus one sweep period)', async () => {
    const keepAlive = setInterval(() => heartbeat('n2'), 150);
    heartbeat('n2');
    await until(
      () => stored('n2'),
      (r) => r !== null,
    );
    // Heartbeating for longer than the TTL keeps it.
    await new Promise((r) => setTimeout(r, TTL * 1.5));
    expect(await stored('n2')).not.toBeNull();
    clearInterval(keepAlive);
    const lastBeat = (await until(
      () => stored('n2'),
      (r) => r !== null,
    ))!.seenAt;
    const gone = await until(
      () => stored('n2'),
      (r) => r === null,
      TTL * 4,
    );
    const elapsed = Date.now() - lastBeat;
    expect(gone).toBeNull();
    expect(elapsed).toBeGreaterThanOrEqual(TTL);
    // One sweep period after the TTL at most, plus slack for a busy test machine.
    expect(elapsed).toBeLessThan(TTL + TTL / 3 + 600);
    expect(
      await until(
        () => eventsFor('n2', 'node_left'),
        (e) => e.length > 0,
      ),
    ).toEqual([expect.objectContaining({ type: 'node_left', node: 'n2', reason: 'heartbeat timeout' })]);
  });

  it('removes a node at once when it leaves, and records it again when it comes back', async () => {
    heartbeat('n3');
    await until(
      () => stored('n3'),
      (r) => r !== null,
    );
    const leftAt = Date.now();
    nc.publish(subjects.leave('n3'), encode({ node: 'n3', at: Date.now() }));
    expect(
      await until(
        () => stored('n3'),
        (r) => r === null,
      ),
    ).toBeNull();
    expect(Date.now() - leftAt).toBeLessThan(TTL / 2);
    expect(
      await until(
        () => eventsFor('n3', 'node_left'),
        (e) => e.length > 0,
      ),
    ).toEqual([expect.objectContaining({ node: 'n3', reason: 'left' })]);
    heartbeat('n3');
    expect(
      await until(
        () => eventsFor('n3', 'node_joined').length,
        (n) => n === 2,
      ),
    ).toBe(2);
    expect(await stored('n3')).not.toBeNull();
  });

  it('rejects malformed heartbeats and heartbeats naming another node, and keeps working', async () => {
    const [d] = running;
    nc.publish(subjects.heartbeat('bad1'), 'not json');
    nc.publish(
      subjects.heartbeat('bad2'),
      encode({ id: 'bad2', url: 'not a url', zone: '', vswitch: '', pool: '', startedAt: 0, seenAt: 0 }),
    );
    nc.publish(
      subjects.heartbeat('bad3'),
      encode({
        id: 'someone-else',
        url: 'http://x:1',
        zone: '',
        vswitch: '',
        pool: '',
        startedAt: 0,
        seenAt: 0,
      }),
    );
    heartbeat('n4');
    await until(
      () => stored('n4'),
      (r) => r !== null,
    );
    expect(await metric(d!.registry, 'shoal_discovery_heartbeats_total', { outcome: 'rejected' })).toBe(3);
    for (const id of ['bad1', 'bad2', 'bad3', 'someone-else']) expect(await stored(id)).toBeNull();
    // A leave naming n4 but sent on another node's subject is refused: n4 stays.
    nc.publish(subjects.leave('n1'), encode({ node: 'n4', at: 0 }));
    nc.publish(subjects.leave('n4'), 'not json');
    await new Promise((r) => setTimeout(r, 200));
    expect(await stored('n4')).not.toBeNull();
    expect(d!.discovery.nodes().has('n4')).toBe(true);
  });

  it('with two instances, records each join and each timeout exactly once', async () => {
    const other = await startDiscovery('disc-b');
    const ids = ['m1', 'm2', 'm3', 'm4', 'm5'];
    for (let round = 0; round < 4; round++) {
      for (const id of ids) heartbeat(id);
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const id of ids)
      await until(
        () => stored(id),
        (r) => r !== null,
      );
    for (const id of ids) {
      expect(await until(() => other.discovery.nodes().has(id), Boolean)).toBe(true);
    }
    for (const id of ids)
      await until(
        () => stored(id),
        (r) => r === null,
        TTL * 4,
      );
    await new Promise((r) => setTimeout(r, TTL / 2));
    for (const id of ids) {
      expect(eventsFor(id, 'node_joined'), id).toHaveLength(1);
      expect(eventsFor(id, 'node_left'), id).toHaveLength(1);
    }
    const joins =
      (await metric(running[0]!.registry, 'shoal_discovery_node_joins_total')) +
      (await metric(other.registry, 'shoal_discovery_node_joins_total'));
    expect(joins).toBeGreaterThanOrEqual(5);
    await stop(other);
  });

  it('when instances sweep at the same moment, each silent node is removed by exactly one of them', async () => {
    // A shared fake clock and a long TTL: the timers never sweep; the test sweeps both instances at once.
    let clock = Date.now();
    const options = { nodeTtl: 60_000 };
    const make = async (instance: string) => {
      const mesh = connectMesh({
        servers: [server.url],
        name: instance,
        log: createLogger('test', 'silent'),
      });
      const discovery = createDiscovery({
        mesh,
        log: createLogger(instance, 'silent'),
        registry: new Registry(),
        config: {
          registries: [],
          mirrors: [],
          endpointsInterval: 10_000,
          endpointsTimeout: 500,
          kubeResync: 300_000,
          ...options,
        },
        instance,
        now: () => clock,
      });
      await discovery.start();
      const entry = { discovery, mesh, registry: new Registry() };
      running.push(entry);
      return entry;
    };
    for (const entry of [...running]) await stop(entry);
    const [a, b] = [await make('sweep-a'), await make('sweep-b')];
    const ids = ['s1', 's2', 's3', 's4', 's5', 's6'];
    for (const id of ids) heartbeat(id);
    for (const id of ids) {
      await until(() => a.discovery.nodes().has(id) && b.discovery.nodes().has(id), Boolean);
    }
    clock += 60_001;
    const [byA, byB] = await Promise.all([a.discovery.sweep(), b.discovery.sweep()]);
    expect(byA + byB).toBe(ids.length);
    for (const id of ids) expect(await stored(id)).toBeNull();
    await until(
      () => eventsFor('s6', 'node_left').length,
      (n) => n > 0,
    );
    await new Promise((r) => setTimeout(r, 100));
    for (const id of ids) expect(eventsFor(id, 'node_left'), id).toHaveLength(1);
    await stop(a);
    await stop(b);
  });

  it('after a restart, knows existing nodes and does not announce them again', async () => {
    // A long TTL: this test is about the restart, and must not race the sweeper on a busy machine.
    const before = await startDiscovery('disc-before-restart', { nodeTtl: 60_000 });
    heartbeat('r1');
    await until(
      () => eventsFor('r1', 'node_joined').length,
      (n) => n === 1,
    );
    await stop(before);
    const d = await startDiscovery('disc-c', { nodeTtl: 60_000 });
    expect(d.discovery.nodes().has('r1')).toBe(true);
    const first = (await stored('r1'))!.seenAt;
    heartbeat('r1');
    await until(
      () => stored('r1'),
      (r) => (r?.seenAt ?? 0) > first,
    );
    await new Promise((r) => setTimeout(r, 100));
    expect(eventsFor('r1', 'node_joined')).toHaveLength(1);
  });
});

describe('registry endpoints', () => {
  it('publishes each configured registry with its health, 200 and 401 meaning healthy', async () => {
    registryStatus = 401;
    const d = await startDiscovery('disc-endpoints', {
      registries: [`http://127.0.0.1:${registryPort}/`, `http://127.0.0.1:${closedPort}`],
    });
    const readRecord = async (port: number) => {
      const entry = await buckets.endpoints.get(endpointKey(`127.0.0.1:${port}`));
      return entry ? decode(endpointRecord, entry.value, 'endpoint') : null;
    };
    // start() runs the first check before it resolves.
    expect(await readRecord(registryPort)).toMatchObject({
      registry: `127.0.0.1:${registryPort}`,
      url: `http://127.0.0.1:${registryPort}`,
      healthy: true,
      source: 'static',
    });
    expect(await readRecord(closedPort)).toMatchObject({ healthy: false });
    expect(
      await metric(d.registry, 'shoal_discovery_endpoint_healthy', { registry: `127.0.0.1:${registryPort}` }),
    ).toBe(1);
    expect(
      await metric(d.registry, 'shoal_discovery_endpoint_healthy', { registry: `127.0.0.1:${closedPort}` }),
    ).toBe(0);

    registryStatus = 503;
    expect(
      await until(
        () => readRecord(registryPort),
        (r) => r?.healthy === false,
        2_000,
      ),
    ).toMatchObject({ healthy: false });
    registryStatus = 200;
    expect(
      await until(
        () => readRecord(registryPort),
        (r) => r?.healthy === true,
        2_000,
      ),
    ).toMatchObject({ healthy: true });
    expect(d.discovery.health()).toMatchObject({
      ok: true,
      detail: { endpoints: { [`127.0.0.1:${registryPort}`]: true } },
    });
  });
});
