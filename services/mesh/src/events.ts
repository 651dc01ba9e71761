/**
 * Events: every decision and state change, published on the SHOAL_EVENTS stream so that a pull, a node
 * or a blob can be replayed later. Events never carry credentials; publishing never blocks the data path.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { MeshConnection } from './nats.js';
import { subjects } from './subjects.js';

export const ChunkSourceKinds = { peer: 'peer', origin: 'origin', cache: 'cache' } as const;
export type ChunkSourceKind = (typeof ChunkSourceKinds)[keyof typeof ChunkSourceKinds];

interface Base {
  /** Milliseconds since the epoch, on the publisher's clock. */
  at: number;
  /** The node ID or service instance that published the event. */
  origin: string;
}

export type ShoalEvent = Base &
  (
    | { type: 'pull_started'; node: string; blob: string; registry: string; repository: string; size: number }
    | {
        type: 'pull_finished';
        node: string;
        blob: string;
        size: number;
        ms: number;
        ok: boolean;
        bytes: Record<ChunkSourceKind, number>;
        chunks: Record<ChunkSourceKind, number>;
        error?: string;
      }
    | {
        type: 'chunk_fetched';
        node: string;
        blob: string;
        index: number;
        source: 'peer' | 'origin';
        peer?: string;
        bytes: number;
        ms: number;
      }
    | {
        type: 'chunk_failed';
        node: string;
        blob: string;
        index: number;
        source: 'peer' | 'origin';
        peer?: string;
        reason: string;
      }
    | {
        /** A node stopped asking a parent for a blob's chunks: it failed, sent bad bytes, or was slow. */
        type: 'parent_dropped';
        node: string;
        blob: string;
        peer: string;
        why: 'failed' | 'corrupt' | 'slow';
        reason: string;
      }
    | { type: 'fallback'; node: string; blob?: string; reason: string }
    | {
        type: 'schedule_decided';
        scheduler: string;
        node: string;
        blob: string;
        peer: number;
        originGrants: number;
        wait: number;
        ms: number;
      }
    | { type: 'node_joined'; node: string; zone: string; vswitch: string; url: string }
    | { type: 'node_left'; node: string; reason: string }
    | {
        /** A Kubernetes node's topology or agent state changed (discovery in Kubernetes mode). */
        type: 'node_topology';
        node: string;
        zone: string;
        vswitch: string;
        pool: string;
        inMesh: boolean;
        agent: string;
        reason?: string;
      }
    | { type: 'manifest_conflict'; blob: string; index: number; node: string }
    | { type: 'blob_invalid'; node: string; blob: string; reason: string }
    | {
        /** Discovery found a registry endpoint's health changed, or the endpoints of a registry changed. */
        type: 'endpoint_changed';
        registry: string;
        url: string;
        healthy: boolean;
        reason: string;
      }
    | {
        /** An agent stopped using one endpoint of a registry for another. */
        type: 'endpoint_switched';
        node: string;
        registry: string;
        from: string;
        to: string;
        reason: string;
      }
  );

export type ShoalEventType = ShoalEvent['type'];

/** Distributive Omit, so that each member of the union keeps its own fields. */
export type EventInput = ShoalEvent extends infer E
  ? E extends ShoalEvent
    ? Omit<E, 'at' | 'origin'>
    : never
  : never;

export interface EventPublisher {
  publish(event: EventInput): void;
  /** Events dropped because NATS was not connected or too slow. */
  readonly dropped: number;
}

/** A publisher that sends on core NATS into the events stream, dropping (and counting) when disconnected. */
export function natsEventPublisher(
  mesh: Pick<MeshConnection, 'connection'>,
  origin: string,
  onDrop?: () => void,
  maxPendingBytes = 8 * 1024 * 1024,
): EventPublisher {
  let dropped = 0;
  return {
    publish(event) {
      const nc = mesh.connection();
      const full = { ...event, at: Date.now(), origin };
      if (!nc || pendingBytes(nc) > maxPendingBytes) {
        dropped++;
        onDrop?.();
        return;
      }
      try {
        nc.publish(subjects.event(full.type, origin), JSON.stringify(full));
      } catch {
        dropped++;
        onDrop?.();
      }
    },
    get dropped() {
      return dropped;
    },
  };
}

function pendingBytes(nc: NatsConnection): number {
  // The protocol handler's outbound buffer is not public API; when unavailable, assume no backlog.
  const handler = (nc as unknown as { protocol?: { outbound?: { size?: () => number } } }).protocol;
  return handler?.outbound?.size?.() ?? 0;
}

/** An in-memory publisher for tests and for running without NATS. */
export function memoryEventPublisher(origin: string): EventPublisher & { events: ShoalEvent[] } {
  const events: ShoalEvent[] = [];
  return {
    events,
    publish(event) {
      events.push({ ...event, at: Date.now(), origin });
    },
    dropped: 0,
  };
}
