/**
 * Registry endpoints: the static provider's configuration, and the publisher keeping the endpoints
 * bucket true on a real nats-server while registries and providers come and go.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  createLogger,
  decode,
  endpointKey,
  endpointRecord,
  type EndpointRecord,
  memoryEventPublisher,
  type MeshBuckets,
  openBuckets,
} from '@shoal/mesh';
import { startNatsServer, type NatsServer } from '@shoal/mesh/testing';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEndpointPublisher, type EndpointProvider } from '../src/endpoint-publisher.js';
import { type EndpointTarget, staticTargets } from '../src/endpoints.js';
import { createDiscoveryMetrics } from '../src/metrics.js';

describe('staticTargets', () => {
  it('lists each registry with its mirrors first, scoped by zone or region', () => {
    expect(
      staticTargets(
        ['https://registry.example.com', 'hub=http://10.0.0.9:5000/'],
        [
          'registry.example.com@zone:zone-a=http://10.0.1.5:5000',
          'registry.example.com@region:region-1=https://vpc.example.com',
          'hub=http://hub-mirror:5000',
        ],
      ),
    ).toEqual([
      {
        registry: 'registry.example.com',
        source: 'static',
        candidates: [
          { url: 'http://10.0.1.5:5000', kind: 'mirror', zone: 'zone-a' },
          { url: 'https://vpc.example.com', kind: 'mirror', region: 'region-1' },
          { url: 'https://registry.example.com', kind: 'registry' },
        ],
      },
      {
        registry: 'hub',
        source: 'static',
        candidates: [
          { url: 'http://hub-mirror:5000', kind: 'mirror' },
          { url: 'http://10.0.0.9:5000', kind: 'registry' },
        ],
      },
    ]);
  });

  it.each([
    [['http://a:1', 'http://a:1'], [], /^registries: "a:1" is listed twice$/],
    [
      ['http://a:1'],
      ['b=http://m:1'],
      /^mirrors: "b=http:\/\/m:1" names registry "b", which is not in registries$/,
    ],
    [
      ['http://a:1'],
      ['a@rack:1=http://m:1'],
      /^mirrors: "a@rack:1=http:\/\/m:1" is not name\[@zone:Z\|@region:R\]=URL/,
    ],
    [
      ['http://a:1'],
      ['a:1=http://m:1/path'],
      /^mirrors: "a:1=http:\/\/m:1\/path": "http:\/\/m:1\/path" is not an/,
    ],
  ])('refuses %j %j naming the key', (registries, mirrors, message) => {
    expect(() => staticTargets(registries, mirrors)).toThrow(message);
  });
});

describe('endpoint publisher', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let buckets: MeshBuckets;
  const servers: Server[] = [];
  const status = new Map<string, number>();

  async function registryStub(name: string): Promise<string> {
    status.set(name, 200);
    const server = createServer((_req, res) => {
      res.writeHead(status.get(name) ?? 500);
      res.end('{}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    servers.push(server);
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function read(registry: string): Promise<EndpointRecord | undefined> {
    const entry = await buckets.endpoints.get(endpointKey(registry));
    return entry?.operation === 'PUT' ? decode(endpointRecord, entry.value, registry) : undefined;
  }

  beforeAll(async () => {
    nats = await startNatsServer();
    nc = await connect({ servers: nats.url });
    buckets = await openBuckets(nc);
  });

  afterAll(async () => {
    for (const server of servers) server.close();
    await nc?.close();
    await nats?.stop();
  });

  function publisher(staticList: EndpointTarget[], providers: EndpointProvider[]) {
    const registry = new Registry();
    const events = memoryEventPublisher('test');
    const made = createEndpointPublisher({
      kv: () => buckets.endpoints,
      static: staticList,
      providers,
      intervalMs: 60_000,
      timeoutMs: 1_000,
      retryMs: 20,
      events,
      metrics: createDiscoveryMetrics(registry, () => 0),
      log: createLogger('test', 'silent'),
    });
    return { publisher: made, events: events.events, registry };
  }

  it('publishes every endpoint with its health, and an event when one changes', async () => {
    const mirror = await registryStub('mirror');
    const origin = await registryStub('origin');
    const { publisher: p, events } = publisher(
      staticTargets([`reg.test=${origin}`], [`reg.test@zone:zone-a=${mirror}`]),
      [],
    );
    await p.start();
    try {
      expect(await read('reg.test')).toMatchObject({
        registry: 'reg.test',
        url: mirror,
        healthy: true,
        source: 'static',
        endpoints: [
          { url: mirror, kind: 'mirror', zone: 'zone-a', healthy: true },
          { url: origin, kind: 'registry', healthy: true },
        ],
      });
      expect(events).toEqual([]);
      status.set('mirror', 503);
      await p.check();
      const record = await read('reg.test');
      expect(record).toMatchObject({ url: origin, healthy: true });
      expect(record?.endpoints[0]).toMatchObject({ healthy: false, error: 'GET /v2/ answered 503' });
      expect(events).toMatchObject([
        { type: 'endpoint_changed', registry: 'reg.test', url: mirror, healthy: false },
      ]);
      status.set('mirror', 200);
      await p.check();
      expect(events.at(-1)).toMatchObject({ url: mirror, healthy: true, reason: 'answers again' });
    } finally {
      await p.stop();
    }
  });

  it('puts a registry instance’s VPC endpoint before the same registry’s configured URL', async () => {
    const vpc = await registryStub('merge-vpc');
    const origin = await registryStub('merge-origin');
    const mirror = await registryStub('merge-mirror');
    const provider: EndpointProvider = {
      name: 'instance cri-m',
      refreshMs: 60_000,
      fetch: () =>
        Promise.resolve([
          { registry: 'merge.test', source: 'instance:cri-m', candidates: [{ url: vpc, kind: 'vpc' }] },
        ]),
    };
    const { publisher: p } = publisher(
      staticTargets([`merge.test=${origin}`], [`merge.test@zone:zone-a=${mirror}`]),
      [provider],
    );
    await p.start();
    try {
      expect((await read('merge.test'))?.endpoints.map((e) => e.kind)).toEqual(['mirror', 'vpc', 'registry']);
    } finally {
      await p.stop();
    }
  });

  it('keeps a failing provider’s last good endpoints, retries with backoff, and prunes what it drops', async () => {
    const vpc = await registryStub('vpc');
    const internet = await registryStub('internet');
    let answer: EndpointTarget[] | Error = [
      {
        registry: 'inst.test',
        source: 'instance:cri-1',
        candidates: [
          { url: vpc, kind: 'vpc' },
          { url: internet, kind: 'internet' },
        ],
      },
      { registry: 'inst-vpc.test', source: 'instance:cri-1', candidates: [{ url: vpc, kind: 'vpc' }] },
    ];
    let calls = 0;
    const provider: EndpointProvider = {
      name: 'instance cri-1',
      refreshMs: 100,
      fetch: () => {
        calls++;
        return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);
      },
    };
    const { publisher: p, registry } = publisher([], [provider]);
    await p.start();
    try {
      expect((await read('inst.test'))?.endpoints.map((e) => e.kind)).toEqual(['vpc', 'internet']);
      expect(await read('inst-vpc.test')).toMatchObject({ source: 'instance:cri-1' });

      answer = new Error('InvalidAccessKeyId.NotFound');
      const before = calls;
      await new Promise((r) => setTimeout(r, 400));
      // Retried sooner than the 100 ms refresh: 20 ms, 40 ms, 80 ms…, capped at the refresh interval.
      expect(calls - before).toBeGreaterThanOrEqual(3);
      const errors = (await registry.getSingleMetric('shoal_discovery_provider_errors_total')!.get()).values;
      expect(errors[0]?.value).toBeGreaterThanOrEqual(3);
      await p.check();
      expect(await read('inst.test')).toMatchObject({ healthy: true });

      answer = [
        {
          registry: 'inst.test',
          source: 'instance:cri-1',
          candidates: [{ url: internet, kind: 'internet' }],
        },
      ];
      await new Promise((r) => setTimeout(r, 300));
      await p.check();
      expect((await read('inst.test'))?.endpoints.map((e) => e.kind)).toEqual(['internet']);
      expect(await read('inst-vpc.test')).toBeUndefined();
    } finally {
      await p.stop();
    }
  });
});
