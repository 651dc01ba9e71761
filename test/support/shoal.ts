/**
 * Starts Shoal's own services as real processes (the built `shoal` entry point), each on free loopback
 * ports with its own temp dirs, and reads their metrics. Integration tests and the local-mesh script
 * build on this and on the test kit's real servers.
 */
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  type ManagedProcess,
  onFreePorts,
  type Registry,
  startProcess,
  unlessExited,
  waitFor,
  waitForHttp,
} from '../kit/index.js';

/** Each service's own entry point; `shoal <service>` runs the same commands. */
export const serviceMain = (kind: string) =>
  fileURLToPath(new URL(`../../services/${kind}/dist/main.js`, import.meta.url));
export const shoalctlMain = fileURLToPath(new URL('../../services/ctl/dist/main.js', import.meta.url));

export interface ShoalService {
  kind: string;
  name: string;
  /** Base URL of the service's HTTP endpoint (the agent's API, or a service's /metrics). */
  url: string;
  port: number;
  process: ManagedProcess;
  metrics(): Promise<Metrics>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface AgentOptions {
  id: string;
  natsUrl: string;
  registries: string[];
  dir: string;
  zone?: string;
  vswitch?: string;
  extraArgs?: string[];
  logDir?: string;
  port?: number;
  /** The mesh secret for peer tokens; the test process's shared one unless given, none when null. */
  peerSecret?: string | null;
  /** Flags for the agent's Node.js runtime, before its script. */
  nodeArgs?: string[];
  /** More environment for the agent process. */
  env?: Record<string, string>;
}

/** The Node.js flags the Helm chart runs agents with (`agent.nodeOptions`), for benchmarks that measure them. */
export const CHART_AGENT_NODE_OPTIONS = ['--max-semi-space-size=4'];
/** The glibc malloc settings the Helm chart gives agents (`agent.malloc`). */
export const CHART_AGENT_ENV: Record<string, string> = {
  MALLOC_ARENA_MAX: '2',
  MALLOC_MMAP_THRESHOLD_: '131072',
};
/** The agent settings of the Helm chart's defaults that change its memory (`agent.cache.memory`). */
export const CHART_AGENT_ARGS = ['--cache-memory=128MiB'];

/** The secret the agents of this test process share; passed by environment so it never shows in `ps`. */
export const meshSecret = randomBytes(24).toString('base64url');

async function startShoal(
  kind: string,
  name: string,
  args: string[],
  port: number,
  logDir: string,
  env: Record<string, string> = {},
  nodeArgs: string[] = [],
): Promise<ShoalService> {
  const proc = await startProcess({
    name,
    cmd: process.execPath,
    args: [...nodeArgs, serviceMain(kind), ...args],
    logFile: join(logDir, `${name}.log`),
    env,
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    // A service that exits (its port taken, say) fails the start at once, with its last output; one
    // that never answers fails it after 20 s, with its output added.
    await unlessExited(
      proc,
      waitForHttp(`${url}/healthz`, 20_000, { accept: (status) => status === 200 || status === 503 }),
      'starting',
    );
  } catch (err) {
    // The error of a process that exited carries its output already.
    const exited = proc.exit() !== undefined;
    await proc.stop('SIGKILL');
    throw new Error(`${name} did not come up: ${String(err)}${exited ? '' : `\n${proc.tail(30)}`}`);
  }
  return {
    kind,
    name,
    url,
    port,
    process: proc,
    metrics: async () => parseMetrics(await (await fetch(`${url}/metrics`)).text()),
    async stop(signal = 'SIGTERM') {
      await proc.stop(signal, 10_000);
    },
  };
}

export async function startAgent(options: AgentOptions): Promise<ShoalService> {
  if (options.port === undefined)
    return await onFreePorts(1, async ([port = 0]) => await startAgent({ ...options, port }));
  const port = options.port;
  const args = [
    `--node-id=${options.id}`,
    '--host=127.0.0.1',
    `--port=${port}`,
    `--cache-dir=${join(options.dir, options.id, 'cache')}`,
    `--nats-servers=${options.natsUrl}`,
    `--registries=${options.registries.join(',')}`,
    `--node-zone=${options.zone ?? 'zone-a'}`,
    `--node-vswitch=${options.vswitch ?? 'vsw-1'}`,
    '--heartbeat-interval=500ms',
    ...(options.extraArgs ?? []),
  ];
  const secret = options.peerSecret === undefined ? meshSecret : options.peerSecret;
  const env: Record<string, string> = {
    ...options.env,
    ...(secret === null ? {} : { SHOAL_PEER_SECRET: secret }),
  };
  return startShoal(
    'agent',
    `agent-${options.id}`,
    args,
    port,
    options.logDir ?? options.dir,
    env,
    options.nodeArgs,
  );
}

/**
 * Starts one agent per ID against one registry and waits until discovery lists them all. Their scheduler
 * timeout is 10 s: tests that count registry bytes must not have a loaded test machine turn a slow
 * scheduler reply into a (legitimate, but there confusing) fallback to the registry.
 */
export async function startPatientAgents(
  natsUrl: string,
  registryUrl: string,
  dir: string,
  ids: string[],
): Promise<ShoalService[]> {
  const agents: ShoalService[] = [];
  for (const id of ids)
    agents.push(
      await startAgent({
        id,
        natsUrl,
        registries: [registryUrl],
        dir,
        extraArgs: ['--scheduler-timeout=10s'],
      }),
    );
  await waitForNodes(natsUrl, ids);
  return agents;
}

export async function startControlService(
  kind: 'scheduler' | 'announcer' | 'discovery',
  options: { natsUrl: string; dir: string; instance?: string; extraArgs?: string[] },
): Promise<ShoalService> {
  const name = options.instance ?? kind;
  return await onFreePorts(1, async ([port = 0]) => {
    const args = [
      `--nats-servers=${options.natsUrl}`,
      `--metrics-port=${port}`,
      '--metrics-host=127.0.0.1',
      `--instance=${name}`,
      ...(options.extraArgs ?? []),
    ];
    return await startShoal(kind, name, args, port, options.dir);
  });
}

export interface ControlPlane {
  discovery: ShoalService;
  announcer: ShoalService;
  scheduler: ShoalService;
  stop(): Promise<void>;
}

export async function startControlPlane(
  natsUrl: string,
  dir: string,
  registries: string[] = [],
): Promise<ControlPlane> {
  const [discovery, announcer, scheduler] = await Promise.all([
    startControlService('discovery', {
      natsUrl,
      dir,
      extraArgs: registries.length ? [`--registries=${registries.join(',')}`] : [],
    }),
    startControlService('announcer', { natsUrl, dir }),
    startControlService('scheduler', { natsUrl, dir }),
  ]);
  return {
    discovery,
    announcer,
    scheduler,
    async stop() {
      await Promise.all([discovery.stop(), announcer.stop(), scheduler.stop()]);
    },
  };
}

/** Waits until discovery has registered every named node in the nodes bucket. */
export async function waitForNodes(natsUrl: string, ids: string[], timeoutMs = 15_000): Promise<void> {
  const nc: NatsConnection = await connect({ servers: natsUrl });
  try {
    const kv = await new Kvm(nc).open('shoal_nodes');
    await waitFor(
      async () => {
        for (const id of ids) if (!(await kv.get(id))?.value.length) return false;
        return true;
      },
      { timeoutMs, intervalMs: 100, what: `nodes ${ids.join(', ')} registered` },
    );
  } finally {
    await nc.close();
  }
}

export type Metrics = Map<string, number>;

/** Parses the Prometheus text format into "name{labels}" → value, labels sorted, service label dropped. */
export function parseMetrics(text: string): Metrics {
  const out: Metrics = new Map();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!match?.[1] || match[3] === undefined) continue;
    const labels = (match[2] ?? '')
      .replace(/^\{|\}$/g, '')
      .split(/,(?=[a-zA-Z_]+=)/)
      .filter((l) => l && !l.startsWith('service='))
      .sort()
      .join(',');
    out.set(labels ? `${match[1]}{${labels}}` : match[1], Number(match[3]));
  }
  return out;
}

