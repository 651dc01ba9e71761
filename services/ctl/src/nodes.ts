/** `shoalctl nodes`: the node registry as discovery keeps it, by zone and vSwitch. */
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { buckets, decode, nodeRecord, type NodeRecord } from '@shoal/mesh';
import { renderTable } from './report.js';

export type AgentState = 'ready' | 'silent';

export interface NodeView extends NodeRecord {
  /** `silent` when the last heartbeat is older than the threshold (discovery is behind, or the agent). */
  state: AgentState;
}

/** Every node record in the nodes bucket; records that cannot be read are reported, not hidden. */
export async function readNodes(nc: NatsConnection): Promise<{ nodes: NodeRecord[]; unreadable: string[] }> {
  const kv = await new Kvm(nc).open(buckets.nodes);
  // Heartbeats rewrite the keys while they are listed, and the listing may then name a key twice.
  const keys = new Set<string>();
  try {
    for await (const key of await kv.keys()) keys.add(key);
  } catch (err) {
    // No bucket yet: discovery has never run against this NATS. Anything else is an error to report.
    if (!/not found/i.test(err instanceof Error ? err.message : String(err))) throw err;
    return { nodes: [], unreadable: [] };
  }
  const nodes: NodeRecord[] = [];
  const unreadable: string[] = [];
  for (const key of keys) {
    const entry = await kv.get(key);
    if (entry?.operation !== 'PUT') continue;
    try {
      nodes.push(decode(nodeRecord, entry.value, `node ${key}`));
    } catch {
      unreadable.push(key);
    }
  }
  return { nodes, unreadable };
}

/** Orders nodes by zone, vSwitch and ID, and judges each agent by its last heartbeat. */
export function nodeViews(nodes: NodeRecord[], now: number, silentAfterMs: number): NodeView[] {
  return nodes
    .map((node): NodeView => ({ ...node, state: now - node.seenAt > silentAfterMs ? 'silent' : 'ready' }))
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
      view.url,
      view.pool || '-',
      formatAge(now - view.startedAt),
      `${formatAge(now - view.seenAt)} ago`,
    ]);
    previous = view;
  }
  const zones = new Set(views.map((v) => v.zone)).size;
  const vswitches = new Set(views.map((v) => `${v.zone}\n${v.vswitch}`)).size;
  const silent = views.filter((v) => v.state === 'silent').length;
  const summary =
    `${views.length} node${views.length === 1 ? '' : 's'} in ${zones} zone${zones === 1 ? '' : 's'} and ` +
    `${vswitches} vSwitch${vswitches === 1 ? '' : 'es'}` +
    (silent ? `; ${silent} silent (no heartbeat recently: is the agent or discovery down?)` : '');
  return [renderTable(header, rows), '', summary, ...notes].join('\n');
}
