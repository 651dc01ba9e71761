/**
 * The local mesh: every server is real and runs on loopback ports in a temp dir. After the pulls it
 * prints, for each node and layer, where the chunks came from and how long the layer took, using
 * `shoalctl pulls` on the event stream, as an operator would.
 */
import { join } from 'node:path';
import {
  buildAndPushImage,
  makeTempDir,
  removeTempDir,
  runCommand,
  startContainerd,
  startNats,
  startRegistry,
  writeHostsToml,
} from '../test/kit/index.js';
import {
  shoalctlMain,
  startAgent,
  startControlPlane,
  waitForHolders,
  waitForNodes,
} from '../test/support/shoal.js';

const MiB = 1024 * 1024;
const keep = process.argv.includes('--keep');
const say = (text: string) => process.stdout.write(`${text}\n`);

const dir = await makeTempDir('up');
say(`shoal: local mesh in ${dir}`);
const [nats, registry, containerd] = await Promise.all([startNats(), startRegistry(), startContainerd()]);
const stops: (() => Promise<unknown>)[] = [() => nats.stop(), () => registry.stop(), () => containerd.stop()];
const shutdown = async () => {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
  await removeTempDir(dir);
};
process.on('SIGINT', () => void shutdown().then(() => process.exit(130)));

try {
  say(`shoal: nats ${nats.url}, registry ${registry.url}`);
  const image = await buildAndPushImage({
    registry,
    repo: 'demo/app',
    tag: 'v1',
    layers: 4,
    layerSize: 16 * MiB,
  });
  say(
    `shoal: pushed ${image.ref} (${image.layers.length} layers, ${(image.layersSize / MiB).toFixed(1)} MiB)`,
  );

  const control = await startControlPlane(nats.url, dir, [registry.url]);
  stops.push(() => control.stop());
  const topology = [
    { id: 'node-a', zone: 'zone-1', vswitch: 'vsw-1' },
    { id: 'node-b', zone: 'zone-1', vswitch: 'vsw-1' },
    { id: 'node-c', zone: 'zone-2', vswitch: 'vsw-2' },
  ];
  const agents = [];
  for (const node of topology) {
    const agent = await startAgent({ ...node, natsUrl: nats.url, registries: [registry.url], dir });
    stops.push(() => agent.stop());
    agents.push(agent);
    say(`shoal: agent ${node.id} (${node.zone}/${node.vswitch}) at ${agent.url}`);
  }
  await waitForNodes(
    nats.url,
    topology.map((n) => n.id),
  );

  for (const [index, agent] of agents.slice(0, 2).entries()) {
    const node = topology[index]!;
    const hostsDir = join(dir, `hosts-${node.id}`);
    await writeHostsToml(hostsDir, registry.host, agent.url);
    say(`\nshoal: ctr pull ${image.ref} through ${node.id}`);
    const result = await containerd.pull({
      ref: image.ref,
      hostsDir,
      namespace: containerd.newNamespace(node.id),
    });
    if (!result.ok)
      throw new Error(`pull through ${node.id} failed: ${result.stderr.trim().split('\n').pop() ?? ''}`);
    say(`shoal: pulled in ${(result.ms / 1000).toFixed(2)} s`);
    await waitForHolders(
      nats.url,
      node.id,
      image.layers.map((l) => l.digest),
    );
    const report = await runCommand(process.execPath, [
      shoalctlMain,
      'pulls',
      `--nats-servers=${nats.url}`,
      `--node=${node.id}`,
    ]);
    process.stdout.write(report.stdout || report.stderr);
  }
  const served = registry
    .requests()
    .filter((r) => r.method === 'GET' && r.path.includes('/blobs/'))
    .reduce((sum, r) => sum + r.bytes, 0);
  say(
    `\nshoal: the registry sent ${(served / MiB).toFixed(1)} MiB of blobs for two pulls of ${(image.layersSize / MiB).toFixed(1)} MiB`,
  );

  if (keep) {
    say(`\nshoal: mesh left running; try: node services/ctl/dist/main.js events --nats-servers=${nats.url}`);
    say('shoal: press Ctrl-C to stop it');
    await new Promise(() => undefined);
  }
} catch (err) {
  process.stderr.write(`shoal: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
}
await shutdown();
