/**
 * `npm run bench:swarm`: many nodes pull one image at once on an emulated cluster network (namespaces,
 * bridges, tbf; see network.ts), and each node's completion time is compared with the bound
 * T_min = max(F/u_origin, F/d_min, N·F/(u_origin + Σu_i)).
 *
 *   npm run bench:swarm -- [--zones 2] [--vswitches 2] [--nodes-per-vswitch 6] [--node-mbit 50]
 *                          [--registry-mbit 100] [--cross-zone-mbit 200] [--layers 4] [--layer-mib 16]
 *                          [--stagger-s 0] [--scenarios direct,shoal] [--out results/swarm]
 *                          [--agent-args "--scheduler-timeout=5s"]
 *
 * Scenarios: **direct** — every node pulls every layer from the registry itself; **shoal** — NATS and the
 * control plane on the registry host, an agent on every node host, every node pulling through its agent's
 * mirror API.
 *
 * The image is built and pushed to a registry on loopback with the test kit; a second docker-registry
 * in the registry host's namespace serves the same storage over the emulated network, so what leaves
 * the registry host is counted on its interface. Every namespace and process is removed at the end,
 * also on interrupt.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  buildAndPushImage,
  type BuiltImage,
  makeTempDir,
  removeTempDir,
  runCommand,
  startProcess,
  startRegistry,
  type ManagedProcess,
} from '../../kit/index.js';
import { serviceMain } from '../../support/shoal.js';
import { rolloutColumns, table } from '../report.js';
import { buildNetwork, type Host, type Network, type NetworkShape } from './network.js';

const MiB = 1024 * 1024;

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? undefined : process.argv[i + 1];
}
function num(name: string, def: number): number {
  const raw = flag(name);
  if (raw === undefined) return def;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    process.stderr.write(`--${name}: expected a non-negative number, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return value;
}

const shape: NetworkShape = {
  zones: num('zones', 2),
  vswitchesPerZone: num('vswitches', 2),
  nodesPerVswitch: num('nodes-per-vswitch', 6),
  nodeMbit: num('node-mbit', 50),
  registryMbit: num('registry-mbit', 100),
  crossZoneMbit: num('cross-zone-mbit', 200),
};
const layers = num('layers', 4);
const layerSize = num('layer-mib', 16) * MiB;
const staggerS = num('stagger-s', 0);
const scenarios = (flag('scenarios') ?? 'direct,shoal').split(',');
const outDir = flag('out') ?? join('results', 'swarm');
/** Extra agent flags, space-separated, e.g. --agent-args "--scheduler-timeout=5s". */
const agentArgs = (flag('agent-args') ?? '').split(' ').filter((a) => a !== '');
for (const scenario of scenarios) {
  if (scenario !== 'direct' && scenario !== 'shoal') {
    process.stderr.write(
      `--scenarios: unknown scenario ${JSON.stringify(scenario)} (known: direct, shoal)\n`,
    );
    process.exit(2);
  }
}

const REGISTRY_PORT = 5000;
const clientScript = join(import.meta.dirname, 'client.mjs');

export interface ScenarioResult {
  scenario: string;
  /** Seconds from each node's start to its last byte, in node order. */
  completions: number[];
  failedNodes: number;
  registryBytes: number;
  crossZoneBytesPerZone: number[];
  /** Shoal only: pulls' fallbacks to the registry, summed over the agents, by reason. */
  fallbacks?: Record<string, number>;
}

function boundSeconds(imageBytes: number, nodes: number): number {
  const bytesPerSecond = (mbit: number) => (mbit * 1e6) / 8;
  const up = bytesPerSecond(shape.nodeMbit);
  const origin = bytesPerSecond(shape.registryMbit);
  return Math.max(imageBytes / origin, imageBytes / up, (nodes * imageBytes) / (origin + nodes * up));
}

