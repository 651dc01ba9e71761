/** Choosing a registry endpoint, and moving on to the next when one fails, over real HTTP. */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { EndpointCandidate, EndpointRecord } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EndpointSwitch, RegistryEndpoints } from '../src/endpoints.js';
import { Upstream } from '../src/upstream.js';
import { randomBlob, startFakeRegistry, type FakeRegistry } from './fake-registry.js';

const here = { zone: 'zone-a', region: 'region-1' };

function record(registry: string, endpoints: Partial<EndpointCandidate>[]): EndpointRecord {
  const full = endpoints.map((e) => ({ kind: 'mirror' as const, healthy: true, url: 'http://x', ...e }));
  return { registry, url: full[0]!.url, healthy: true, checkedAt: 0, source: 'static', endpoints: full };
}

describe('RegistryEndpoints.order', () => {
  it('prefers a mirror of this zone, then unscoped endpoints, then other zones; never another region', () => {
    const endpoints = new RegistryEndpoints([{ name: 'r', url: 'http://configured' }], here, 30_000);
    endpoints.update(
      'r',
      record('r', [
        { url: 'http://other-zone', zone: 'zone-b' },
        { url: 'http://registry', kind: 'registry' },
        { url: 'http://other-region', region: 'region-2' },
        { url: 'http://this-zone', zone: 'zone-a' },
        { url: 'http://this-region', region: 'region-1' },
      ]),
    );
    expect(endpoints.order({ name: 'r', url: 'http://configured' })).toEqual([
      'http://this-zone',
      'http://registry',
      'http://this-region',
      'http://other-zone',
      'http://configured',
    ]);
  });

  it('tries endpoints discovery found unhealthy after the healthy ones of the same rank', () => {
    const endpoints = new RegistryEndpoints([], here, 30_000);
    endpoints.update(
      'r',
      record('r', [
        { url: 'http://down', healthy: false },
        { url: 'http://up', healthy: true },
      ]),
    );
    expect(endpoints.order({ name: 'r', url: '' })).toEqual(['http://up', 'http://down']);
    expect(endpoints.lookup('r')).toEqual({ name: 'r', url: '' });
    endpoints.update('r', undefined);
    expect(endpoints.lookup('r')).toBeUndefined();
  });

  it('puts an endpoint this node failed with last until its cool-down ends, and reports switches', () => {
    let clock = 1_000;
    const switches: EndpointSwitch[] = [];
    const failures: string[] = [];
    const endpoints = new RegistryEndpoints(
      [{ name: 'r', url: 'http://b' }],
      here,
      30_000,
      { onSwitch: (s) => switches.push(s), onFailure: (_r, url) => failures.push(url) },
      () => clock,
    );
    endpoints.update('r', record('r', [{ url: 'http://a' }]));
    const target = endpoints.lookup('r')!;
    expect(endpoints.order(target)).toEqual(['http://a', 'http://b']);
    endpoints.succeeded('r', 'http://a');
    endpoints.failed('r', 'http://a', 'connection refused');
    expect(failures).toEqual(['http://a']);
    expect(endpoints.order(target)).toEqual(['http://b', 'http://a']);
    endpoints.succeeded('r', 'http://b');
    expect(switches).toEqual([
      { registry: 'r', from: 'http://a', to: 'http://b', reason: 'http://a failed: connection refused' },
    ]);
    clock += 30_000;
    expect(endpoints.order(target)).toEqual(['http://a', 'http://b']);
    endpoints.succeeded('r', 'http://a');
    expect(switches.at(-1)).toMatchObject({ from: 'http://b', to: 'http://a' });
    expect(endpoints.active()).toEqual({ r: 'http://a' });
  });
});

describe('RegistryEndpoints.place', () => {
  it('takes zone and region from the cluster where the configuration leaves them empty', () => {
    const endpoints = new RegistryEndpoints(
      [{ name: 'r', url: 'http://registry' }],
      { zone: '', region: '' },
      1,
    );
    endpoints.update(
      'r',
      record('r', [
        { url: 'http://zone-b', zone: 'zone-b' },
        { url: 'http://zone-a', zone: 'zone-a' },
      ]),
    );
    const target = endpoints.lookup('r')!;
    expect(endpoints.order(target)[0]).toBe('http://zone-b');
    endpoints.place({ zone: 'zone-a', region: 'region-1' });
    expect(endpoints.placement).toEqual({ zone: 'zone-a', region: 'region-1' });
    expect(endpoints.order(target)[0]).toBe('http://zone-a');
    const configured = new RegistryEndpoints([], { zone: 'zone-b', region: '' }, 1);
    configured.place({ zone: 'zone-a', region: 'region-1' });
    expect(configured.placement).toEqual({ zone: 'zone-b', region: 'region-1' });
  });
});

