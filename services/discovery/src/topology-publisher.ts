/**
 * Publishes Kubernetes nodes' topology and agent state to the topology bucket, and a `node_topology`
 * event for each change. Every discovery replica watches the same API and computes the same records;
 * writes are compare-and-set against the entry just read, so each change is written, and announced, once.
 */
import { isDeepStrictEqual } from 'node:util';
import type { KV } from '@nats-io/kv';
import {
  bucketKeys,
  decode,
  encode,
  type EventPublisher,
  isCasConflict,
  type Logger,
  nodeIdOf,
  topologyRecord,
  type TopologyRecord,
} from '@shoal/mesh';
import type { NodeTopology } from './kubernetes.js';

export interface TopologyPublisher {
  /** Writes (or, for undefined, removes) a node's record; calls for one node are applied in order. */
  publish(name: string, topology: NodeTopology | undefined): Promise<void>;
  /** Removes records of nodes not in `ids` (mesh node IDs), e.g. deleted while no replica was running. */
  prune(ids: ReadonlySet<string>): Promise<number>;
}

export function createTopologyPublisher(options: {
  kv: () => KV | undefined;
  events: EventPublisher;
  log: Logger;
  now: () => number;
}): TopologyPublisher {
  const { events, log, now } = options;
  const chains = new Map<string, Promise<void>>();

  async function write(id: string, topology: NodeTopology | undefined): Promise<void> {
    const kv = options.kv();
    if (!kv) return;
    const entry = await kv.get(id);
    if (!topology) {
      if (entry?.operation !== 'PUT') return;
      try {
        await kv.delete(id, { previousSeq: entry.revision });
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
      return;
    }
    const record: TopologyRecord = { ...topology, updatedAt: now() };
    if (entry?.operation === 'PUT') {
      try {
        const current = decode(topologyRecord, entry.value, `topology of ${id}`);
        if (isDeepStrictEqual({ ...current, updatedAt: 0 }, { ...record, updatedAt: 0 })) return;
      } catch {
        // An unreadable record is simply replaced.
      }
    }
    try {
      await kv.put(id, encode(record), { previousSeq: entry?.revision ?? 0 });
    } catch (err) {
      // Another replica wrote first; it announces the change.
      if (isCasConflict(err)) return;
      throw err;
    }
    events.publish({
      type: 'node_topology',
      node: id,
      zone: record.zone,
      vswitch: record.vswitch,
      pool: record.pool,
      inMesh: record.inMesh,
      agent: record.agent.state,
      ...(record.reason === undefined ? {} : { reason: record.reason }),
    });
    const level = record.reason === undefined ? 'info' : 'warn';
    log[level](
      {
        node: id,
        zone: record.zone,
        vswitch: record.vswitch,
        pool: record.pool,
        agent: record.agent.state,
        reason: record.reason,
      },
      'node topology changed',
    );
  }

  return {
    publish(name, topology) {
      const id = nodeIdOf(name);
      const next = (chains.get(id) ?? Promise.resolve())
        .then(() => write(id, topology))
        .catch((err: unknown) => log.warn({ err, node: id }, 'could not publish node topology'));
      chains.set(id, next);
      void next.finally(() => {
        if (chains.get(id) === next) chains.delete(id);
      });
      return next;
    },
    async prune(ids) {
      const kv = options.kv();
      if (!kv) return 0;
      let removed = 0;
      for (const key of await bucketKeys(kv, (key) => !ids.has(key))) {
        await kv.delete(key);
        removed++;
      }
      return removed;
    },
  };
}
