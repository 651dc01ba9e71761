/**
 * `npm run bench:swarm`: many nodes pull one image at once on an emulated cluster network (namespaces,
 * bridges, tbf; see network.ts), and each node's completion time is compared with the bound
 * T_min = max(F/u_origin, F/d_min, N·F/(u_origin + Σu_i)).
 *
 *   npm run bench:swarm -- [--zones 2] [--vswitches 2] [--nodes-per-vswitch 6] [--node-mbit 50]
 *                          [--registry-mbit 100] [--cross-zone-mbit 200] [--layers 4] [--layer-mib 16]
 *                          [--stagger-s 0] [--scenarios direct,shoal,bittorrent,limits] [--client ctr|http]
 *                          [--containerd per-node|shared]
 *                          [--limit-download-mb 1] [--limit-registry-mb 2] [--limit-upload-mb 4]
 *                          [--limit-upload-clients 2]
 *                          [--out results/swarm] [--agent-args "--scheduler-timeout=5s"]
 *                          [--agent-node-args "--cpu-prof"] [--control-node-args "--cpu-prof"]
 *
 * Scenarios: **direct** — every node pulls the image from the registry itself; **shoal** — NATS and the
 * control plane on the registry host, an agent on every node host, every node pulling through its own
 * agent as registry mirror; **bittorrent** — the layers as torrents seeded from the registry host
 * (WebTorrent and an HTTP tracker, see bittorrent.ts), fetched by every node; **limits** — the agents'
 * rate limits set at run time and measured under real pulls (see limits.ts; not run unless named). Nodes
 * pull with `ctr
 * content fetch` (a containerd daemon in every node's namespace, or one shared with `--containerd shared`,
 * and a hosts.toml per node) unless `--client http`, which GETs the layers with a plain client.
 *
 * The image is built and pushed to a registry on loopback with the test kit; a second docker-registry
 * in the registry host's namespace serves the same storage over the emulated network, so what leaves
 * the registry host is counted on its interface. Results go to --out as JSON and as an SVG chart of the
 * completion-time CDFs with T_min marked. Every namespace and process is removed at the end, also on
 * interrupt.
 */
import { rmSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import {
  buildAndPushImage,
  type BuiltImage,
  type Containerd,
  startContainerd,
  writeHostsToml,
  makeTempDir,
  removeTempDir,
  runChecked,
  runCommand,
  startRegistry,
  type ManagedProcess,
} from '../../kit/index.js';
import { type Metrics, metricSum, shoalctlMain } from '../../support/shoal.js';
import { cdfChart } from '../chart.js';
import { histogramQuantile, quantile, rolloutColumns, table } from '../report.js';
import { pullEverywhereBittorrent, startBittorrentSwarm } from './bittorrent.js';
import { type LimitCheck, type LimitsOptions, runLimits } from './limits.js';
import {
  AGENT_PORT,
  NATS_PORT,
  OFF_NODE_NICE,
  SCHEDULER_METRICS_PORT,
  scrape,
  startIn,
  startMesh,
  waitServing,
} from './mesh.js';
import { buildNetwork, type Host, type Network, type NetworkLoss, type NetworkShape } from './network.js';
import {
  endedChildrenCpuSeconds,
  machineSeconds,
  machineTicks,
  processUsage,
  type ProcessUsage,
} from '../usage.js';

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
const scenarios = (flag('scenarios') ?? 'direct,shoal,bittorrent').split(',');
const outDir = flag('out') ?? join('results', 'swarm');
/** How nodes pull: `ctr` (containerd's own resolver and hosts.toml, content fetched and verified) or `http`. */
const client = flag('client') ?? 'ctr';
if (client !== 'ctr' && client !== 'http') {
  process.stderr.write(`--client: expected ctr or http, got ${JSON.stringify(client)}\n`);
  process.exit(2);
}
/**
 * With --client ctr: a containerd daemon in every node's namespace, as on real nodes (`per-node`), or one
 * daemon with a containerd namespace per node (`shared`), which leaves more of a small machine's CPU to
 * the systems compared.
 */
const daemonMode = flag('containerd') ?? 'per-node';
if (daemonMode !== 'per-node' && daemonMode !== 'shared') {
  process.stderr.write(`--containerd: expected per-node or shared, got ${JSON.stringify(daemonMode)}\n`);
  process.exit(2);
}
/** Extra agent flags, space-separated, e.g. --agent-args "--scheduler-timeout=5s". */
const agentArgs = (flag('agent-args') ?? '').split(' ').filter((a) => a !== '');
/** Extra flags for the agents' node runtime, e.g. --agent-node-args "--cpu-prof --cpu-prof-dir=/tmp/prof". */
const agentNodeArgs = (flag('agent-node-args') ?? '').split(' ').filter((a) => a !== '');
/** Extra flags for the node runtime of discovery, the announcer and the scheduler. */
const controlNodeArgs = (flag('control-node-args') ?? '').split(' ').filter((a) => a !== '');
for (const scenario of scenarios) {
  if (!['direct', 'shoal', 'bittorrent', 'limits'].includes(scenario)) {
    process.stderr.write(
      `--scenarios: unknown scenario ${JSON.stringify(scenario)} (known: direct, shoal, bittorrent, limits)\n`,
    );
    process.exit(2);
  }
}
/** The rates the limits scenario sets, in MB/s (10⁶ bytes per second), and its upload phase's clients. */
const limitsOptions: LimitsOptions = {
  samplesDir: join(outDir, `limits-samples-${new Date().toISOString().replace(/[:.]/g, '-')}`),
  downloadRate: num('limit-download-mb', 1) * 1e6,
  registryRate: num('limit-registry-mb', 2) * 1e6,
  uploadRate: num('limit-upload-mb', 4) * 1e6,
  uploadClients: Math.max(1, Math.round(num('limit-upload-clients', 2))),
};

const REGISTRY_PORT = 5000;
const clientScript = join(import.meta.dirname, 'client.mjs');

export interface ScenarioResult {
  scenario: string;
  /** Seconds from each node's start to its last byte, in node order. */
  completions: number[];
  failedNodes: number;
  /**
   * What the origin sent: the bodies of the registry's responses for direct and shoal (from its log),
   * the registry host's interface for BitTorrent (whose seeder runs there; wire bytes).
   */
  registryBytes: number;
  /** All the registry host sent, NATS's and the control plane's traffic to the agents included. */
  registryHostBytes: number;
  crossZoneBytesPerZone: number[];
  /** What the emulated network dropped and TCP sent again while the nodes pulled; absent if unreadable. */
  networkLoss?: NetworkLoss;
  /** Fraction of the machine's CPU time that was busy while the nodes pulled. */
  machineBusy: number;
  /**
   * Where the machine's CPU went while the nodes pulled, in CPU seconds: busy in all, by kind (user
   * space, kernel for processes, interrupts), and what the pull clients (`ctr` or the HTTP client) and the
   * containerd daemons spent. For shoal the agents' and control plane's shares are in `usage`.
   */
  cpu: {
    busy: number;
    user: number;
    system: number;
    interrupts: number;
    steal: number;
    pullClients: number;
    containerd?: number;
    /** BitTorrent's clients are the system compared, so they are not part of the machine's floor. */
    clientsAreTheSystem: boolean;
  };
  /** Shoal only: pulls' fallbacks to the registry, summed over the agents, by reason. */
  fallbacks?: Record<string, number>;
  /**
   * Shoal only: CPU seconds spent during the pulls and peak RSS of each agent, in node order, and of each
   * control-plane process.
   */
  usage?: {
    agents: (ProcessUsage | undefined)[];
    /** Bytes each agent's memory tier held once the pulls were over (part of its RSS). */
    memoryTierBytes: number[];
    controlPlane: Record<string, ProcessUsage | undefined>;
  };
  /** Shoal only: schedule round trips as the agents saw them and decision times in the scheduler, ms. */
  schedule?: {
    requests: number;
    timeouts: number;
    roundTripP50: number;
    roundTripP99: number;
    decisionP99: number;
    /** Chunks the scheduler sent outside their node's zone (zone leases granted). */
    crossZoneAssignments: number;
    /** Chunk assignments by kind: to a peer, to the origin, or told to wait. */
    assignments: { peer: number; origin: number; wait: number };
  };
  /** Shoal only: failed chunk fetches, summed over the agents, by source and reason. */
  chunkFailures?: Record<string, number>;
}

function boundSeconds(imageBytes: number, nodes: number): number {
  const bytesPerSecond = (mbit: number) => (mbit * 1e6) / 8;
  const up = bytesPerSecond(shape.nodeMbit);
  const origin = bytesPerSecond(shape.registryMbit);
  return Math.max(imageBytes / origin, imageBytes / up, (nodes * imageBytes) / (origin + nodes * up));
}

/** The log of the registry on the emulated network, one JSON line per response. */
let registryLog = '';

/**
 * Bytes of response bodies the registry has written so far, from its log: what the registry itself
 * sent, without TCP/IP headers, retransmissions or anything else the registry host sends.
 */
async function registryBodyBytes(): Promise<number> {
  // A response's line is written as it completes; give the last ones a moment to reach the file.
  await new Promise((resolve) => setTimeout(resolve, 200));
  let bytes = 0;
  for (const line of (await readFile(registryLog, 'utf8')).split('\n')) {
    if (!line.includes('"http.response.written"')) continue;
    try {
      const written = (JSON.parse(line) as Record<string, unknown>)['http.response.written'];
      if (typeof written === 'number') bytes += written;
    } catch {
      // A line that is not the registry's JSON (the process runner's own notes).
    }
  }
  return bytes;
}

/** docker-registry in the registry host's namespace, serving the storage the image was pushed to. */
async function serveRegistry(network: Network, storageDir: string, dir: string): Promise<ManagedProcess> {
  const config = join(dir, 'registry.yml');
  registryLog = join(dir, 'registry.log');
  await writeFile(
    config,
    [
      'version: 0.1',
      'log:',
      // Every response is logged with the bytes written, the registry's own count of its egress.
      '  level: info',
      '  formatter: json',
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
  // Its log is registryLog: startIn logs to <dir>/<name>.log.
  const proc = await startIn(
    network,
    network.registry,
    'registry',
    'docker-registry',
    ['serve', config],
    dir,
    {
      nice: OFF_NODE_NICE,
    },
  );
  await waitServing(network, proc, `http://${network.registry.ip}:${REGISTRY_PORT}/v2/`);
  return proc;
}

/**
 * CPU seconds the nodes' containerd daemons have spent so far, all together; undefined if one is gone,
 * whose CPU could no longer be told.
 */
async function daemonsCpuSeconds(pids: readonly number[]): Promise<number | undefined> {
  const usage = await Promise.all(pids.map(processUsage));
  if (usage.some((u) => u === undefined)) return undefined;
  return usage.reduce((sum, u) => sum + (u?.cpuSeconds ?? 0), 0);
}

/**
 * What the emulated network has lost so far; undefined, with a warning, if its counters cannot be read:
 * they explain a run, and a run is not thrown away for them.
 */
async function networkLoss(network: Network): Promise<NetworkLoss | undefined> {
  try {
    return await network.loss();
  } catch (err) {
    process.stderr.write(`network loss counters unavailable: ${(err as Error).message}\n`);
    return undefined;
  }
}

/**
 * Runs `pull` (which resolves with each node's completion in seconds, NaN for a node that failed) and
 * counts what left the registry and each zone meanwhile, and how busy the machine was. With `torrent`
 * the pull clients are the system measured (BitTorrent's), not a runtime that receives from it, and
 * the origin is the seeder on the registry host rather than the registry.
 */
async function measurePulls(
  pull: () => Promise<number[]>,
  network: Network,
  torrent = false,
): Promise<Omit<ScenarioResult, 'scenario'>> {
  const zoneBytes = () =>
    Promise.all(Array.from({ length: shape.zones }, (_, z) => network.zoneEgressBytes(z)));
  const originBytes = () => (torrent ? network.registryEgressBytes() : registryBodyBytes());
  const [registryBefore, hostBefore] = await Promise.all([originBytes(), network.registryEgressBytes()]);
  const zonesBefore = await zoneBytes();
  const lossBefore = await networkLoss(network);
  // BitTorrent's clients write no image into containerd.
  const daemons = torrent || !containerds ? undefined : [...new Set(containerds.map((c) => c.process().pid))];
  const [ticksBefore, clientsBefore, daemonsBefore] = await Promise.all([
    machineTicks(),
    endedChildrenCpuSeconds(),
    daemons && daemonsCpuSeconds(daemons),
  ]);
  const results = await pull();
  const [ticksAfter, clientsAfter, daemonsAfter] = await Promise.all([
    machineTicks(),
    endedChildrenCpuSeconds(),
    daemons && daemonsCpuSeconds(daemons),
  ]);
  const [registryAfter, hostAfter] = await Promise.all([originBytes(), network.registryEgressBytes()]);
  const zonesAfter = await zoneBytes();
  const lossAfter = await networkLoss(network);
  return {
    machineBusy: (ticksAfter.busy - ticksBefore.busy) / Math.max(1, ticksAfter.total - ticksBefore.total),
    cpu: {
      ...machineSeconds(ticksBefore, ticksAfter),
      pullClients: clientsAfter - clientsBefore,
      ...(daemonsBefore !== undefined && daemonsAfter !== undefined
        ? { containerd: daemonsAfter - daemonsBefore }
        : {}),
      clientsAreTheSystem: torrent,
    },
    completions: results,
    failedNodes: results.filter((r) => Number.isNaN(r)).length,
    registryBytes: registryAfter - registryBefore,
    registryHostBytes: hostAfter - hostBefore,
    crossZoneBytesPerZone: zonesAfter.map((after, z) => after - (zonesBefore[z] ?? 0)),
    ...(lossBefore && lossAfter
      ? {
          networkLoss: {
            queueDrops: lossAfter.queueDrops - lossBefore.queueDrops,
            retransmittedSegments: lossAfter.retransmittedSegments - lossBefore.retransmittedSegments,
            retransmissionTimeouts: lossAfter.retransmissionTimeouts - lossBefore.retransmissionTimeouts,
          },
        }
      : {}),
  };
}

/** Runs the HTTP client on every node at once (or spread over --stagger-s) against the URLs per node. */
function pullEverywhere(
  network: Network,
  urlsFor: (node: Host) => string[],
  only: readonly number[] = network.nodes.map((_, i) => i),
): Promise<Omit<ScenarioResult, 'scenario'>> {
  return measurePulls(
    () =>
      Promise.all(
        only.map(async (i) => {
          const node = network.nodes[i]!;
          const [cmd, args] = network.exec(node, process.execPath, [
            clientScript,
            JSON.stringify({ urls: urlsFor(node), delayMs: delayFor(i, network.nodes.length) }),
          ]);
          const result = await runCommand(cmd, args, { timeoutMs: 30 * 60_000 });
          const parsed = result.ok
            ? (JSON.parse(result.stdout) as { ms: number; failed: number })
            : undefined;
          if (!parsed || parsed.failed > 0) process.stderr.write(`${node.ns}: ${result.stderr.trim()}\n`);
          return parsed && parsed.failed === 0 ? parsed.ms / 1000 : Number.NaN;
        }),
      ),
    network,
  );
}

/** When node `i` of `count` starts, in ms after the first: spread evenly over --stagger-s. */
function delayFor(i: number, count: number): number {
  return staggerS > 0 ? Math.round((i / count) * staggerS * 1000) : 0;
}

/**
 * The layers as torrents seeded from the registry host (the blob files of the registry's own storage),
 * fetched by a WebTorrent client on every node.
 */
async function runBittorrent(
  network: Network,
  image: BuiltImage,
  storageDir: string,
  dir: string,
): Promise<ScenarioResult> {
  const files = image.layers.map((l, i) => {
    const hex = l.digest.slice('sha256:'.length);
    return {
      name: `layer-${i}`,
      path: join(storageDir, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data'),
    };
  });
  const swarm = await startBittorrentSwarm(network, files, dir);
  try {
    const pulled = await measurePulls(
      () =>
        pullEverywhereBittorrent(
          network,
          swarm.torrents.map((t) => t.torrentFile),
          staggerS,
          dir,
        ),
      network,
      true,
    );
    return { scenario: 'bittorrent', ...pulled };
  } finally {
    await swarm.stop();
  }
}

/**
 * The limits scenario (see limits.ts) on a mesh of its own, with empty caches: rates set at run time,
 * measured while real pulls run through the agents.
 */
async function runLimitsScenario(
  network: Network,
  images: readonly [BuiltImage, BuiltImage],
  dir: string,
): Promise<LimitCheck[]> {
  const mesh = await startMesh(network, dir, {
    registryHost: `${network.registry.ip}:${REGISTRY_PORT}`,
    agentArgs,
    agentNodeArgs,
    controlNodeArgs,
  });
  await mkdir(limitsOptions.samplesDir, { recursive: true });
  try {
    return await runLimits(
      network,
      mesh,
      images,
      dir,
      async (image, nodes) => (await pullImage(network, image, 'agent', dir, nodes)).completions,
      limitsOptions,
    );
  } finally {
    await mesh.stop();
  }
}

async function runDirect(network: Network, image: BuiltImage, dir: string): Promise<ScenarioResult> {
  return { scenario: 'direct', ...(await pullImage(network, image, 'registry', dir)) };
}

/**
 * containerd for --client ctr, one per node in node order: a daemon in each node's namespace, or the same
 * shared daemon for all (--containerd shared). Each scenario pulls into a fresh containerd namespace
 * (its own content store).
 */
let containerds: Containerd[] | undefined;
const TAG = 'v1';

/**
 * Every node pulls the image, from the registry itself or through its own agent. With --client ctr a
 * `ctr content fetch` runs in each node's namespace with a hosts.toml of its own (the agent as mirror,
 * the registry as fallback, as the chart sets up); with --client http a plain client GETs every layer.
 */
async function pullImage(
  network: Network,
  image: BuiltImage,
  via: 'registry' | 'agent',
  dir: string,
  only: readonly number[] = network.nodes.map((_, i) => i),
): Promise<Omit<ScenarioResult, 'scenario'>> {
  const registryHost = `${network.registry.ip}:${REGISTRY_PORT}`;
  if (!containerds)
    return pullEverywhere(
      network,
      (node) =>
        image.layers.map((l) =>
          via === 'agent'
            ? `http://${node.ip}:${AGENT_PORT}/v2/${image.repo}/blobs/${l.digest}?ns=${registryHost}`
            : `http://${registryHost}/v2/${image.repo}/blobs/${l.digest}`,
        ),
      only,
    );
  const daemons = containerds;
  const ref = `${registryHost}/${image.repo}:${TAG}`;
  return measurePulls(
    () =>
      Promise.all(
        only.map(async (i) => {
          const node = network.nodes[i]!;
          const daemon = daemons[i]!;
          const hostsDir = join(dir, `hosts-${i}`);
          await writeHostsToml(
            hostsDir,
            registryHost,
            via === 'agent' ? `http://${node.ip}:${AGENT_PORT}` : undefined,
          );
          // --debug turns off ctr's progress display, which asks containerd for every download's status
          // ten times a second (about 20 CPU s of a 24-node run here); a kubelet's pull does not.
          const [cmd, args] = network.exec(node, 'ctr', [
            ...['--debug', '-a', daemon.socket, '-n', daemon.newNamespace(`node${i}`)],
            ...['content', 'fetch', '--plain-http', '--hosts-dir', hostsDir, ref],
          ]);
          await new Promise((resolve) => setTimeout(resolve, delayFor(i, network.nodes.length)));
          const began = performance.now();
          const result = await runCommand(cmd, args, { timeoutMs: 30 * 60_000 });
          if (result.ok) return (performance.now() - began) / 1000;
          // With --debug ctr logs every request; the end of it says what went wrong.
          const tail = result.stderr.trim().split('\n').slice(-10).join('\n');
          process.stderr.write(`${node.ns}: ctr content fetch failed: ${tail}\n`);
          return Number.NaN;
        }),
      ),
    network,
  );
}

/** How many containerd daemons start at once: two dozen booting together can starve each other. */
const DAEMON_STARTS_AT_ONCE = 4;

/** Starts a containerd in every node's namespace; stops those that started if any does not. */
async function startContainerds(network: Network): Promise<Containerd[]> {
  const daemons: Containerd[] = [];
  const failures: unknown[] = [];
  for (let i = 0; i < network.nodes.length && failures.length === 0; i += DAEMON_STARTS_AT_ONCE) {
    const batch = network.nodes.slice(i, i + DAEMON_STARTS_AT_ONCE).map((node, j) =>
      startContainerd({
        name: `containerd-node-${i + j}`,
        wrap: (cmd, args) => network.exec(node, cmd, args),
      }),
    );
    for (const r of await Promise.allSettled(batch))
      if (r.status === 'fulfilled') daemons.push(r.value);
      else failures.push(r.reason);
  }
  if (failures.length > 0) {
    await Promise.all(daemons.map((d) => d.stop()));
    throw new AggregateError(failures, `${failures.length} of the nodes' containerd daemons did not start`);
  }
  return daemons;
}

/** The shoal scenario's event stream as JSON lines, written beside the results. */
let meshEvents: string | undefined;

/** Reads the mesh's whole event stream with shoalctl, from the registry host where NATS runs. */
async function readMeshEvents(network: Network): Promise<string> {
  const [cmd, args] = network.exec(network.registry, process.execPath, [
    shoalctlMain,
    'events',
    '--output=json',
    '--since=1h',
    `--nats-servers=nats://${network.registry.ip}:${NATS_PORT}`,
  ]);
  return (await runChecked(cmd, args, { timeoutMs: 60_000 })).stdout;
}

/**
 * The mesh on the emulated network: NATS and the control plane on the registry host, an agent on every
 * node host; every node pulls through its own agent. Stops everything it started.
 */
async function runShoal(network: Network, image: BuiltImage, dir: string): Promise<ScenarioResult> {
  const mesh = await startMesh(network, dir, {
    registryHost: `${network.registry.ip}:${REGISTRY_PORT}`,
    agentArgs,
    agentNodeArgs,
    controlNodeArgs,
  });
  try {
    const { agents, controlPlane } = mesh;
    const everyone = [...agents, ...controlPlane];
    const before = await Promise.all(everyone.map((p) => processUsage(p.pid)));
    const pulled = await pullImage(network, image, 'agent', dir);
    const agentMetrics: Metrics = new Map();
    const memoryTierBytes: number[] = [];
    for (const node of network.nodes) {
      const metrics = await scrape(network, node, `http://${node.ip}:${AGENT_PORT}/metrics`);
      memoryTierBytes.push(metrics.get('shoal_agent_memory_tier_bytes') ?? 0);
      for (const [key, value] of metrics) agentMetrics.set(key, (agentMetrics.get(key) ?? 0) + value);
    }
    const schedulerMetrics = await scrape(
      network,
      network.registry,
      `http://${network.registry.ip}:${SCHEDULER_METRICS_PORT}/metrics`,
    );
    meshEvents = await readMeshEvents(network).catch((err: unknown) => {
      process.stderr.write(`could not read the mesh's events: ${String(err)}\n`);
      return undefined;
    });
    const byLabel = (name: string) => {
      const out: Record<string, number> = {};
      for (const [key, value] of agentMetrics) {
        const labels = new RegExp(`^${name}\\{(.*)\\}$`).exec(key)?.[1];
        if (labels !== undefined && value > 0) out[labels.replace(/"/g, '')] = value;
      }
      return out;
    };
    const fallbacks = byLabel('shoal_agent_fallbacks_total');
    const chunkFailures = byLabel('shoal_agent_chunk_failures_total');
    const roundTrip = 'shoal_agent_schedule_duration_seconds';
    const schedule = {
      requests: metricSum(agentMetrics, `${roundTrip}_count`),
      timeouts: agentMetrics.get(`${roundTrip}_count{outcome="timeout"}`) ?? 0,
      roundTripP50: histogramQuantile(agentMetrics, roundTrip, 0.5) * 1000,
      roundTripP99: histogramQuantile(agentMetrics, roundTrip, 0.99) * 1000,
      decisionP99:
        histogramQuantile(schedulerMetrics, 'shoal_scheduler_decision_duration_seconds', 0.99) * 1000,
      crossZoneAssignments: schedulerMetrics.get('shoal_scheduler_cross_zone_assignments_total') ?? 0,
      assignments: {
        peer: schedulerMetrics.get('shoal_scheduler_assignments_total{kind="peer"}') ?? 0,
        origin: schedulerMetrics.get('shoal_scheduler_assignments_total{kind="origin"}') ?? 0,
        wait: schedulerMetrics.get('shoal_scheduler_assignments_total{kind="wait"}') ?? 0,
      },
    };
    // CPU seconds spent during the pulls (not starting up); peak RSS over the process's life.
    const after = await Promise.all(everyone.map((p) => processUsage(p.pid)));
    const spent = everyone.map((_, i): ProcessUsage | undefined => {
      const [b, a] = [before[i], after[i]];
      return a && b
        ? {
            cpuSeconds: a.cpuSeconds - b.cpuSeconds,
            kernelSeconds: a.kernelSeconds - b.kernelSeconds,
            peakRssBytes: a.peakRssBytes,
          }
        : undefined;
    });
    const usage = {
      agents: spent.slice(0, agents.length),
      memoryTierBytes,
      controlPlane: Object.fromEntries(controlPlane.map((p, i) => [p.name, spent[agents.length + i]])),
    };
    return { scenario: 'shoal', ...pulled, fallbacks, chunkFailures, usage, schedule };
  } finally {
    await mesh.stop();
  }
}

const cores = availableParallelism();

/**
 * The wall time this machine's cores need for the CPU the pulls cost outside what is compared: the pull
 * clients, containerd and the interrupts that move packets through the emulated network. An estimate of
 * the least a system delivering the same bytes to the same clients needs here (the interrupts also carry
 * the system's own control traffic, a small share); on real nodes each node has cores of its own.
 */
function machineFloor(r: ScenarioResult): number | undefined {
  if (r.cpu.clientsAreTheSystem) return undefined;
  return (r.cpu.pullClients + (r.cpu.containerd ?? 0) + r.cpu.interrupts) / cores;
}

/** Where a scenario's time and CPU went, in a few lines: machine load, agents, control plane, scheduling. */
function describeCosts(r: ScenarioResult, tMin: number, imageBytes: number): string {
  const c = r.cpu;
  const floor = machineFloor(r);
  const lines = [
    `${r.scenario}: machine CPU ${(r.machineBusy * 100).toFixed(0)}% busy during the pulls, ` +
      `${c.busy.toFixed(1)} CPU s (user ${c.user.toFixed(1)}, kernel ${c.system.toFixed(1)}, ` +
      `interrupts ${c.interrupts.toFixed(1)}, steal ${c.steal.toFixed(1)}); pull clients ${c.pullClients.toFixed(1)} s` +
      (c.containerd === undefined ? '' : `, containerd ${c.containerd.toFixed(1)} s`),
  ];
  if (floor !== undefined)
    lines.push(
      `  machine floor: the pull clients${c.containerd === undefined ? '' : ', containerd'} and the network's ` +
        `interrupts alone need ${floor.toFixed(1)} s of this machine's ${cores} cores (${(floor / tMin).toFixed(2)} × T_min)`,
    );
  const loss = r.networkLoss;
  lines.push(
    loss
      ? `  network: ${loss.queueDrops} packets dropped by the shaping queues, ${loss.retransmittedSegments} TCP ` +
          `segments sent again, ${loss.retransmissionTimeouts} retransmission timeouts`
      : '  network: loss counters unavailable',
  );
  if (!r.cpu.clientsAreTheSystem)
    lines.push(
      `  registry host: ${(r.registryHostBytes / imageBytes).toFixed(2)} images sent in all, ` +
        `${((r.registryHostBytes - r.registryBytes) / MiB).toFixed(1)} MiB more than the registry's response bodies ` +
        `(TCP/IP and Ethernet headers, NATS and the control plane)`,
    );
  if (r.usage) {
    const agents = r.usage.agents.filter((u) => u !== undefined);
    const cpu = agents.map((u) => u.cpuSeconds);
    const kernel = agents.reduce((sum, u) => sum + u.kernelSeconds, 0);
    const rss = agents.map((u) => u.peakRssBytes / MiB);
    lines.push(
      `  agents: CPU ${cpu.reduce((a, b) => a + b, 0).toFixed(1)} s in all (${kernel.toFixed(1)} of it in the kernel), ` +
        `${Math.max(...cpu).toFixed(1)} s the most; ` +
        `peak RSS ${Math.max(...rss).toFixed(0)} MiB the most, ${quantile(rss, 0.5).toFixed(0)} MiB median ` +
        `(memory tier holding ${quantile(
          r.usage.memoryTierBytes.map((b) => b / MiB),
          0.5,
        ).toFixed(0)} MiB median at the end)`,
      `  control plane: ${Object.entries(r.usage.controlPlane)
        .map(
          ([name, u]) =>
            `${name} ${
              u
                ? `${u.cpuSeconds.toFixed(1)} s CPU (kernel ${u.kernelSeconds.toFixed(1)}), ${(u.peakRssBytes / MiB).toFixed(0)} MiB`
                : 'gone'
            }`,
        )
        .join('; ')}`,
    );
  }
  if (r.schedule)
    lines.push(
      `  schedule: ${r.schedule.requests} requests, ${r.schedule.timeouts} timed out; round trip p50 ` +
        `${r.schedule.roundTripP50.toFixed(1)} ms, p99 ${r.schedule.roundTripP99.toFixed(0)} ms; decision p99 ` +
        `${r.schedule.decisionP99.toFixed(1)} ms; ${r.schedule.crossZoneAssignments} chunks sent out of their zone; ` +
        `chunks assigned to a peer ${r.schedule.assignments.peer}, to the registry ${r.schedule.assignments.origin}, ` +
        `told to wait ${r.schedule.assignments.wait}`,
    );
  if (r.chunkFailures && Object.keys(r.chunkFailures).length > 0)
    lines.push(`  failed chunk fetches: ${JSON.stringify(r.chunkFailures)}`);
  if (r.fallbacks && Object.keys(r.fallbacks).length > 0)
    lines.push(`  fallbacks to the registry by reason: ${JSON.stringify(r.fallbacks)}`);
  return `${lines.join('\n')}\n`;
}

/** The limits scenario's table: each limit, what it was set to and what the nodes measured. */
function describeLimits(checks: readonly LimitCheck[]): string {
  const mb = (bytesPerSecond: number) => (bytesPerSecond / 1e6).toFixed(3);
  const rows = checks.map((c) => {
    const sorted = [...c.measured].sort((a, b) => a - b);
    return {
      limit: c.limit,
      'set, MB/s': mb(c.configured),
      nodes: String(c.measured.length),
      'measured, MB/s (min / median / max)':
        sorted.length === 1
          ? mb(sorted[0]!)
          : `${mb(sorted[0]!)} / ${mb(quantile(sorted, 0.5))} / ${mb(sorted[sorted.length - 1]!)}`,
      'worst deviation': `${(c.worstDeviation * 100).toFixed(1)}%`,
      'within ±5%': c.within ? 'yes' : 'no',
      'pull s (max)': Math.max(...c.pullSeconds).toFixed(1),
    };
  });
  const sources = checks.map((c) => `  ${c.limit}: pulling nodes' counters ${JSON.stringify(c.pulledBy)}`);
  return `limits, set through the limits API at run time:\n${table(rows)}\n${sources.join('\n')}\n`;
}

async function main(): Promise<void> {
  const dir = await makeTempDir('swarm');
  // A run that dies on the way (an interrupt, or its output piped into a command that quit) still
  // removes its files, the staging registry's and the containerd daemons' included; its namespaces are
  // removed the same way (see network.ts), and its processes by the test kit.
  const dirs = [dir];
  const removeDir = () => {
    for (const d of [...dirs, ...(containerds ?? []).map((c) => c.dir)])
      rmSync(d, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  };
  process.once('exit', removeDir);
  const staging = await startRegistry({ name: 'swarm-staging' });
  dirs.push(staging.dir);
  let network: Network | undefined;
  let registry: ManagedProcess | undefined;
  try {
    const image = await buildAndPushImage({
      registry: staging,
      repo: 'bench/swarm',
      tag: TAG,
      layers,
      layerSize,
    });
    // The limits scenario needs a second image that no node has pulled yet.
    const second = scenarios.includes('limits')
      ? await buildAndPushImage({
          registry: staging,
          repo: 'bench/swarm-limits',
          tag: TAG,
          layers,
          layerSize,
        })
      : undefined;
    network = await buildNetwork(shape);
    if (client === 'ctr')
      containerds =
        daemonMode === 'shared'
          ? Array<Containerd>(network.nodes.length).fill(await startContainerd({ name: 'swarm-containerd' }))
          : await startContainerds(network);
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
    let limits: LimitCheck[] | undefined;
    for (const scenario of scenarios) {
      if (scenario === 'direct') results.push(await runDirect(network, image, join(dir, 'direct')));
      if (scenario === 'shoal') results.push(await runShoal(network, image, join(dir, 'shoal')));
      if (scenario === 'bittorrent')
        results.push(
          await runBittorrent(network, image, join(staging.dir, 'storage'), join(dir, 'bittorrent')),
        );
      if (scenario === 'limits' && second)
        limits = await runLimitsScenario(network, [image, second], join(dir, 'limits'));
    }
    const rows = results.map((r) => ({
      scenario: r.scenario,
      ...rolloutColumns({ ...r, tMin, imageBytes }),
      failed: String(r.failedNodes),
    }));
    if (rows.length > 0) process.stdout.write(`${table(rows)}\n`);
    for (const r of results) process.stdout.write(`\n${describeCosts(r, tMin, imageBytes)}`);
    if (limits) process.stdout.write(`\n${describeLimits(limits)}`);
    await mkdir(outDir, { recursive: true });
    const file = join(outDir, `swarm-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    await writeFile(
      file,
      JSON.stringify(
        { shape, layers, layerSize, staggerS, tMin, imageBytes, cores, results, limits },
        null,
        2,
      ),
    );
    const chart = file.replace(/\.json$/, '.svg');
    await writeFile(
      chart,
      cdfChart(
        results.map((r) => ({ name: r.scenario, values: r.completions })),
        {
          tMin,
          title: `${nodes} nodes, ${layers} × ${layerSize / MiB} MiB, nodes ${shape.nodeMbit} Mbit/s, registry ${shape.registryMbit} Mbit/s`,
        },
      ),
    );
    process.stdout.write(`\nwritten: ${file}\n         ${chart}\n`);
    if (meshEvents !== undefined) {
      const events = file.replace(/\.json$/, '.events.jsonl');
      await writeFile(events, meshEvents);
      process.stdout.write(
        `         ${events} (the shoal scenario's events, as shoalctl events --output json prints them)\n`,
      );
    }
  } finally {
    await registry?.stop();
    await Promise.all([...new Set(containerds)].map((c) => c.stop()));
    await network?.destroy();
    await staging.stop();
    await removeTempDir(dir);
    process.removeListener('exit', removeDir);
  }
}

await main();
