/**
 * The fault-injection harness: a whole mesh on one machine (NATS, a registry behind the kit's counting
 * proxy, the control services, and N nodes, each an agent with its own containerd pulling through it
 * via hosts.toml), a "rollout" in which every node pulls one image with ctr at once, and one fault
 * injected once a given share of the rollout's bytes has moved. containerd checks every digest, so a
 * pull that completes was byte-exact; after the rollout each agent's copy of every layer is read back
 * through its mirror API and checked too.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
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
  waitFor,
  writeHostsToml,
} from '../kit/index.js';
import {
  metricSum,
  type Metrics,
  type ShoalService,
  startAgent,
  startControlService,
  waitForNodes,
} from '../support/shoal.js';

export const MiB = 1024 * 1024;

/** Where every fault test writes its figures (results/ is git-ignored). */
export const resultsDir = fileURLToPath(new URL('../../results/chaos/', import.meta.url));

/** Blob GETs only: the fault applies to the bytes of the rollout, never to manifests or the /v2/ probe. */
export const BLOB_GETS = { match: /\/blobs\/sha256:/, methods: ['GET'] } as const;

export interface HarnessOptions {
  /** Label for the temp dir. */
  name: string;
  /** Nodes, spread over two zones and two vSwitches per zone; 6 unless given. */
  nodes?: number;
  /** Layers per image and the size of each; 3 × 4 MiB unless given. */
  layers?: number;
  layerSize?: number;
  /**
   * The registry's speed per blob request when no fault is injected. Unthrottled, loopback finishes a
   * rollout before a fault can be injected into it; this stands for the registry's link.
   */
  registryBytesPerSecond?: number;
  /** Further agent flags, for every node. */
  agentArgs?: string[];
}

export interface ChaosNode {
  readonly id: string;
  readonly zone: string;
  readonly vswitch: string;
  /** The agent's port, kept across restarts so hosts.toml stays right. */
  readonly port: number;
  readonly containerd: Containerd;
  /** The hosts dir whose hosts.toml sends the registry to this node's agent. */
  readonly hostsDir: string;
  /** The agent now running (replaced by restartAgent). */
  agent: ShoalService;
}

/** One node of a rollout: whose containerd pulls, through which hosts dir, watched through which agent. */
export interface PullTarget {
  id: string;
  containerd: Containerd;
  hostsDir: string;
  agent: ShoalService;
}

export interface PullOutcome {
  node: string;
  ok: boolean;
  /** From the start of the rollout to the end of this node's pull. */
  ms: number;
  /** The tail of ctr's output when the pull failed. */
  error?: string;
}

export interface FaultTrigger {
  /**
   * Inject once this share (0..1) of the rollout's bytes (the fetched chunks of every node already pulling)
   * has moved.
   */
  atFraction: number;
  inject: () => Promise<void>;
}

export interface RolloutResult {
  image: BuiltImage;
  /** Layers plus config: what one node must fetch. */
  imageBytes: number;
  pulls: PullOutcome[];
  /** When the fault was injected, from the start of the rollout; undefined when it never was. */
  injectedAtMs: number | undefined;
  /** Pulls already finished when the fault was injected. */
  doneBeforeInjection: number;
  /** Body bytes of the image's blobs the registry sent during the rollout (agents and containerd alike). */
  registryEgressBytes: number;
  /** Agent counters over the rollout, summed over every node whose agent was up at the end. */
  counters: Record<string, number>;
  ms: number;
}

/** The counters each result reports, summed over agents, by metric and label set. */
const COUNTERS = [
  'shoal_agent_fetch_bytes_total',
  'shoal_agent_fallbacks_total',
  'shoal_agent_chunk_verify_failures_total',
  'shoal_agent_chunk_failures_total',
  'shoal_agent_origin_requests_total',
  'shoal_agent_peer_upload_bytes_total',
];

export type ControlKind = 'discovery' | 'announcer' | 'scheduler';
const CONTROL_KINDS: readonly ControlKind[] = ['discovery', 'announcer', 'scheduler'];

