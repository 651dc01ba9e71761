/** Helpers shared by discovery's tests on a real nats-server. */
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { decode, encode, nodeRecord, type NodeRecord, subjects } from '@shoal/mesh';

/** Polls `probe` until `accept` takes its value or `ms` pass, and returns the last value either way. */
export async function until<T>(
  probe: () => Promise<T> | T,
  accept: (v: T) => boolean,
  ms = 5_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (accept(value) || Date.now() > deadline) return value;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Sends the heartbeat an agent would; its own clock (seenAt) is not trusted, discovery stamps receipt. */
export function sendHeartbeat(nc: NatsConnection, id: string, extra: Partial<NodeRecord> = {}): void {
  const record: NodeRecord = {
    id,
    url: 'http://127.0.0.1:65001',
    zone: 'z1',
    vswitch: 'v1',
    pool: 'default',
    startedAt: 1,
    seenAt: 0,
    ...extra,
  };
  nc.publish(subjects.heartbeat(id), encode(record));
}

/** A node's record in the nodes bucket, or null when there is none. */
export async function readNode(nodes: KV, id: string): Promise<NodeRecord | null> {
  const entry = await nodes.get(id);
  return entry?.operation === 'PUT' ? decode(nodeRecord, entry.value, id) : null;
}
