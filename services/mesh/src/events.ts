/**
 * Events: every decision and state change, published on the SHOAL_EVENTS stream so that a pull, a node
 * or a blob can be replayed later. Events never carry credentials; publishing never blocks the data path.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { Locality } from './messages.js';
import type { MeshConnection } from './nats.js';
import { subjects } from './subjects.js';

export const ChunkSourceKinds = { peer: 'peer', origin: 'origin', cache: 'cache' } as const;
export type ChunkSourceKind = (typeof ChunkSourceKinds)[keyof typeof ChunkSourceKinds];

/**
 * Why a scheduler gave a chunk the source it did. A peer was chosen by one rule of the ranking: it was the
 * only candidate on the best topology tier (`tier`), the least loaded of its tier (`load`), first in walk
 * order among equally loaded ones (`tie`), or the only candidate at all (`only`). The origin was chosen
 * because no live holder with a known hash existed (`no_live_holder`). A chunk waits because the mesh's
 * origin budget is spent (`origin_budget`) or the requester holds its share of it (`origin_share`), its
 * origin or zone lease is held by another node, no live holder with a known hash exists yet, every holder
 * is busy, the per-request origin limit is reached, too many leases were refused in this decision
 * already, the lease store failed, or a holder appeared while its lease was being taken (asking again
 * gets that holder).
 */
export const AssignmentReasons = {
  tier: 'tier',
  load: 'load',
  tie: 'tie',
  only: 'only',
  no_live_holder: 'no_live_holder',
  origin_budget: 'origin_budget',
  origin_share: 'origin_share',
  origin_lease_held: 'origin_lease_held',
  zone_lease_held: 'zone_lease_held',
  no_holder_yet: 'no_holder_yet',
  parents_busy: 'parents_busy',
  origin_limit: 'origin_limit',
  leases_refused: 'leases_refused',
  lease_error: 'lease_error',
  holder_appeared: 'holder_appeared',
} as const;
export type AssignmentReason = (typeof AssignmentReasons)[keyof typeof AssignmentReasons];
/** The rules of the parent ranking, in the order they are applied. */
export type RankingRule = Extract<AssignmentReason, 'tier' | 'load' | 'tie' | 'only'>;
export type WaitReason = Exclude<AssignmentReason, RankingRule | 'no_live_holder'>;

/**
 * A candidate parent as the scheduler ranked it: its topology tier (0 same vSwitch, 1 same zone, 2
 * elsewhere), its load (transfers assigned to it and not finished, to two decimals, as ranked) and its
 * place in the walk over the holders (the tie-break).
 */
export interface RankedCandidate {
  node: string;
  tier: number;
  load: number;
  tie: number;
}

/** One chunk of a `chunks_assigned` event: where it was sent, and the inputs that decided it. */
export interface AssignmentRecord {
  index: number;
  source: 'peer' | 'origin' | 'wait';
  /** The parent, for a peer assignment. */
  peer?: string;
  locality?: Locality;
  /** For a peer assignment, the candidates that were ranked, best first; the parent is the first. */
  candidates?: RankedCandidate[];
  /** Holders sampled but passed over as busy (their upload slots taken), so not ranked. */
  busy?: number;
  /** Set when a zone lease admitted the chunk from outside the requester's zone. */
  zoneLease?: boolean;
  /**
   * `origin`: a chunk told to wait is in line for the registry, or behind the node that holds its origin
   * or zone lease (see ChunkSource).
   */
  queue?: 'origin';
  reason: AssignmentReason;
}

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
    | {
        /**
         * Why one schedule decision assigned each chunk as it did; published after the reply, beside
         * `schedule_decided`. At most 64 assignments and 8 candidates each are kept; `truncated` counts
         * what was left out.
         */
        type: 'chunks_assigned';
        scheduler: string;
        node: string;
        blob: string;
        size: number;
        chunkSize: number;
        assignments: AssignmentRecord[];
        /** The peers the node asked not to be given (at most 8 listed). */
        avoid?: string[];
        truncated?: { assignments: number; candidates: number };
      }
    | { type: 'node_joined'; node: string; zone: string; vswitch: string; url: string }
    | { type: 'node_left'; node: string; reason: string }
    | {
        /**
         * A scheduler replica took a node for dead before discovery removed it: `reporters` could not
         * connect to it, and it missed its heartbeats. It is offered to nobody as a parent and its leases
         * are free to take.
         */
        type: 'node_suspected';
        scheduler: string;
        node: string;
        reporters: string[];
      }
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
