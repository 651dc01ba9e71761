/**
 * Docker nodes: the agent serves registries by their "distributed" host name on a second port, the way
 * a node whose /etc/hosts points that name at itself pulls through it.
 */
import { createHash } from 'node:crypto';
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  type BuiltImage,
  freePort,
  MANIFEST_ACCEPT,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  startNats,
  startRegistry,
} from './kit/index.js';
import { type ShoalService, startAgent } from './support/shoal.js';

/** A GET with the Host header Docker would send; fetch does not let a caller set it. */
function get(
  port: number,
  path: string,
  host: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { ...headers, host } }, (res) => {
      const pieces: Buffer[] = [];
      res.on('data', (piece: Buffer) => pieces.push(piece));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(pieces) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('the distributed host names for Docker nodes', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let image: BuiltImage;
  let agent: ShoalService;
  let port: number;

  beforeAll(async () => {
    dir = await makeTempDir('docker-mode');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
    image = await buildAndPushImage({ registry, repo: 'team/app', tag: 'v1', layers: 1, layerSize: 300_000 });
    port = await freePort();
    agent = await startAgent({
      id: 'docker-node',
      natsUrl: nats.url,
      registries: [`registry.shoal.test=${registry.url}`],
      dir,
      extraArgs: [`--distributed-port=${port}`],
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('serves a registry by its distributed name, and nothing by another name', async () => {
    const layer = image.layers[0]!;
    const path = `/v2/${image.repo}/blobs/${layer.digest}`;
    const res = await get(port, path, `registry-distributed.shoal.test:${port}`);
    expect(res.status).toBe(200);
    expect(`sha256:${createHash('sha256').update(res.body).digest('hex')}`).toBe(layer.digest);
    expect(registry.blobGets(layer.digest).length).toBeGreaterThan(0);

    const manifest = await get(
      port,
      `/v2/${image.repo}/manifests/v1`,
      `registry-distributed.shoal.test:${port}`,
      { accept: MANIFEST_ACCEPT },
    );
    expect(manifest.status).toBe(200);

    const other = await get(port, path, `elsewhere-distributed.shoal.test:${port}`);
    expect(other.status).toBe(400);
    expect(other.body.toString()).toMatch(/not mirrored by this agent/);
  });
});
