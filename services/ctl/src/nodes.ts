/**
 * `shoalctl nodes`: the node registry as discovery keeps it, by zone and vSwitch; with discovery in
 * Kubernetes mode, also the cluster's nodes that have no working agent, and why.
 */
import { type KvEntry, Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  bucketEntries,
  buckets,
  decode,
  nodeIdOf,
  nodeRecord,
  type NodeRecord,
  topologyRecord,
  type TopologyRecord,
} from '@shoal/mesh';
import { renderTable } from './report.js';

/**
 * `ready` and `silent` judge a heartbeating agent; the others describe a Kubernetes node whose agent
 * sends none: left out by the node-pool filter, its pod missing, starting, crash-looping or failed, or
 * running but not heartbeating (`no heartbeat`).
 */
export type AgentState =
  'ready' | 'silent' | 'excluded' | 'missing' | 'starting' | 'crashloop' | 'failed' | 'no heartbeat';

export interface NodeView extends Omit<NodeRecord, 'url' | 'startedAt' | 'seenAt'> {
  state: AgentState;
  /** Absent for a Kubernetes node without a heartbeating agent (as are startedAt and seenAt). */
  url?: string;
  startedAt?: number;
  seenAt?: number;
  /** Why the node has no working agent in the mesh. */
  reason?: string;
}

/** Every value in a bucket that `read` accepts; keys whose values it refuses are reported, not hidden. */
export async function readBucket<T>(
  nc: NatsConnection,
  bucket: string,
  read: (value: Uint8Array, key: string) => T,
): Promise<{ values: T[]; unreadable: string[] }> {
  const kv = await new Kvm(nc).open(bucket);
  let entries: KvEntry[];
  try {
    entries = await bucketEntries(kv);
  } catch (err) {
    // No bucket yet: discovery has never run against this NATS. Anything else is an error to report.
    if (!/not found/i.test(err instanceof Error ? err.message : String(err))) throw err;
    return { values: [], unreadable: [] };
  }
  const values: T[] = [];
  const unreadable: string[] = [];
  for (const entry of entries) {
    try {
      values.push(read(entry.value, entry.key));
    } catch {
      unreadable.push(entry.key);
    }
  }
  return { values, unreadable };
}

/** Every node record, and every Kubernetes node discovery reports (none outside Kubernetes mode). */
export async function readNodes(
  nc: NatsConnection,
): Promise<{ nodes: NodeRecord[]; topology: Map<string, TopologyRecord>; unreadable: string[] }> {
  const [nodes, topology] = await Promise.all([
    readBucket(nc, buckets.nodes, (value, key) => decode(nodeRecord, value, `node ${key}`)),
    readBucket(nc, buckets.topology, (value, key) => decode(topologyRecord, value, `topology ${key}`)),
  ]);
  return {
    nodes: nodes.values,
    topology: new Map(topology.values.map((t) => [nodeIdOf(t.name), t])),
    unreadable: [...nodes.unreadable, ...topology.unreadable.map((k) => `topology ${k}`)],
  };
}

function withoutAgent(id: string, t: TopologyRecord): NodeView {
  const state: AgentState = !t.inMesh
    ? 'excluded'
    : t.agent.state === 'running'
      ? 'no heartbeat'
      : t.agent.state;
  const reason =
    t.reason ??
    `agent pod ${t.agent.pod ?? ''} runs but sends no heartbeat: check its log and its connection to NATS`;
  return { id, zone: t.zone, vswitch: t.vswitch, pool: t.pool, state, reason };
}

/**
 * Orders nodes by zone, vSwitch and ID and judges each agent by its last heartbeat; Kubernetes nodes
 * with no node record are added with their agent's state and the reason.
 */
export function nodeViews(
  nodes: NodeRecord[],
  now: number,
  silentAfterMs: number,
  topology: ReadonlyMap<string, TopologyRecord> = new Map(),
): NodeView[] {
  const live = new Set(nodes.map((n) => n.id));
  return nodes
    .map((node): NodeView => ({ ...node, state: now - node.seenAt > silentAfterMs ? 'silent' : 'ready' }))
    .concat([...topology].filter(([id]) => !live.has(id)).map(([id, t]) => withoutAgent(id, t)))
    .sort(
      (a, b) =>
        a.zone.localeCompare(b.zone) || a.vswitch.localeCompare(b.vswitch) || a.id.localeCompare(b.id),
    );
}

/** A span as a person reads an age: 0.4s, 12s, 3m12s, 2h05m, 3d4h. */
export function formatAge(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.floor(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${h % 24}h`;
}

/** A table grouped by zone and vSwitch, with a summary line. */
export function formatNodes(views: NodeView[], now: number, unreadable: string[] = []): string {
  const notes = unreadable.length ? [`unreadable node records: ${unreadable.join(', ')}`] : [];
  if (views.length === 0) return ['no nodes registered', ...notes].join('\n');
  const header = ['ZONE', 'VSWITCH', 'NODE', 'AGENT', 'ADDRESS', 'POOL', 'UP', 'LAST HEARTBEAT'];
  const rows: string[][] = [];
  let previous: NodeView | undefined;
  for (const view of views) {
    const sameZone = previous?.zone === view.zone;
    const sameVswitch = sameZone && previous?.vswitch === view.vswitch;
    rows.push([
      sameZone ? '' : view.zone || '-',
      sameVswitch ? '' : view.vswitch || '-',
      view.id,
      view.state,
      view.url ?? '-',
      view.pool || '-',
      view.startedAt === undefined ? '-' : formatAge(now - view.startedAt),
      view.seenAt === undefined ? '-' : `${formatAge(now - view.seenAt)} ago`,
    ]);
    previous = view;
  }
  const zones = new Set(views.map((v) => v.zone)).size;
  const vswitches = new Set(views.map((v) => `${v.zone}\n${v.vswitch}`)).size;
  const silent = views.filter((v) => v.state === 'silent').length;
  const broken = views.filter((v) => v.reason !== undefined);
  const summary =
    `${views.length} node${views.length === 1 ? '' : 's'} in ${zones} zone${zones === 1 ? '' : 's'} and ` +
    `${vswitches} vSwitch${vswitches === 1 ? '' : 'es'}` +
    (silent ? `; ${silent} silent (no heartbeat recently: is the agent or discovery down?)` : '') +
    (broken.length ? `; ${broken.length} without a working agent:` : '');
  const reasons = broken.map((v) => `  ${v.id}: ${v.reason ?? ''}`);
  return [renderTable(header, rows), '', summary, ...reasons, ...notes].join('\n');
}
