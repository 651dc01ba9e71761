/**
 * A discrete-event simulation of a rollout. The scheduler's own code decides (planRequest over an
 * IndexState fed by applyIndexEvent, with the in-memory origin lease store); the network is modelled:
 * every node has upload and download capacity split into `slots` equal lanes, the registry has its
 * egress, and each zone has a capacity for traffic leaving it. A transfer holds one upload lane at its
 * source, one download lane at its destination (and a cross-zone lane when it crosses zones) for
 * bytes / min(lane rates); when its source has no free lane it queues there, as a busy peer's server would.
 *
 * Simplifications, stated so the figures can be read for what they are: no latency (netem-free, like
 * the emulated cluster), lane rates fixed per transfer, one pool of download lanes per node shared by all
 * layers (the agent's per-blob concurrency is similar in effect), announcements batched every
 * `announceMs` and applied to the index at once. A parent's transfer stops counting against it when the
 * child next asks for that layer (the request's `fetching`) or announces, whichever is first, as in the
 * scheduler service.
 */
import {
  applyIndexEvent,
  createIndexState,
  decayingLoad,
  inflightLoad,
  type GrantStore,
  type IndexState,
  memoryGrantStore,
  planRequest,
} from '@shoal/scheduler';
import { type Assignment, Bitmap, chooseChunkSize, chunkCount, chunkRange } from '@shoal/mesh';
import { EventQueue } from './heap.js';

export type Policy = 'shoal' | 'direct' | 'whole-layer';

export interface SimConfig {
  nodes: number;
  zones: number;
  vswitchesPerZone: number;
  layers: number;
  layerSize: number;
  /** Bytes per second. */
  nodeUp: number;
  nodeDown: number;
  originUp: number;
  /** Bytes per second that may leave each zone for other zones. */
  crossZone: number;
  slots: number;
  planAhead: number;
  announceMs: number;
  /** Seconds over which node starts are spread; 0 starts every node together. */
  staggerS: number;
  /** Share of nodes that fail, and when (seconds after the first start). */
  failFraction: number;
  failAtS: number;
  originPerChunk: number;
  /** Origin leases one plan may hand out (0: no limit). */
  originMaxPerRequest: number;
  /** The scheduler's plan.inOrder. */
  inOrder: number;
  /** The agent's download.askWhenFree. */
  askWhenFree: number;
  /** Agents list every chunk they could use and the scheduler chooses `max` of them (rarest first). */
  choose: boolean;
  retryMs: number;
  parentSlots: number;
  seed: number;
}

export interface SimResult {
  policy: Policy;
  completions: number[];
  failed: number;
  /** Nodes alive at the end that never completed (must be 0). */
  incomplete: number;
  registryBytes: number;
  crossZoneBytesPerZone: number[];
  imageBytes: number;
  decisions: number;
  decisionMs: number[];
  wallMs: number;
  tMin: number;
}

interface Node {
  id: string;
  index: number;
  zone: number;
  vswitch: number;
  start: number;
  alive: boolean;
  done: number | undefined;
  have: Bitmap[];
  held: number;
  inflight: number;
  upFree: number;
  upQueue: (() => void)[];
  /** Planned but not started assignments, per layer. */
  planned: Map<number, { assignment: Assignment; at: number }>[];
  waitUntil: Map<number, number>[];
  avoid: Set<string>[];
  dirty: Set<number>;
  announceScheduled: boolean;
  planning: boolean;
  tickScheduled: boolean;
  /** Chunks this node is fetching right now: key layer * 1e6 + index. */
  fetching: Set<number>;
  /** Per layer: the chunks not held (unordered, swap-removed) and each chunk's position in it. */
  missing: number[][];
  missingAt: Int32Array[];
  /** Per layer: no chunk below this index is missing. */
  low: number[];
  /** Per layer: when the scheduler said to wait, until when. */
  layerWait: number[];
  /**
   * Per layer: peer transfers finished since the node last asked. Its next request says what it is still
   * fetching, which frees these parents at the scheduler (or the announcement does, whichever is first).
   */
  finished: { parent: string; released: boolean }[][];
}

function rng(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 4294967296;
  };
}

/** The agent re-plans assignments older than this (its PLAN_MAX_AGE_MS). */
const PLAN_MAX_AGE_S = 5;

