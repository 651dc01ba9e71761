import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  basicAuth,
  buildAndPushImage,
  freePort,
  makeTempDir,
  removeTempDir,
  startContainerd,
  startNats,
  startProcess,
  startRegistry,
  waitFor,
  writeHostsToml,
  type BuiltImage,
  type Containerd,
  type NatsServer,
  type Registry,
} from './index.js';

const MiB = 1024 * 1024;

/** Reads the INFO line a NATS server sends on connect, which describes its limits and features. */
async function natsInfo(port: number): Promise<Record<string, unknown>> {
  return await new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let buffer = '';
    socket.setTimeout(5_000, () => {
      socket.destroy();
      reject(new Error('no INFO from NATS'));
    });
    socket.on('error', reject);
    socket.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('utf8');
      const end = buffer.indexOf('\r\n');
      if (end < 0) return;
      socket.destroy();
      resolve(JSON.parse(buffer.slice('INFO '.length, end)) as Record<string, unknown>);
    });
  });
}

describe('test kit', () => {
  let nats: NatsServer;
  let registry: Registry;
  let authRegistry: Registry;
  let containerd: Containerd;
  let image: BuiltImage;
  let hostsDir: string;

  beforeAll(async () => {
    [nats, registry, authRegistry, containerd, hostsDir] = await Promise.all([
      startNats(),
      startRegistry(),
      startRegistry({ auth: { users: { alice: 'wonderland' } } }),
      startContainerd(),
      makeTempDir('hosts'),
    ]);
    image = await buildAndPushImage({ registry, repo: 'kit/app', tag: 'v1', layers: 2, layerSize: MiB });
  });

  afterAll(async () => {
    // Each stop is independent, so one failing start does not leave the others running.
    await Promise.allSettled([nats?.stop(), registry?.stop(), authRegistry?.stop(), containerd?.stop()]);
    if (hostsDir !== undefined) await removeTempDir(hostsDir);
  });

  it('runs processes, waits for their output, pauses and stops them by PID', async () => {
    const ticker = await startProcess({
      name: 'ticker',
      cmd: process.execPath,
      args: ['-e', 'let n = 0; console.log("ready"); setInterval(() => console.log("tick " + n++), 20);'],
    });
    await ticker.waitForLine(/^ready$/);
    await ticker.waitForLine(/^tick 2$/);
    ticker.pause();
    // Output already in the pipe may still arrive just after SIGSTOP, so let it settle first.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const frozen = ticker.lines().length;
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(ticker.lines().length).toBe(frozen);
    ticker.resume();
    await waitFor(() => ticker.lines().length > frozen, { what: 'ticks after resume' });
    // Stopping a paused process must work too, so pause again before stopping.
    ticker.pause();
    const exit = await ticker.stop();
    expect(exit.signal).toBe('SIGTERM');
    expect(ticker.running()).toBe(false);

    await expect(startProcess({ name: 'missing', cmd: '/nonexistent/binary' })).rejects.toThrow(
      /cannot start/,
    );
  });

  it('starts NATS with JetStream and 8 MB payloads, and restarts it on the same port', async () => {
    const info = await natsInfo(nats.port);
    expect(info['jetstream']).toBe(true);
    expect(info['max_payload']).toBe(8 * MiB);
    const firstPid = nats.process().pid;
    await nats.restart();
    expect(nats.process().pid).not.toBe(firstPid);
    expect((await natsInfo(nats.port))['jetstream']).toBe(true);
    await nats.restart({ kill: true });
    expect((await natsInfo(nats.port))['jetstream']).toBe(true);
  });

  it('counts registry requests without recording credentials', async () => {
    expect((await fetch(`${registry.url}/v2/`)).status).toBe(200);
    expect((await fetch(`${authRegistry.url}/v2/`)).status).toBe(401);
    const authed = await fetch(`${authRegistry.url}/v2/`, {
      headers: { authorization: basicAuth('alice', 'wonderland') },
    });
    expect(authed.status).toBe(200);
    const wrong = await fetch(`${authRegistry.url}/v2/`, {
      headers: { authorization: basicAuth('alice', 'nope') },
    });
    expect(wrong.status).toBe(401);
    const seen = authRegistry.requests().filter((r) => r.path === '/v2/');
    expect(seen.map((r) => [r.status, r.auth])).toEqual([
      [401, false],
      [200, true],
      [401, true],
    ]);
    expect(JSON.stringify(seen)).not.toContain('wonderland');
  });

  it('serves ranges and injects faults through the proxy', async () => {
    const layer = image.layers[0]!;
    const blobUrl = `${registry.url}/v2/${image.repo}/blobs/${layer.digest}`;
    const ranged = await fetch(blobUrl, { headers: { range: 'bytes=0-1023' } });
    expect(ranged.status).toBe(206);
    expect((await ranged.arrayBuffer()).byteLength).toBe(1024);
    const rangedEntry = registry.blobGets(layer.digest).at(-1)!;
    expect(rangedEntry).toMatchObject({ status: 206, range: 'bytes=0-1023', bytes: 1024, complete: true });

    registry.setFault({ status5xxRatio: 1, match: /\/blobs\// });
    const failed = await fetch(blobUrl);
    expect(failed.status).toBe(503);
    expect(((await failed.json()) as { errors: { code: string }[] }).errors[0]?.code).toBe('UNAVAILABLE');
    registry.setFault({ resetRatio: 1, match: /\/blobs\// });
    await expect(fetch(blobUrl)).rejects.toThrow();
    registry.setFault({ delayMs: 150 });
    const started = Date.now();
    expect((await fetch(`${registry.url}/v2/`)).status).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    registry.setFault({ bytesPerSecond: 4 * MiB, match: /\/blobs\// });
    const slowStart = Date.now();
    expect((await (await fetch(blobUrl)).arrayBuffer()).byteLength).toBe(layer.size);
    expect(Date.now() - slowStart).toBeGreaterThanOrEqual(200);
    registry.setFault();

    const faults = registry.requests().filter((r) => r.fault !== undefined);
    expect(faults.map((r) => r.fault)).toEqual(['5xx', 'reset']);
    // Faulted requests never reached the registry, so they are not counted as blob downloads.
    expect(registry.blobGets(layer.digest)).toHaveLength(2);
  });

  it('builds an image whose layers are incompressible and sized as asked', () => {
    expect(image.ref).toBe(`${registry.host}/kit/app:v1`);
    expect(image.manifestDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(image.layers).toHaveLength(2);
    for (const layer of image.layers) {
      expect(layer.size).toBeGreaterThan(MiB);
      expect(layer.size).toBeLessThan(MiB * 1.01);
    }
    expect(new Set(image.layers.map((l) => l.digest)).size).toBe(2);
  });

  it('pulls with containerd straight from the registry when the mirror is down', async () => {
    const closedPort = await freePort();
    await writeHostsToml(hostsDir, registry.host, `http://127.0.0.1:${closedPort}`);
    registry.clearRequests();
    const ns = containerd.newNamespace();

    const first = await containerd.pull({ ref: image.ref, hostsDir, namespace: ns });
    expect(first.ok, first.stderr).toBe(true);
    expect(await containerd.images(ns)).toEqual([image.ref]);
    for (const layer of image.layers) expect(registry.blobGets(layer.digest)).toHaveLength(1);
    expect(registry.blobGets(image.config.digest)).toHaveLength(1);

    // Blobs already in the namespace are not downloaded again, even after the image is gone,
    // until garbage collection removed them; removeImage waits for exactly that.
    await containerd.removeImage(image.ref, ns);
    expect(await containerd.content(ns)).toEqual([]);
    const second = await containerd.pull({ ref: image.ref, hostsDir, namespace: ns });
    expect(second.ok, second.stderr).toBe(true);
    for (const layer of image.layers) expect(registry.blobGets(layer.digest)).toHaveLength(2);

    // A fresh namespace does not see the other namespace's content, so it downloads everything.
    const other = await containerd.pull({ ref: image.ref, hostsDir, namespace: containerd.newNamespace() });
    expect(other.ok, other.stderr).toBe(true);
    for (const layer of image.layers) expect(registry.blobGets(layer.digest)).toHaveLength(3);
  });

  it('pulls from a registry that requires basic auth', async () => {
    const secured = await buildAndPushImage({
      registry: authRegistry,
      repo: 'kit/secured',
      tag: 'v1',
      layers: 1,
      layerSize: 256 * 1024,
      // Pushing through the proxy checks that uploads stream through it and that the upload
      // locations the registry hands out point back at the proxy.
      pushThroughProxy: true,
    });
    const uploads = authRegistry.requests().filter((r) => r.method === 'PUT' && r.status === 201);
    // One PUT completes each blob upload (layer and config), and one stores the manifest.
    expect(uploads).toHaveLength(3);
    expect(uploads.every((r) => r.auth)).toBe(true);
    authRegistry.clearRequests();
    const anonymous = await containerd.pull({ ref: secured.ref, namespace: containerd.newNamespace() });
    expect(anonymous.ok).toBe(false);
    const pulled = await containerd.pull({
      ref: secured.ref,
      namespace: containerd.newNamespace(),
      user: 'alice:wonderland',
    });
    expect(pulled.ok, pulled.stderr).toBe(true);
    const gets = authRegistry.blobGets(secured.layers[0]!.digest);
    expect(gets).toHaveLength(1);
    expect(gets[0]!.auth).toBe(true);
  });
});
