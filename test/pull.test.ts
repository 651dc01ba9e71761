/**
 * The first whole slice of Shoal on real components: nats-server with JetStream, docker-registry behind
 * a counting proxy, an image built with umoci and pushed with skopeo, the control-plane services and
 * agents as real processes, and containerd's ctr pulling through hosts.toml mirrors.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  type BuiltImage,
  type Containerd,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  startContainerd,
  startNats,
  startRegistry,
  writeHostsToml,
} from './kit/index.js';
import {
  bytesServed,
  type ControlPlane,
  metric,
  metricSum,
  type ShoalService,
  startControlPlane,
  startPatientAgents,
  waitForHolders,
} from './support/shoal.js';

const MiB = 1024 * 1024;

describe('a real image pulled through the mesh', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let containerd: Containerd;
  let image: BuiltImage;
  const agents: ShoalService[] = [];

  beforeAll(async () => {
    dir = await makeTempDir('pull');
    [nats, registry, containerd] = await Promise.all([startNats(), startRegistry(), startContainerd()]);
    image = await buildAndPushImage({ registry, repo: 'team/app', tag: 'v1', layers: 4, layerSize: 6 * MiB });
    control = await startControlPlane(nats.url, dir, [registry.url]);
    agents.push(...(await startPatientAgents(nats.url, registry.url, dir, ['a', 'b'])));
  });

  afterAll(async () => {
    await Promise.allSettled(agents.map((a) => a.stop()));
    await control?.stop();
    await Promise.allSettled([containerd?.stop(), registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('pulls through agent A from the registry, then through agent B from agent A', async () => {
    const [a, b] = agents as [ShoalService, ShoalService];
    registry.clearRequests();
    // Under the suite's own dir, so a failing assertion still leaves nothing behind.
    const hostsA = join(dir, 'hosts-a');
    const hostsB = join(dir, 'hosts-b');
    await writeHostsToml(hostsA, registry.host, a.url);
    await writeHostsToml(hostsB, registry.host, b.url);

    const first = await containerd.pull({
      ref: image.ref,
      hostsDir: hostsA,
      namespace: containerd.newNamespace('a'),
    });
    expect(first.ok, first.stderr).toBe(true);
    // B's plan can only name A once A's announcements have reached the index.
    await waitForHolders(
      nats.url,
      'a',
      image.layers.map((l) => l.digest),
    );

    const second = await containerd.pull({
      ref: image.ref,
      hostsDir: hostsB,
      namespace: containerd.newNamespace('b'),
    });
    expect(second.ok, second.stderr).toBe(true);

    const mb = await b.metrics();
    const layerBytes = image.layers.reduce((sum, l) => sum + l.size, 0);
    const fromPeer = metric(mb, 'shoal_agent_client_bytes_total', { source: 'peer' });
    const total = metricSum(mb, 'shoal_agent_client_bytes_total');
    expect(total).toBeGreaterThanOrEqual(layerBytes);
    expect(fromPeer / layerBytes).toBeGreaterThanOrEqual(0.9);
    expect(metricSum(mb, 'shoal_agent_chunk_verify_failures_total')).toBe(0);
    const ma = await a.metrics();
    expect(metric(ma, 'shoal_agent_peer_upload_bytes_total')).toBeGreaterThanOrEqual(fromPeer * 0.99);

    expect(metricSum(ma, 'shoal_agent_fallbacks_total') + metricSum(mb, 'shoal_agent_fallbacks_total')).toBe(
      0,
    );
    // Each layer left the registry once in total, across both pulls.
    for (const layer of image.layers) expect(bytesServed(registry, layer.digest)).toBe(layer.size);
  });
});