const hexOf = (layer: number) => layer.toString(16).padStart(64, '0');
const digestOf = (layer: number) => `sha256:${hexOf(layer)}`;
const fakeHash = (layer: number, index: number) => (layer * 1_000_003 + index).toString(16).padStart(64, 'a');

export function boundSeconds(config: SimConfig): number {
  const size = config.layers * config.layerSize;
  return Math.max(
    size / config.originUp,
    size / config.nodeDown,
    (config.nodes * size) / (config.originUp + config.nodes * config.nodeUp),
  );
}

export async function simulate(config: SimConfig, policy: Policy): Promise<SimResult> {
  const wallStart = performance.now();
  const random = rng(config.seed);
  const queue = new EventQueue();
  const chunkSize = policy === 'whole-layer' ? config.layerSize : chooseChunkSize(config.layerSize);
  const count = chunkCount(config.layerSize, chunkSize);
  const state: IndexState = createIndexState();
  const grants: GrantStore = memoryGrantStore({ perChunk: config.originPerChunk, leaseMs: 10_000 });
  const load = config.choose ? inflightLoad(10_000) : decayingLoad(5_000);
  const planOptions = {
    nodeTtlMs: Number.MAX_SAFE_INTEGER,
    retryMs: config.retryMs,
    parentSlots: config.parentSlots,
    inOrder: config.inOrder,
    maxAlternates: 3,
    originMaxPerRequest: config.originMaxPerRequest,
  };
  const laneUp = config.nodeUp / config.slots;
  const laneDown = config.nodeDown / config.slots;
  const originLanes = Math.max(1, Math.round(config.originUp / laneUp));
  const zoneLanes = Math.max(1, Math.round(config.crossZone / laneUp));
  let originFree = originLanes;
  const originQueue: (() => void)[] = [];
  const zoneFree = Array.from({ length: config.zones }, () => zoneLanes);
  const zoneQueue = Array.from({ length: config.zones }, () => [] as (() => void)[]);
  const manifestHashes = Array.from({ length: config.layers }, () => new Array<string>(count).fill(''));
  let registryBytes = 0;
  const crossZoneBytes = new Array<number>(config.zones).fill(0);
  const decisionMs: number[] = [];
  let seq = 0;

  const nodes: Node[] = Array.from({ length: config.nodes }, (_, index) => {
    const zone = index % config.zones;
    const vswitch = Math.floor(index / config.zones) % config.vswitchesPerZone;
    return {
      id: `n${index}`,
      index,
      zone,
      vswitch,
      start: config.staggerS > 0 ? random() * config.staggerS : 0,
      alive: true,
      done: undefined,
      have: Array.from({ length: config.layers }, () => new Bitmap(count)),
      held: 0,
      inflight: 0,
      upFree: config.slots,
      upQueue: [],
      planned: Array.from({ length: config.layers }, () => new Map()),
      waitUntil: Array.from({ length: config.layers }, () => new Map()),
      avoid: Array.from({ length: config.layers }, () => new Set()),
      dirty: new Set(),
      announceScheduled: false,
      planning: false,
      tickScheduled: false,
      fetching: new Set(),
      missing: Array.from({ length: config.layers }, () => Array.from({ length: count }, (_, i) => i)),
      missingAt: Array.from({ length: config.layers }, () => Int32Array.from({ length: count }, (_, i) => i)),
      low: new Array<number>(config.layers).fill(0),
      layerWait: new Array<number>(config.layers).fill(0),
      finished: Array.from({ length: config.layers }, () => []),
    };
  });
  const byId = new Map(nodes.map((n) => [n.id, n]));
  for (const node of nodes) {
    applyIndexEvent(state, {
      type: 'node_put',
      node: {
        id: node.id,
        url: `http://${node.id}`,
        zone: `z${node.zone}`,
        vswitch: `z${node.zone}v${node.vswitch}`,
        pool: '',
        startedAt: 0,
        seenAt: 0,
      },
    });
  }
  const total = config.layers * count;

  /** Takes a lane at a shared resource, or queues until one frees. */
  const acquire = (free: () => number, take: () => void, waiting: (() => void)[], go: () => void) => {
    if (free() > 0) {
      take();
      go();
    } else {
      waiting.push(go);
    }
  };

  const announce = (node: Node) => {
    node.announceScheduled = false;
    if (!node.alive) return;
    for (const layer of node.dirty) {
      const have = node.have[layer]!;
      applyIndexEvent(state, {
        type: 'holder_put',
        blobHex: hexOf(layer),
        holder: {
          node: node.id,
          blob: digestOf(layer),
          seq: ++seq,
          chunkCount: count,
          have: have.toBase64(),
          complete: have.isFull(),
          at: queue.now,
        },
      });
    }
    node.dirty.clear();
  };

  const received = (node: Node, layer: number, index: number, fromOrigin: boolean) => {
    const have = node.have[layer]!;
    if (!have.has(index)) {
      have.set(index);
      node.held++;
      const list = node.missing[layer]!;
      const at = node.missingAt[layer]!;
      const position = at[index]!;
      const last = list.pop()!;
      if (last !== index) {
        list[position] = last;
        at[last] = position;
      }
    }
    if (fromOrigin && manifestHashes[layer]![index] === '') {
      manifestHashes[layer]![index] = fakeHash(layer, index);
      applyIndexEvent(state, {
        type: 'manifest_put',
        blobHex: hexOf(layer),
        manifest: {
          blob: digestOf(layer),
          size: config.layerSize,
          chunkSize,
          hashes: [...manifestHashes[layer]!],
        },
      });
    }
    node.dirty.add(layer);
    if (!node.announceScheduled) {
      node.announceScheduled = true;
      queue.after(config.announceMs / 1000, () => announce(node));
    }
    if (node.held === total && node.done === undefined) node.done = queue.now;
  };

  const releaseUp = (source: Node | 'origin') => {
    if (source === 'origin') {
      const next = originQueue.shift();
      if (next) next();
      else originFree++;
      return;
    }
    const next = source.upQueue.shift();
    if (next) next();
    else source.upFree++;
  };
  const releaseZone = (zone: number) => {
    const next = zoneQueue[zone]!.shift();
    if (next) next();
    else zoneFree[zone]!++;
  };

  /** Moves `bytes` from source to node; calls back with whether it arrived. */
  const transfer = (node: Node, source: Node | 'origin', bytes: number, done: (ok: boolean) => void) => {
    const crossZone = source !== 'origin' && source.zone !== node.zone ? source.zone : -1;
    const startFlow = () => {
      const rate = Math.min(source === 'origin' ? laneUp : laneUp, laneDown);
      queue.after(bytes / rate, () => {
        releaseUp(source);
        if (crossZone >= 0) releaseZone(crossZone);
        const ok = node.alive && (source === 'origin' || source.alive);
        if (ok) {
          if (source === 'origin') registryBytes += bytes;
          else if (crossZone >= 0) crossZoneBytes[node.zone]! += bytes;
        }
        done(ok);
      });
    };
    const afterUp = () => {
      if (crossZone >= 0) {
        acquire(
          () => zoneFree[crossZone]!,
          () => zoneFree[crossZone]!--,
          zoneQueue[crossZone]!,
          startFlow,
        );
      } else {
        startFlow();
      }
    };
    if (source === 'origin') {
      acquire(
        () => originFree,
        () => originFree--,
        originQueue,
        afterUp,
      );
    } else {
      acquire(
        () => source.upFree,
        () => source.upFree--,
        source.upQueue,
        afterUp,
      );
    }
  };

  const scheduleTick = (node: Node, delay = 0) => {
    if (node.tickScheduled) return;
    node.tickScheduled = true;
    queue.after(delay, () => {
      node.tickScheduled = false;
      return tick(node);
    });
  };

  const fetchChunk = (node: Node, layer: number, assignment: Assignment) => {
    const index = assignment.index;
    const key = layer * 1e6 + index;
    const { start, end } = chunkRange(config.layerSize, chunkSize, index);
    node.inflight++;
    node.fetching.add(key);
    const source =
      assignment.source.kind === 'peer' ? (byId.get(assignment.source.node) ?? 'origin') : 'origin';
    transfer(node, source, end - start, (ok) => {
      // The scheduler learns of the finished transfer from the child's next request for this layer, or
      // from its next announcement, whichever comes first.
      if (source !== 'origin') {
        const entry = { parent: source.id, released: false };
        node.finished[layer]!.push(entry);
        queue.after(config.announceMs / 1000, () => release(entry));
      }
      node.inflight--;
      node.fetching.delete(key);
      if (!node.alive) return;
      if (ok) received(node, layer, index, source === 'origin');
      else if (source !== 'origin') node.avoid[layer]!.add(source.id);
      scheduleTick(node);
    });
  };

  /**
   * What a node lists as ready for one layer: the next chunks in order (the runtime streams them), then
   * a spread sample of the rest. The agent lists every ready chunk and the scheduler samples; listing a
   * bounded sample here gives the scheduler the same choice at a fraction of the simulation's cost.
   */
  const readyChunks = (node: Node, layer: number): number[] => {
    const have = node.have[layer]!;
    const busy = (index: number) => node.fetching.has(layer * 1e6 + index);
    while (node.low[layer]! < count && have.has(node.low[layer]!)) node.low[layer]!++;
    const ready: number[] = [];
    const taken = new Set<number>();
    for (
      let index = node.low[layer]!;
      index < count && ready.length < config.inOrder + config.slots;
      index++
    ) {
      if (have.has(index) || busy(index)) continue;
      ready.push(index);
      taken.add(index);
    }
    const missing = node.missing[layer]!;
    const want = Math.min(missing.length, 128);
    const stride = Math.max(1, Math.floor(missing.length / want));
    const offset = Math.floor(random() * missing.length);
    for (let i = 0; i < want; i++) {
      const index = missing[(offset + i * stride) % missing.length]!;
      if (taken.has(index) || busy(index)) continue;
      taken.add(index);
      ready.push(index);
    }
    return ready;
  };

  const release = (entry: { parent: string; released: boolean }) => {
    if (entry.released) return;
    entry.released = true;
    load.release?.(entry.parent, queue.now * 1000);
  };

  /** One scheduler decision for a node, timed; the node makes no other decision meanwhile. */
  async function decide(node: Node, layer: number, need: number[], max?: number) {
    node.planning = true;
    const began = performance.now();
    // What the scheduler does with the request's `fetching`: parents of finished transfers are free.
    for (const entry of node.finished[layer]!) release(entry);
    node.finished[layer] = [];
    const plan = await planRequest(
      state,
      {
        v: 1,
        node: node.id,
        blob: digestOf(layer),
        size: config.layerSize,
        chunkSize,
        need,
        avoid: [...node.avoid[layer]!],
        ...(max === undefined ? {} : { max }),
      },
      grants,
      load,
      planOptions,
      queue.now * 1000,
    );
    decisionMs.push(performance.now() - began);
    node.planning = false;
    return plan;
  }

  async function tick(node: Node): Promise<void> {
    if (!node.alive || node.done !== undefined || node.planning) return;
    const now = queue.now;
    let nextWake = Number.POSITIVE_INFINITY;
    if (policy === 'shoal' && config.choose) {
      // Like the agent, ask once at least `askWhenFree` slots are free (or nothing is in flight), so one
      // decision fills several slots instead of one per finished chunk.
      if (node.inflight > 0 && config.slots - node.inflight < config.askWhenFree) return;
      for (let layer = 0; layer < config.layers && node.inflight < config.slots; layer++) {
        if (node.layerWait[layer]! > now) {
          nextWake = Math.min(nextWake, node.layerWait[layer]!);
          continue;
        }
        const ready = readyChunks(node, layer);
        if (ready.length === 0) continue;
        const plan = await decide(node, layer, ready, config.slots - node.inflight);
        let started = 0;
        for (const assignment of plan.assignments) {
          if (assignment.source.kind === 'wait' || node.fetching.has(layer * 1e6 + assignment.index))
            continue;
          fetchChunk(node, layer, assignment);
          started++;
        }
        if (started === 0) {
          node.layerWait[layer] = now + config.retryMs / 1000;
          nextWake = Math.min(nextWake, node.layerWait[layer]!);
        }
      }
      if (node.inflight < config.slots && node.done === undefined) {
        scheduleTick(node, Number.isFinite(nextWake) ? nextWake - queue.now : 0.25);
      }
      return;
    }
    for (let layer = 0; layer < config.layers && node.inflight < config.slots; layer++) {
      const have = node.have[layer]!;
      const planned = node.planned[layer]!;
      const waitUntil = node.waitUntil[layer]!;
      for (const [index, entry] of planned) if (queue.now - entry.at > PLAN_MAX_AGE_S) planned.delete(index);
      const ready: number[] = [];
      for (let index = 0; index < count; index++) {
        if (have.has(index) || node.fetching.has(layer * 1e6 + index)) continue;
        const until = waitUntil.get(index);
        if (until !== undefined && until > now) {
          nextWake = Math.min(nextWake, until);
          continue;
        }
        ready.push(index);
      }
      if (ready.length === 0) continue;
      if (policy === 'direct') {
        for (const index of ready) {
          if (node.inflight >= config.slots) break;
          fetchChunk(node, layer, {
            index,
            sha256: null,
            source: { kind: 'origin', leaseMs: 0 },
            alternates: [],
          });
        }
        continue;
      }
      if (policy === 'whole-layer') {
        // One whole layer from one random peer that has it complete, else from the registry.
        const holders = nodes.filter((n) => n.alive && n !== node && n.have[layer]!.isFull());
        const peer = holders.length > 0 ? holders[Math.floor(random() * holders.length)]! : undefined;
        fetchChunk(node, layer, {
          index: 0,
          sha256: null,
          source: peer ? { kind: 'peer', node: peer.id, url: '' } : { kind: 'origin', leaseMs: 0 },
          alternates: [],
        });
        continue;
      }
      const unplanned = ready.filter((i) => !planned.has(i)).slice(0, config.planAhead);
      const plannedReady = ready.filter((i) => planned.has(i)).length;
      if (plannedReady < config.slots - node.inflight && unplanned.length > 0) {
        const plan = await decide(node, layer, unplanned);
        for (const assignment of plan.assignments)
          planned.set(assignment.index, { assignment, at: queue.now });
      }
      for (const index of ready) {
        if (node.inflight >= config.slots) break;
        const entry = planned.get(index);
        if (!entry) continue;
        planned.delete(index);
        const assignment = entry.assignment;
        if (assignment.source.kind === 'wait') {
          const until = now + assignment.source.retryMs / 1000;
          waitUntil.set(index, until);
          nextWake = Math.min(nextWake, until);
          continue;
        }
        fetchChunk(node, layer, assignment);
      }
    }
    if (node.inflight < config.slots) {
      // Nothing in flight to wake us: come back when a waiting chunk is due, or soon in any case.
      scheduleTick(node, Number.isFinite(nextWake) ? nextWake - queue.now : 0.25);
    }
  }

  for (const node of nodes) scheduleTick(node, node.start);
  if (process.env.SHOAL_SIM_TRACE) {
    const trace = () => {
      const inflight = nodes.reduce((a, n) => a + n.inflight, 0);
      const queued = nodes.reduce((a, n) => a + n.upQueue.length, 0);
      const upIdle = nodes.reduce((a, n) => a + (n.alive && n.held > 0 ? n.upFree : 0), 0);
      const held = nodes.reduce((a, n) => a + n.held, 0);
      const waiting = nodes.filter((n) => n.inflight === 0 && n.done === undefined).length;
      process.stderr.write(
        `t=${queue.now.toFixed(1)} inflight=${inflight} queued-at-parents=${queued} queued-at-origin=${originQueue.length} ` +
          `idle-upload-lanes=${upIdle} held=${(held / total).toFixed(1)} images idle-nodes=${waiting} ` +
          `done=${nodes.filter((n) => n.done !== undefined).length}\n`,
      );
      if (nodes.some((n) => n.alive && n.done === undefined))
        queue.after(Number(process.env.SHOAL_SIM_TRACE) || 2, trace);
    };
    queue.after(0.5, trace);
  }
  if (config.failFraction > 0) {
    queue.at(config.failAtS, () => {
      const victims = [...nodes]
        .sort(() => random() - 0.5)
        .slice(0, Math.round(config.failFraction * config.nodes));
      for (const victim of victims) {
        victim.alive = false;
        // Discovery notices within its TTL; until then children find out from failing fetches.
        queue.after(5, () => {
          applyIndexEvent(state, { type: 'node_deleted', node: victim.id });
        });
      }
    });
  }

  await runAsync(queue);
  const alive = nodes.filter((n) => n.alive);
  return {
    policy,
    completions: alive.filter((n) => n.done !== undefined).map((n) => n.done! - n.start),
    failed: nodes.length - alive.length,
    incomplete: alive.filter((n) => n.done === undefined).length,
    registryBytes,
    crossZoneBytesPerZone: crossZoneBytes,
    imageBytes: config.layers * config.layerSize,
    decisions: decisionMs.length,
    decisionMs,
    wallMs: performance.now() - wallStart,
    tMin: boundSeconds(config),
  };
}

/** Runs the queue, awaiting each event, so planning (which is async) happens one decision at a time. */
async function runAsync(queue: EventQueue): Promise<void> {
  await queue.runAsync();
}