/** The replicas of each control service; the first of each is the one the harness started. */
export type ControlServices = Record<ControlKind, ShoalService[]>;

export interface Harness {
  readonly dir: string;
  readonly nats: NatsServer;
  readonly registry: Registry;
  readonly nodes: ChaosNode[];
  readonly control: ControlServices;
  readonly options: Required<HarnessOptions>;
  /** The registry's fault when none is injected: its link speed for blob GETs. */
  readonly baseFault: { bytesPerSecond: number; match: RegExp; methods: readonly string[] };
  /** Builds and pushes an image of random content, so no node has any of it yet. */
  pushImage(tag: string, layers?: number, layerSize?: number): Promise<BuiltImage>;
  /**
   * Every node pulls `image` at once; `fault` is injected once its share of the bytes has moved. Targets
   * named in `startAfterFault` begin their pull only once the fault has been injected (at once without a
   * fault); their times still count from the start of the rollout.
   */
  rollout(
    image: BuiltImage,
    options?: { targets?: PullTarget[]; fault?: FaultTrigger; startAfterFault?: string[] },
  ): Promise<RolloutResult>;
  /** Reads every layer back through each target's mirror API: the bytes of layers that do not verify. */
  verifyAgents(image: BuiltImage, targets?: PullTarget[]): Promise<{ checked: number; corruptBytes: number }>;
  killAgent(node: ChaosNode): Promise<void>;
  /** Bytes of verified chunks of the image's blobs in the node's cache dir (read from disk). */
  cachedBytes(node: ChaosNode, image: BuiltImage): Promise<number>;
  /** Starts the node's agent again on the same port with the same cache dir. */
  restartAgent(node: ChaosNode): Promise<ShoalService>;
  /** Starts one more replica of a control service, named `instance`. */
  startReplica(kind: ControlKind, instance: string): Promise<ShoalService>;
  /** Kills (SIGKILL) every replica of every control service. */
  killControl(): Promise<void>;
  /** Starts again the first replica of each control service where it is not running; forgets dead others. */
  restartControl(): Promise<void>;
  /**
   * Puts everything back as it was after start: no registry fault, NATS up, every agent and one replica
   * of each control service running, every node registered and connected.
   */
  heal(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts the whole mesh and waits until discovery lists every node. */
export async function startHarness(input: HarnessOptions): Promise<Harness> {
  const options: Required<HarnessOptions> = {
    nodes: 6,
    layers: 3,
    layerSize: 4 * MiB,
    registryBytesPerSecond: 1 * MiB,
    agentArgs: [],
    ...input,
  };
  const dir = await makeTempDir(`chaos-${options.name}`);
  // What has started so far, stopped again if the rest cannot start, so a failed start leaks nothing.
  const started: { stop(): Promise<unknown> }[] = [];
  const track = async <T extends { stop(): Promise<unknown> }>(starting: Promise<T>): Promise<T> => {
    const server = await starting;
    started.push(server);
    return server;
  };
  /** Waits for every start to settle (so each one that succeeded is tracked), then fails if one failed. */
  const settled = async <T>(starting: Promise<T>[]): Promise<T[]> => {
    const results = await Promise.allSettled(starting);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    return results.map((r) => (r as PromiseFulfilledResult<T>).value);
  };
  try {
    return await startParts();
  } catch (err) {
    await Promise.allSettled(started.map(async (s) => await s.stop()));
    await removeTempDir(dir);
    throw err;
  }

  async function startParts(): Promise<Harness> {
    const natsStarting = track(startNats());
    const registryStarting = track(startRegistry());
    await Promise.allSettled([natsStarting, registryStarting]);
    const nats = await natsStarting;
    const registry = await registryStarting;
    const baseFault = { bytesPerSecond: options.registryBytesPerSecond, ...BLOB_GETS };
    registry.setFault(baseFault);

    const startControl = async (kind: ControlKind, instance?: string) =>
      await startControlService(kind, {
        natsUrl: nats.url,
        dir,
        ...(instance === undefined ? {} : { instance }),
        extraArgs: kind === 'discovery' ? [`--registries=${registry.url}`] : [],
      });
    const [discovery, announcer, scheduler] = (await settled([
      track(startControl('discovery')),
      track(startControl('announcer')),
      track(startControl('scheduler')),
    ])) as [ShoalService, ShoalService, ShoalService];
    const control: ControlServices = {
      discovery: [discovery],
      announcer: [announcer],
      scheduler: [scheduler],
    };

    const placements = Array.from({ length: options.nodes }, (_, i) => {
      // The first half in zone-a, the rest in zone-b; in each zone, nodes alternate between two vSwitches.
      const half = Math.ceil(options.nodes / 2);
      const zone = i < half ? 'a' : 'b';
      const inZone = i < half ? i : i - half;
      return { id: `n${i + 1}`, zone: `zone-${zone}`, vswitch: `vsw-${zone}${(inZone % 2) + 1}` };
    });
    const launchAgent = async (p: { id: string; zone: string; vswitch: string }, port?: number) =>
      await startAgent({
        id: p.id,
        natsUrl: nats.url,
        registries: [registry.url],
        dir,
        zone: p.zone,
        vswitch: p.vswitch,
        extraArgs: options.agentArgs,
        ...(port === undefined ? {} : { port }),
      });
    const nodes: ChaosNode[] = await settled(
      placements.map(async (p) => {
        const containerdStarting = track(startContainerd({ name: `containerd-${p.id}` }));
        const agentStarting = track(launchAgent(p));
        await Promise.allSettled([containerdStarting, agentStarting]);
        const containerd = await containerdStarting;
        const agent = await agentStarting;
        const hostsDir = join(dir, 'hosts', p.id);
        await writeHostsToml(hostsDir, registry.host, agent.url);
        return { ...p, port: agent.port, containerd, hostsDir, agent };
      }),
    );
    await waitForNodes(
      nats.url,
      nodes.map((n) => n.id),
      30_000,
    );
    return assemble(nats, registry, control, nodes, launchAgent, startControl, baseFault);
  }

  function assemble(
    nats: NatsServer,
    registry: Registry,
    control: ControlServices,
    nodes: ChaosNode[],
    launchAgent: (p: { id: string; zone: string; vswitch: string }, port?: number) => Promise<ShoalService>,
    startControl: (kind: ControlKind, instance?: string) => Promise<ShoalService>,
    baseFault: Harness['baseFault'],
  ): Harness {
    const imageDigests = (image: BuiltImage) => [image.config.digest, ...image.layers.map((l) => l.digest)];
    const imageBytes = (image: BuiltImage) => image.layersSize + image.config.size;
    const egress = (image: BuiltImage) => {
      const digests = imageDigests(image);
      return registry
        .requests()
        .filter((r) => r.method === 'GET' && digests.some((d) => r.path.includes(d)))
        .reduce((sum, r) => sum + r.bytes, 0);
    };

    const harness: Harness = {
      dir,
      nats,
      registry,
      nodes,
      control,
      options,
      baseFault,

      async pushImage(tag, layers = options.layers, layerSize = options.layerSize) {
        return await buildAndPushImage({ registry, repo: `chaos/${options.name}`, tag, layers, layerSize });
      },

      async rollout(image, rolloutOptions = {}) {
        const targets = rolloutOptions.targets ?? targetsOf(nodes);
        const before = await Promise.all(targets.map(async (t) => await snapshot(t.agent)));
        const egressBefore = egress(image);
        const began = Date.now();
        let finished = 0;
        let injected!: () => void;
        const faultInjected = new Promise<void>((resolve) => (injected = resolve));
        if (rolloutOptions.fault === undefined) injected();
        const late = new Set(rolloutOptions.startAfterFault ?? []);
        const pulls = targets.map(async (t): Promise<PullOutcome> => {
          if (late.has(t.id)) await faultInjected;
          const result = await t.containerd.pull({
            ref: image.ref,
            hostsDir: t.hostsDir,
            namespace: t.containerd.newNamespace('rollout'),
            timeoutMs: 150_000,
          });
          finished++;
          const outcome: PullOutcome = { node: t.id, ok: result.ok, ms: Date.now() - began };
          if (!result.ok)
            outcome.error = `${result.stderr}\n${result.stdout}`.trim().split('\n').slice(-3).join(' | ');
          return outcome;
        });

        let injectedAtMs: number | undefined;
        let doneBeforeInjection = 0;
        const fault = rolloutOptions.fault;
        if (fault !== undefined) {
          // Only targets already pulling can move the bytes that trigger the fault.
          const pulling = targets.filter((t) => !late.has(t.id)).length;
          const goal = fault.atFraction * pulling * imageBytes(image);
          let allDone = false;
          const settled = Promise.allSettled(pulls.filter((_, i) => !late.has(targets[i]!.id))).then(
            () => (allDone = true),
          );
          // Polls every agent's fetch counter; the rollout's bytes are what they fetched since it began.
          while (!allDone) {
            const moved = (
              await Promise.all(
                targets.map(async (t, i) => {
                  const now = await snapshot(t.agent);
                  return now === undefined ? 0 : fetched(now) - fetched(before[i]);
                }),
              )
            ).reduce((a, b) => a + b, 0);
            if (moved >= goal) break;
            await Promise.race([settled, sleep(50)]);
          }
          if (!allDone) {
            injectedAtMs = Date.now() - began;
            doneBeforeInjection = finished;
            try {
              await fault.inject();
            } catch (err) {
              // The held-back pulls still run, and end, before the next rollout on the same nodes begins.
              injected();
              await Promise.allSettled(pulls);
              throw err;
            }
          }
          // Started now also when the others were done before the fault could be injected.
          injected();
        }
        const outcomes = await Promise.all(pulls);
        const ms = Date.now() - began;
        const registryEgressBytes = egress(image) - egressBefore;
        const after = await Promise.all(targets.map(async (t) => await snapshot(t.agent)));
        const counters: Record<string, number> = {};
        targets.forEach((t, i) => {
          const end = after[i];
          if (end === undefined) return;
          // A restarted agent's counters start again from zero.
          const start = before[i]?.pid === end.pid ? before[i]?.metrics : undefined;
          for (const [key, value] of end.metrics) {
            if (!COUNTERS.some((name) => key === name || key.startsWith(`${name}{`))) continue;
            counters[key] = (counters[key] ?? 0) + value - (start?.get(key) ?? 0);
          }
        });
        return {
          image,
          imageBytes: imageBytes(image),
          pulls: outcomes,
          injectedAtMs,
          doneBeforeInjection,
          registryEgressBytes,
          counters,
          ms,
        };
      },

      async verifyAgents(image, targets = targetsOf(nodes.filter((n) => n.agent.process.running()))) {
        let checked = 0;
        let corruptBytes = 0;
        for (const t of targets) {
          for (const layer of image.layers) {
            const got = await blobDigest(
              `${t.agent.url}/v2/${image.repo}/blobs/${layer.digest}?ns=${registry.host}`,
            );
            checked++;
            if (got.digest !== layer.digest || got.bytes !== layer.size) corruptBytes += layer.size;
          }
        }
        return { checked, corruptBytes };
      },

      async killAgent(node) {
        await node.agent.stop('SIGKILL');
      },

      async cachedBytes(node, image) {
        let total = 0;
        for (const digest of imageDigests(image)) {
          const blobDir = join(dir, node.id, 'cache', 'blobs', 'sha256', digest.slice('sha256:'.length));
          const names = await readdir(blobDir).catch(() => [] as string[]);
          // Chunk files are named by their index and exist only once verified; the rest is bookkeeping.
          for (const name of names.filter((n) => /^\d+$/.test(n)))
            total += (await stat(join(blobDir, name))).size;
        }
        return total;
      },

      async restartAgent(node) {
        if (node.agent.process.running()) await node.agent.stop();
        node.agent = await launchAgent(node, node.port);
        return node.agent;
      },

      async startReplica(kind, instance) {
        const replica = await startControl(kind, instance);
        control[kind].push(replica);
        return replica;
      },

      async killControl() {
        await Promise.all(
          CONTROL_KINDS.flatMap((kind) => control[kind]).map(async (s) => await s.stop('SIGKILL')),
        );
      },

      async restartControl() {
        await Promise.all(
          CONTROL_KINDS.map(async (kind) => {
            const [first, ...others] = control[kind];
            const running = others.filter((s) => s.process.running());
            control[kind] = [
              first?.process.running() === true ? first : await startControl(kind),
              ...running,
            ];
          }),
        );
      },

      async heal() {
        registry.setFault(baseFault);
        if (!nats.process().running()) await nats.restart();
        const extra = CONTROL_KINDS.flatMap((kind) => control[kind].splice(1));
        await Promise.all(extra.map(async (s) => await s.stop()));
        await Promise.all([
          harness.restartControl(),
          ...nodes.map(async (n) => {
            if (!n.agent.process.running()) await harness.restartAgent(n);
          }),
        ]);
        await waitForNodes(
          nats.url,
          nodes.map((n) => n.id),
          30_000,
        );
        await Promise.all(
          nodes.map(
            async (n) =>
              await waitFor(
                async () =>
                  ((await (await fetch(`${n.agent.url}/healthz`)).json()) as { nats: boolean }).nats,
                { timeoutMs: 30_000, intervalMs: 100, what: `${n.id} connected to NATS` },
              ),
          ),
        );
      },

      async stop() {
        await Promise.allSettled(nodes.map(async (n) => await n.agent.stop()));
        await Promise.allSettled(
          CONTROL_KINDS.flatMap((kind) => control[kind]).map(async (s) => await s.stop()),
        );
        await Promise.allSettled([
          ...nodes.map(async (n) => await n.containerd.stop()),
          registry.stop(),
          nats.stop(),
        ]);
        await removeTempDir(dir);
      },
    };
    return harness;
  }
}

/** The nodes as rollout targets, each through its own agent as it runs now. */
export function targetsOf(list: readonly ChaosNode[]): PullTarget[] {
  return list.map((n) => ({ id: n.id, containerd: n.containerd, hostsDir: n.hostsDir, agent: n.agent }));
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Chunk bytes an agent fetched and verified, from peers and the registry. */
function fetched(snap: { metrics: Metrics } | undefined): number {
  return snap === undefined ? 0 : metricSum(snap.metrics, 'shoal_agent_fetch_bytes_total');
}

async function snapshot(agent: ShoalService): Promise<{ pid: number; metrics: Metrics } | undefined> {
  if (!agent.process.running()) return undefined;
  try {
    return { pid: agent.process.pid, metrics: await agent.metrics() };
  } catch {
    return undefined;
  }
}

/** GETs a blob and returns the sha256 and length of what came back. */
export async function blobDigest(url: string): Promise<{ digest: string; bytes: number; status: number }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(60_000) });
  const hash = createHash('sha256');
  let bytes = 0;
  if (res.body) {
    for await (const piece of res.body as AsyncIterable<Uint8Array>) {
      hash.update(piece);
      bytes += piece.length;
    }
  }
  return { digest: `sha256:${hash.digest('hex')}`, bytes, status: res.status };
}