describe('Upstream failover', () => {
  let registry: FakeRegistry;
  let failing: Server;
  let failingUrl: string;
  let failingHits = 0;
  let refusedUrl: string;

  beforeAll(async () => {
    registry = await startFakeRegistry();
    failing = createServer((_req, res) => {
      failingHits++;
      res.writeHead(503, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAVAILABLE","message":"down"}]}');
    });
    await new Promise<void>((resolve) => failing.listen(0, '127.0.0.1', resolve));
    failingUrl = `http://127.0.0.1:${(failing.address() as AddressInfo).port}`;
    // A port that was just free: nothing listens on it, so connections are refused.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    refusedUrl = `http://127.0.0.1:${(probe.address() as AddressInfo).port}`;
    await new Promise<void>((resolve) => probe.close(() => resolve()));
  });

  afterAll(async () => {
    await registry.close();
    await new Promise<void>((resolve) => failing.close(() => resolve()));
  });

  it('fetches from the next endpoint when one refuses connections or answers 503', async () => {
    const switches: EndpointSwitch[] = [];
    const endpoints = new RegistryEndpoints([{ name: 'reg', url: registry.url }], here, 60_000, {
      onSwitch: (s) => switches.push(s),
    });
    endpoints.update(
      'reg',
      record('reg', [
        { url: refusedUrl, zone: 'zone-a' },
        { url: failingUrl, kind: 'registry' },
      ]),
    );
    const upstream = new Upstream({ endpoints, timeoutMs: 2_000, authCacheMs: 0 });
    try {
      const blob = randomBlob(100_000);
      const digest = registry.addBlob(blob);
      const target = upstream.resolve('reg');
      const into = Buffer.alloc(1000);
      await upstream.fetchRange(target, 'lib/app', digest, 500, into, undefined);
      expect(into.equals(blob.subarray(500, 1500))).toBe(true);
      expect(failingHits).toBe(1);
      expect(endpoints.active()).toEqual({ reg: registry.url });
      // Both failed endpoints now wait out their cool-down: the next request goes straight to the registry.
      expect(endpoints.order(target)).toEqual([registry.url, refusedUrl, failingUrl]);
      await upstream.fetchRange(target, 'lib/app', digest, 0, into, undefined);
      expect(failingHits).toBe(1);
      expect(switches).toEqual([]);
    } finally {
      await upstream.close();
    }
  });

  it('gives the last endpoint’s answer when every endpoint fails', async () => {
    const endpoints = new RegistryEndpoints([{ name: 'reg', url: failingUrl }], here, 60_000);
    endpoints.update('reg', record('reg', [{ url: refusedUrl }]));
    const upstream = new Upstream({ endpoints, timeoutMs: 2_000, authCacheMs: 0 });
    try {
      const res = await upstream.send(upstream.resolve('reg'), 'GET', '/v2/', {});
      expect(res.status).toBe(503);
      await res.body.dump();
      const only = new RegistryEndpoints([{ name: 'reg', url: refusedUrl }], here, 60_000);
      const alone = new Upstream({ endpoints: only, timeoutMs: 2_000, authCacheMs: 0 });
      await expect(alone.send(alone.resolve('reg'), 'GET', '/v2/', {})).rejects.toThrow(
        new RegExp(`registry reg at ${refusedUrl}: .*ECONNREFUSED`),
      );
      await alone.close();
    } finally {
      await upstream.close();
    }
  });

  it('mirrors a registry known only from discovery, and refuses one nobody named', async () => {
    const endpoints = new RegistryEndpoints([], here, 60_000);
    const upstream = new Upstream({ endpoints, timeoutMs: 2_000, authCacheMs: 0 });
    try {
      expect(() => upstream.resolve('published.example')).toThrow(/not mirrored by this agent/);
      endpoints.update('published.example', record('published.example', [{ url: registry.url }]));
      const res = await upstream.send(upstream.resolve('published.example'), 'GET', '/v2/', {});
      expect(res.status).toBe(200);
      await res.body.dump();
    } finally {
      await upstream.close();
    }
  });
});
