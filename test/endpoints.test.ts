/**
 * Registry endpoints end to end: discovery publishes a registry with a mirror for one zone, agents pull
 * through the endpoint that suits their zone, and switch to the registry itself when the mirror fails.
 */
import { createHash } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { buckets, subjects, type ShoalEvent, type TopologyRecord } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  type BuiltImage,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  startNats,
  startRegistry,
  waitFor,
} from './kit/index.js';
import { metric, type ShoalService, startAgent, startControlService, waitForNodes } from './support/shoal.js';

const NAME = 'registry.shoal.test';

async function pull(agent: ShoalService, repo: string, digest: string): Promise<string> {
  const res = await fetch(`${agent.url}/v2/${repo}/blobs/${digest}?ns=${NAME}`);
  if (res.status !== 200) throw new Error(`${agent.name} answered ${res.status}: ${await res.text()}`);
  return `sha256:${createHash('sha256')
    .update(Buffer.from(await res.arrayBuffer()))
    .digest('hex')}`;
}

describe('registry endpoints published by discovery', () => {
  let dir: string;
  let nats: NatsServer;
  let origin: Registry;
  let mirror: Registry;
  let image: BuiltImage;
  let events: NatsConnection;
  const seen: ShoalEvent[] = [];
  const services: ShoalService[] = [];
  let zoneA: ShoalService;
  let zoneB: ShoalService;

  beforeAll(async () => {
    dir = await makeTempDir('endpoints');
    [nats, origin, mirror] = await Promise.all([
      startNats(),
      startRegistry({ name: 'origin' }),
      startRegistry({ name: 'mirror' }),
    ]);
    // The same seed gives the same layers: the mirror holds exactly what the registry holds.
    const build = (registry: Registry) =>
      buildAndPushImage({
        registry,
        repo: 'team/app',
        tag: 'v1',
        layers: 3,
        layerSize: 256 * 1024,
        seed: 'ep',
      });
    [image] = await Promise.all([build(origin), build(mirror)]);
    events = await connect({ servers: nats.url });
    events.subscribe(subjects.eventsAll, {
      callback: (_err, msg) => {
        seen.push(msg.json<ShoalEvent>());
      },
    });
    services.push(
      await startControlService('discovery', {
        natsUrl: nats.url,
        dir,
        extraArgs: [
          `--registries=${NAME}=${origin.url}`,
          `--mirrors=${NAME}@zone:zone-a=${mirror.url}`,
          '--endpoints-interval=300ms',
        ],
      }),
      await startControlService('announcer', { natsUrl: nats.url, dir }),
      await startControlService('scheduler', { natsUrl: nats.url, dir }),
    );
    const registries = [`${NAME}=${origin.url}`];
    zoneA = await startAgent({ id: 'a1', natsUrl: nats.url, registries, dir, zone: 'zone-a' });
    zoneB = await startAgent({ id: 'b1', natsUrl: nats.url, registries, dir, zone: 'zone-b' });
    services.push(zoneA, zoneB);
    await waitForNodes(nats.url, ['a1', 'b1']);
    for (const agent of [zoneA, zoneB]) {
      await waitFor(
        async () => metric(await agent.metrics(), 'shoal_agent_registry_endpoints', { registry: NAME }) === 2,
        { timeoutMs: 10_000, what: `${agent.name} to hear of both endpoints` },
      );
    }
  });

  afterAll(async () => {
    await Promise.allSettled(services.map((s) => s.stop()));
    await events?.close();
    await Promise.allSettled([origin?.stop(), mirror?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('sends a node of the mirror’s zone to the mirror, and others to the registry', async () => {
    const [layer] = image.layers;
    expect(await pull(zoneA, image.repo, layer!.digest)).toBe(layer!.digest);
    expect(mirror.blobGets(layer!.digest).length).toBeGreaterThan(0);
    expect(origin.blobGets(layer!.digest)).toHaveLength(0);

    const [, other] = image.layers;
    expect(await pull(zoneB, image.repo, other!.digest)).toBe(other!.digest);
    expect(origin.blobGets(other!.digest).length).toBeGreaterThan(0);
    expect(mirror.blobGets(other!.digest)).toHaveLength(0);
  });

  it('learns its zone from discovery’s topology when its configuration gives none', async () => {
    const unplaced = await startAgent({
      id: 'u1',
      natsUrl: nats.url,
      registries: [`${NAME}=${origin.url}`],
      dir,
      zone: '',
    });
    services.push(unplaced);
    await waitForNodes(nats.url, ['u1']);
    // What discovery writes in Kubernetes mode, from the node's labels.
    const record: TopologyRecord = {
      name: 'u1',
      zone: 'zone-a',
      region: '',
      vswitch: 'vsw-1',
      pool: '',
      ready: true,
      inMesh: true,
      agent: { state: 'running', restarts: 0, ready: true },
      updatedAt: Date.now(),
    };
    const kv = await new Kvm(events).create(buckets.topology, { history: 1 });
    await kv.put('u1', JSON.stringify(record));
    await waitFor(
      async () =>
        metric(await unplaced.metrics(), 'shoal_agent_registry_endpoints', { registry: NAME }) === 2,
      { timeoutMs: 10_000, what: 'u1 to hear of both endpoints' },
    );
    await waitFor(
      async () => {
        const health = (await (await fetch(`${unplaced.url}/healthz`)).json()) as {
          placement?: { zone: string };
        };
        return health.placement?.zone === 'zone-a';
      },
      { timeoutMs: 10_000, what: 'u1 to learn its zone' },
    );
    // A layer of its own, so that no peer holds it: the registry sees where u1 goes.
    const fresh = await buildAndPushImage({
      registry: mirror,
      repo: 'team/other',
      tag: 'v1',
      layers: 1,
      layerSize: 128 * 1024,
      seed: 'u1-only',
    });
    await buildAndPushImage({
      registry: origin,
      repo: 'team/other',
      tag: 'v1',
      layers: 1,
      layerSize: 128 * 1024,
      seed: 'u1-only',
    });
    const layer = fresh.layers[0]!;
    expect(await pull(unplaced, fresh.repo, layer.digest)).toBe(layer.digest);
    expect(mirror.blobGets(layer.digest).length).toBeGreaterThan(0);
    expect(origin.blobGets(layer.digest)).toHaveLength(0);
  });

  it('moves to the registry when the mirror fails, and says so', async () => {
    const layer = image.layers[2]!;
    mirror.setFault({ status5xxRatio: 1 });
    expect(await pull(zoneA, image.repo, layer.digest)).toBe(layer.digest);
    expect(origin.blobGets(layer.digest).length).toBeGreaterThan(0);
    const metrics = await zoneA.metrics();
    expect(metric(metrics, 'shoal_agent_registry_endpoint_switches_total', { registry: NAME })).toBe(1);
    expect(
      metric(metrics, 'shoal_agent_registry_endpoint_failures_total', { registry: NAME }),
    ).toBeGreaterThan(0);
    await waitFor(() => seen.some((e) => e.type === 'endpoint_switched'), {
      timeoutMs: 5_000,
      what: 'the event',
    });
    expect(seen.find((e) => e.type === 'endpoint_switched')).toMatchObject({
      node: 'a1',
      registry: NAME,
      from: mirror.url,
      to: origin.url,
      reason: expect.stringContaining('answered 503') as unknown,
    });
    // Discovery's health check notices too, and tells the mesh.
    await waitFor(
      () => seen.some((e) => e.type === 'endpoint_changed' && e.url === mirror.url && !e.healthy),
      { timeoutMs: 5_000, what: 'discovery to mark the mirror unhealthy' },
    );
    mirror.setFault();
  });
});