/** Nearest-rank percentile of a list of durations. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/** What every fault reports, written to results/chaos/<fault>.json. */
export interface FaultReport {
  fault: string;
  description: string;
  nodes: number;
  pullsTried: number;
  pullsCompleted: number;
  /** Pulls that failed on nodes the fault did not take down. */
  pullsLost: number;
  /** Pulls on nodes whose agent the fault killed (not counted as lost). */
  pullsOnKilledNodes?: { tried: number; completed: number };
  corruptBytesDelivered: number;
  p50Ms: number;
  p99Ms: number;
  baselineP99Ms: number;
  p99PenaltyMs: number;
  registryEgressImages: number;
  injectedAtMs: number | undefined;
  /** Pulls that had already completed when the fault was injected. */
  pullsDoneBeforeInjection: number;
  counters: Record<string, number>;
  extra?: Record<string, unknown>;
  machine: { cpus: number };
  at: string;
}

/**
 * Folds a rollout into the report: `lostOn` are the nodes whose pulls count (the others were taken
 * down by the fault and are reported apart).
 */
export function report(
  fault: string,
  description: string,
  result: RolloutResult,
  baseline: RolloutResult | undefined,
  verify: { corruptBytes: number },
  options: { killed?: readonly string[]; extra?: Record<string, unknown> } = {},
): FaultReport {
  const killed = new Set(options.killed ?? []);
  const counted = result.pulls.filter((p) => !killed.has(p.node));
  const onKilled = result.pulls.filter((p) => killed.has(p.node));
  const times = counted.filter((p) => p.ok).map((p) => p.ms);
  const p99 = percentile(times, 99);
  const baselineP99 =
    baseline === undefined
      ? p99
      : percentile(
          baseline.pulls.filter((p) => p.ok).map((p) => p.ms),
          99,
        );
  return {
    fault,
    description,
    nodes: result.pulls.length,
    pullsTried: counted.length,
    pullsCompleted: counted.filter((p) => p.ok).length,
    pullsLost: counted.filter((p) => !p.ok).length,
    ...(killed.size > 0
      ? { pullsOnKilledNodes: { tried: onKilled.length, completed: onKilled.filter((p) => p.ok).length } }
      : {}),
    corruptBytesDelivered: verify.corruptBytes,
    p50Ms: percentile(times, 50),
    p99Ms: p99,
    baselineP99Ms: baselineP99,
    p99PenaltyMs: p99 - baselineP99,
    registryEgressImages: round(result.registryEgressBytes / result.imageBytes, 2),
    injectedAtMs: result.injectedAtMs,
    pullsDoneBeforeInjection: result.doneBeforeInjection,
    counters: result.counters,
    ...(options.extra === undefined ? {} : { extra: options.extra }),
    machine: { cpus: availableParallelism() },
    at: new Date().toISOString(),
  };
}