/** docker-registry in the registry host's namespace, serving the storage the image was pushed to. */
async function serveRegistry(network: Network, storageDir: string, dir: string): Promise<ManagedProcess> {
  const config = join(dir, 'registry.yml');
  await writeFile(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${JSON.stringify(storageDir)}`,
      'http:',
      `  addr: 0.0.0.0:${REGISTRY_PORT}`,
      'health:',
      '  storagedriver:',
      '    enabled: false',
      '',
    ].join('\n'),
  );
  const [cmd, args] = network.exec(network.registry, 'docker-registry', ['serve', config]);
  const proc = await startProcess({
    name: 'swarm-registry',
    cmd,
    args,
    logFile: join(dir, 'registry.log'),
  });
  await waitServing(network, proc, `http://${network.registry.ip}:${REGISTRY_PORT}/v2/`);
  return proc;
}

/** Waits until a node host can GET `url` (any status below 500 but 503 counts), or fails with the log. */
async function waitServing(network: Network, proc: ManagedProcess, url: string): Promise<void> {
  const probe = `fetch('${url}').then((r) => process.exit(r.status < 500 || r.status === 503 ? 0 : 1), () => process.exit(1))`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const [cmd, args] = network.exec(network.nodes[0]!, process.execPath, ['-e', probe]);
    if ((await runCommand(cmd, args, { timeoutMs: 5_000 })).ok) return;
    if (Date.now() > deadline || !proc.running()) {
      await proc.stop();
      throw new Error(`${proc.name} did not come up at ${url}: ${proc.tail(20)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Starts a process inside a host's namespace, logging to `dir`. */
async function startIn(
  network: Network,
  host: Host,
  name: string,
  cmd: string,
  args: string[],
  dir: string,
  env: Record<string, string> = {},
): Promise<ManagedProcess> {
  const [wrapped, wrappedArgs] = network.exec(host, cmd, args);
  return startProcess({ name, cmd: wrapped, args: wrappedArgs, logFile: join(dir, `${name}.log`), env });
}

/**
 * Runs the client on every node at once (or spread over --stagger-s) against the URLs per node, and
 * counts what left the registry host and each zone meanwhile.
 */
async function pullEverywhere(
  network: Network,
  urlsFor: (node: Host) => string[],
): Promise<Omit<ScenarioResult, 'scenario'>> {
  const zoneBytes = () =>
    Promise.all(Array.from({ length: shape.zones }, (_, z) => network.zoneEgressBytes(z)));
  const registryBefore = await network.registryEgressBytes();
  const zonesBefore = await zoneBytes();
  const results = await Promise.all(
    network.nodes.map(async (node, i) => {
      const delayMs = staggerS > 0 ? Math.round((i / network.nodes.length) * staggerS * 1000) : 0;
      const [cmd, args] = network.exec(node, process.execPath, [
        clientScript,
        JSON.stringify({ urls: urlsFor(node), delayMs }),
      ]);
      const result = await runCommand(cmd, args, { timeoutMs: 30 * 60_000 });
      const parsed = result.ok ? (JSON.parse(result.stdout) as { ms: number; failed: number }) : undefined;
      if (!parsed || parsed.failed > 0) process.stderr.write(`${node.ns}: ${result.stderr.trim()}\n`);
      return parsed && parsed.failed === 0 ? parsed.ms / 1000 : Number.NaN;
    }),
  );
  const registryBytes = (await network.registryEgressBytes()) - registryBefore;
  const zonesAfter = await zoneBytes();
  return {
    completions: results,
    failedNodes: results.filter((r) => Number.isNaN(r)).length,
    registryBytes,
    crossZoneBytesPerZone: zonesAfter.map((after, z) => after - (zonesBefore[z] ?? 0)),
  };
}

async function runDirect(network: Network, image: BuiltImage): Promise<ScenarioResult> {
  const pulled = await pullEverywhere(network, () =>
    image.layers.map(
      (l) => `http://${network.registry.ip}:${REGISTRY_PORT}/v2/${image.repo}/blobs/${l.digest}`,
    ),
  );
  return { scenario: 'direct', ...pulled };
}

const NATS_PORT = 4222;
const AGENT_PORT = 65001;

/**
 * The mesh on the emulated network: NATS and the control plane on the registry host, an agent on every
 * node host; every node pulls through its own agent. Stops everything it started.
 */
async function runShoal(network: Network, image: BuiltImage, dir: string): Promise<ScenarioResult> {
  const started: ManagedProcess[] = [];
  const natsUrl = `nats://${network.registry.ip}:${NATS_PORT}`;
  const registryHost = `${network.registry.ip}:${REGISTRY_PORT}`;
  try {
    const natsConfig = join(dir, 'nats.conf');
    await mkdir(join(dir, 'jetstream'), { recursive: true });
    await writeFile(
      natsConfig,
      [
        `listen: 0.0.0.0:${NATS_PORT}`,
        'http: 0.0.0.0:8222',
        'max_payload: 8MB',
        `jetstream { store_dir: ${JSON.stringify(join(dir, 'jetstream'))} }`,
        '',
      ].join('\n'),
    );
    const nats = await startIn(network, network.registry, 'nats', 'nats-server', ['-c', natsConfig], dir);
    started.push(nats);
    await waitServing(network, nats, `http://${network.registry.ip}:8222/healthz`);
    for (const [i, kind] of (['discovery', 'announcer', 'scheduler'] as const).entries()) {
      const port = 9100 + i;
      const proc = await startIn(
        network,
        network.registry,
        kind,
        process.execPath,
        [
          serviceMain(kind),
          `--nats-servers=${natsUrl}`,
          `--metrics-port=${port}`,
          `--metrics-host=${network.registry.ip}`,
          `--instance=${kind}`,
        ],
        dir,
      );
      started.push(proc);
      await waitServing(network, proc, `http://${network.registry.ip}:${port}/healthz`);
    }
    const secret = randomBytes(24).toString('base64url');
    const agents = await Promise.all(
      network.nodes.map(async (node, i) => {
        const id = `node-${i}`;
        const proc = await startIn(
          network,
          node,
          `agent-${id}`,
          process.execPath,
          [
            serviceMain('agent'),
            `--node-id=${id}`,
            `--host=${node.ip}`,
            `--port=${AGENT_PORT}`,
            `--cache-dir=${join(dir, id, 'cache')}`,
            `--nats-servers=${natsUrl}`,
            `--registries=http://${registryHost}`,
            `--node-zone=${node.zone}`,
            `--node-vswitch=${node.vswitch}`,
            '--heartbeat-interval=500ms',
            ...agentArgs,
          ],
          dir,
          { SHOAL_PEER_SECRET: secret },
        );
        started.push(proc);
        return proc;
      }),
    );
    for (const [i, agent] of agents.entries())
      await waitServing(network, agent, `http://${network.nodes[i]!.ip}:${AGENT_PORT}/healthz`);
    // Every agent heartbeats every 500 ms; two rounds and discovery lists them all.
    await new Promise((r) => setTimeout(r, 1_500));

    const pulled = await pullEverywhere(network, (node) =>
      image.layers.map(
        (l) => `http://${node.ip}:${AGENT_PORT}/v2/${image.repo}/blobs/${l.digest}?ns=${registryHost}`,
      ),
    );
    const fallbacks: Record<string, number> = {};
    for (const node of network.nodes) {
      const script = `fetch('http://${node.ip}:${AGENT_PORT}/metrics').then((r) => r.text()).then((t) => process.stdout.write(t))`;
      const [cmd, args] = network.exec(node, process.execPath, ['-e', script]);
      const text = (await runCommand(cmd, args, { timeoutMs: 10_000 })).stdout;
      for (const match of text.matchAll(/^shoal_agent_fallbacks_total\{[^}]*reason="([^"]+)"[^}]*\} (\d+)/gm))
        fallbacks[match[1]!] = (fallbacks[match[1]!] ?? 0) + Number(match[2]);
    }
    return { scenario: 'shoal', ...pulled, fallbacks };
  } finally {
    await Promise.allSettled(started.reverse().map((p) => p.stop('SIGTERM', 10_000)));
  }
}

async function main(): Promise<void> {
  const dir = await makeTempDir('swarm');
  const staging = await startRegistry({ name: 'swarm-staging' });
  let network: Network | undefined;
  let registry: ManagedProcess | undefined;
  try {
    const image = await buildAndPushImage({
      registry: staging,
      repo: 'bench/swarm',
      tag: 'v1',
      layers,
      layerSize,
    });
    network = await buildNetwork(shape);
    registry = await serveRegistry(network, join(staging.dir, 'storage'), dir);
    const imageBytes = image.layersSize;
    const nodes = network.nodes.length;
    const tMin = boundSeconds(imageBytes, nodes);
    process.stdout.write(
      `${nodes} nodes (${shape.zones} zones × ${shape.vswitchesPerZone} vSwitches × ${shape.nodesPerVswitch}), ` +
        `${layers} × ${layerSize / MiB} MiB, nodes ${shape.nodeMbit} Mbit/s, registry ${shape.registryMbit} Mbit/s, ` +
        `cross-zone ${shape.crossZoneMbit || 'unshaped'} Mbit/s; T_min = ${tMin.toFixed(1)} s\n\n`,
    );
    const results: ScenarioResult[] = [];
    for (const scenario of scenarios) {
      if (scenario === 'direct') results.push(await runDirect(network, image));
      if (scenario === 'shoal') results.push(await runShoal(network, image, join(dir, 'shoal')));
    }
    const rows = results.map((r) => ({
      scenario: r.scenario,
      ...rolloutColumns({ ...r, tMin, imageBytes }),
      failed: String(r.failedNodes),
    }));
    process.stdout.write(`${table(rows)}\n`);
    for (const r of results)
      if (r.fallbacks && Object.keys(r.fallbacks).length > 0)
        process.stdout.write(
          `\n${r.scenario}: fallbacks to the registry by reason: ${JSON.stringify(r.fallbacks)}\n`,
        );
    await mkdir(outDir, { recursive: true });
    const file = join(outDir, `swarm-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    await writeFile(
      file,
      JSON.stringify({ shape, layers, layerSize, staggerS, tMin, imageBytes, results }, null, 2),
    );
    process.stdout.write(`\nwritten: ${file}\n`);
  } finally {
    await registry?.stop();
    await network?.destroy();
    await staging.stop();
    await removeTempDir(dir);
  }
}

await main();