/** The value of a metric, 0 when absent. Labels are written as in the exposition: a="x",b="y". */
export function metric(metrics: Metrics, name: string, labels?: Record<string, string>): number {
  const key = labels
    ? `${name}{${Object.entries(labels)
        .map(([k, v]) => `${k}="${v}"`)
        .sort()
        .join(',')}}`
    : name;
  return metrics.get(key) ?? 0;
}

/** Sum of a metric over all its label sets. */
export function metricSum(metrics: Metrics, name: string): number {
  let sum = 0;
  for (const [key, value] of metrics) if (key === name || key.startsWith(`${name}{`)) sum += value;
  return sum;
}

/** Waits until the chunk index lists `node` as holding every chunk of each blob. */
export async function waitForHolders(
  natsUrl: string,
  node: string,
  digests: string[],
  timeoutMs = 10_000,
): Promise<void> {
  const nc: NatsConnection = await connect({ servers: natsUrl });
  try {
    const kv = await new Kvm(nc).open('shoal_chunks');
    await waitFor(
      async () => {
        for (const digest of digests) {
          const entry = await kv.get(`h.${digest.slice('sha256:'.length)}.${node}`);
          if (!entry?.value.length || !entry.json<{ complete: boolean }>().complete) return false;
        }
        return true;
      },
      { timeoutMs, intervalMs: 100, what: `${node} listed as holder of ${digests.length} blobs` },
    );
  } finally {
    await nc.close();
  }
}

/** Bytes of a blob's body the registry actually sent, over every request for it. */
export function bytesServed(registry: Registry, digest: string): number {
  return registry
    .requests()
    .filter((r) => r.method === 'GET' && r.path.includes(digest))
    .reduce((sum, r) => sum + r.bytes, 0);
}

/** GETs a blob through an agent's mirror API and hashes it as it arrives. */
export async function pullBlob(
  agent: ShoalService,
  repo: string,
  digest: string,
): Promise<{ sha256: string; bytes: number }> {
  const res = await fetch(`${agent.url}/v2/${repo}/blobs/${digest}`);
  if (res.status !== 200 || !res.body) throw new Error(`agent ${agent.name} answered ${res.status}`);
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const piece of res.body as AsyncIterable<Uint8Array>) {
    hash.update(piece);
    bytes += piece.length;
  }
  return { sha256: `sha256:${hash.digest('hex')}`, bytes };
}