export function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Writes the report to results/chaos/<fault>.json and prints a one-line summary. */
export async function writeReport(r: FaultReport): Promise<void> {
  await mkdir(resultsDir, { recursive: true });
  await writeFile(join(resultsDir, `${r.fault}.json`), `${JSON.stringify(r, null, 2)}\n`);
  console.log(
    `[chaos] ${r.fault}: ${r.pullsCompleted}/${r.pullsTried} pulls, lost ${r.pullsLost}, corrupt ${r.corruptBytesDelivered} B, ` +
      `p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms (baseline ${r.baselineP99Ms} ms, penalty ${r.p99PenaltyMs} ms), ` +
      `registry egress ${r.registryEgressImages} images, injected at ${r.injectedAtMs ?? '-'} ms`,
  );
}

/**
 * The reference rollout of a test file: a warm-up first (the first rollout of a fresh mesh is slower,
 * its code paths not yet optimised), then a fault-free rollout, verified and reported as `name`.
 */
export async function measureBaseline(h: Harness, name: string, description: string): Promise<RolloutResult> {
  await h.rollout(await h.pushImage('warm-up'));
  const baseline = await h.rollout(await h.pushImage('baseline'));
  const r = report(name, description, baseline, undefined, await h.verifyAgents(baseline.image));
  await writeReport(r);
  if (r.pullsLost !== 0) throw new Error(`${name}: ${r.pullsLost} pulls lost without any fault`);
  return baseline;
}
