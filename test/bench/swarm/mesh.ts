/**
 * Shoal on the emulated network: NATS and the control plane on the registry host, an agent on every node
 * host, and what the benchmark needs to start, reach and measure processes inside the namespaces.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand, startProcess, type ManagedProcess } from '../../kit/index.js';
import {
  CHART_AGENT_ENV,
  CHART_AGENT_NODE_OPTIONS,
  type Metrics,
  parseMetrics,
  serviceMain,
} from '../../support/shoal.js';
import type { Host, Network } from './network.js';

export const NATS_PORT = 4222;
export const AGENT_PORT = 65001;
/** Metrics ports of discovery, the announcer and the scheduler on the registry host. */
const CONTROL_METRICS_PORT = 9100;
export const SCHEDULER_METRICS_PORT = CONTROL_METRICS_PORT + 2;

/**
 * Waits until a node host can GET `url` (any status below 500 but 503 counts), or fails with the log.
 * Two dozen agents starting at once on two cores with a cold page cache take well over 20 s.
 */
export async function waitServing(network: Network, proc: ManagedProcess, url: string): Promise<void> {
  const probe = `fetch('${url}').then((r) => process.exit(r.status < 500 || r.status === 503 ? 0 : 1), () => process.exit(1))`;
  const deadline = Date.now() + 60_000;
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

/** Waits until discovery lists `count` live nodes. */
async function waitListed(network: Network, count: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const metrics = await scrape(
      network,
      network.registry,
      `http://${network.registry.ip}:${CONTROL_METRICS_PORT}/metrics`,
    );
    const listed = metrics.get('shoal_discovery_nodes') ?? 0;
    if (listed >= count) return;
    if (Date.now() > deadline) throw new Error(`discovery lists ${listed} of ${count} nodes after 30 s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A service's metrics, fetched from inside `host`'s namespace. */
export async function scrape(network: Network, host: Host, url: string): Promise<Metrics> {
  const script = `fetch('${url}').then((r) => r.text()).then((t) => process.stdout.write(t))`;
  const [cmd, args] = network.exec(host, process.execPath, ['-e', script]);
  return parseMetrics((await runCommand(cmd, args, { timeoutMs: 10_000 })).stdout);
}

/** Starts a process inside a host's namespace, logging to `dir`. */
export async function startIn(
  network: Network,
  host: Host,
  name: string,
  cmd: string,
  args: string[],
  dir: string,
  options: { env?: Record<string, string>; nice?: number } = {},
): Promise<ManagedProcess> {
  const [wrapped, wrappedArgs] =
    options.nice === undefined
      ? network.exec(host, cmd, args)
      : network.exec(host, 'nice', ['-n', String(options.nice), cmd, ...args]);
  return startProcess({
    name,
    cmd: wrapped,
    args: wrappedArgs,
    logFile: join(dir, `${name}.log`),
    env: options.env ?? {},
  });
}

/**
 * Scheduling priority of what a cluster runs off its nodes: the registry (and BitTorrent's seeder, which
 * stands in for it), NATS and the control plane. Here they share two cores with every agent and client;
 * without priority a schedule request waits behind dozens of runnable processes at each hop, and the
 * registry, given a slice of the cores as one process among seventy, takes seconds to send a chunk its
 * link would carry in a fraction of one. Agents, containerd and the pull clients keep the default.
 */
export const OFF_NODE_NICE = -10;

export interface SwarmMesh {
  /** One agent per node, in node order. */
  agents: ManagedProcess[];
  /** NATS, discovery, announcer and scheduler. */
  controlPlane: ManagedProcess[];
  /** The mesh's peer.secret, to sign requests to the agents' APIs. */
  secret: string;
  /** Stops every process it started, agents first. */
  stop(): Promise<void>;
}

export interface MeshOptions {
  /** host:port of the registry the agents mirror. */
  registryHost: string;
  /** Extra agent flags. */
  agentArgs: readonly string[];
  /** Extra flags for the agents' node runtime. */
  agentNodeArgs: readonly string[];
  /** Extra flags for the node runtime of discovery, the announcer and the scheduler. */
  controlNodeArgs: readonly string[];
}

/** Starts NATS, the control plane and an agent on every node; waits until discovery lists them all. */
export async function startMesh(network: Network, dir: string, options: MeshOptions): Promise<SwarmMesh> {
  const started: ManagedProcess[] = [];
  const natsUrl = `nats://${network.registry.ip}:${NATS_PORT}`;
  const stop = async () => {
    await Promise.allSettled(started.reverse().map((p) => p.stop('SIGTERM', 10_000)));
  };
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
    const nats = await startIn(network, network.registry, 'nats', 'nats-server', ['-c', natsConfig], dir, {
      nice: OFF_NODE_NICE,
    });
    started.push(nats);
    const controlPlane = [nats];
    await waitServing(network, nats, `http://${network.registry.ip}:8222/healthz`);
    for (const [i, kind] of (['discovery', 'announcer', 'scheduler'] as const).entries()) {
      const port = CONTROL_METRICS_PORT + i;
      const proc = await startIn(
        network,
        network.registry,
        kind,
        process.execPath,
        [
          ...options.controlNodeArgs,
          serviceMain(kind),
          `--nats-servers=${natsUrl}`,
          `--metrics-port=${port}`,
          `--metrics-host=${network.registry.ip}`,
          `--instance=${kind}`,
        ],
        dir,
        { nice: OFF_NODE_NICE },
      );
      started.push(proc);
      controlPlane.push(proc);
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
            // Run as the Helm chart runs them.
            ...CHART_AGENT_NODE_OPTIONS,
            ...options.agentNodeArgs,
            serviceMain('agent'),
            `--node-id=${id}`,
            `--host=${node.ip}`,
            `--port=${AGENT_PORT}`,
            `--cache-dir=${join(dir, id, 'cache')}`,
            `--nats-servers=${natsUrl}`,
            `--registries=http://${options.registryHost}`,
            `--node-zone=${node.zone}`,
            `--node-vswitch=${node.vswitch}`,
            ...options.agentArgs,
          ],
          dir,
          { env: { ...CHART_AGENT_ENV, SHOAL_PEER_SECRET: secret } },
        );
        started.push(proc);
        return proc;
      }),
    );
    for (const [i, agent] of agents.entries())
      await waitServing(network, agent, `http://${network.nodes[i]!.ip}:${AGENT_PORT}/healthz`);
    // Agents heartbeat at the chart's interval (3 s); an agent sends its first as it starts.
    await waitListed(network, network.nodes.length);
    return { agents, controlPlane, secret, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
