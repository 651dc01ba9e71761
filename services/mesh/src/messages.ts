/**
 * Message schemas for everything that crosses NATS. Each subject in subjects.ts is paired with one schema
 * here; payloads are validated on receipt, so a malformed message is rejected with a clear reason and
 * never reaches service logic.
 */
import { z } from 'zod';
import { ShoalError } from './errors.js';

const nodeId = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'node id must be 1-64 of [A-Za-z0-9_-]');
const digest = z.string().regex(/^sha256:[a-f0-9]{64}$/, 'digest must be sha256:<64 hex>');
const sha256Hex = z.string().regex(/^[a-f0-9]{64}$/, 'sha256 must be 64 hex characters');
const chunkIndex = z.number().int().min(0).max(1_000_000);
const size = z
  .number()
  .int()
  .min(0)
  .max(2 ** 50);
const chunkSizeSchema = z
  .number()
  .int()
  .min(64 * 1024)
  .max(1024 * 1024 * 1024);

/** Agent → announcer: the node's full set of chunks of one blob (a snapshot, so order does not matter). */
export const chunksAnnouncement = z.object({
  type: z.literal('chunks'),
  node: nodeId,
  blob: digest,
  size,
  chunkSize: chunkSizeSchema,
  /** Monotonic per node; a snapshot older than the stored one is ignored. */
  seq: z.number().int().min(0),
  have: z.string().max(1_000_000),
  /** Hashes of chunks this node fetched from the origin, for the blob's chunk manifest. */
  hashes: z.record(z.string().regex(/^\d+$/), sha256Hex).optional(),
  complete: z.boolean(),
});

export const withdrawAnnouncement = z.object({
  type: z.literal('withdraw'),
  node: nodeId,
  blob: digest,
  seq: z.number().int().min(0),
  /** Set when the blob failed whole-digest verification: its manifest must be dropped too. */
  invalid: z.boolean().optional(),
});

export const announcement = z.discriminatedUnion('type', [chunksAnnouncement, withdrawAnnouncement]);
export type Announcement = z.infer<typeof announcement>;
export type ChunksAnnouncement = z.infer<typeof chunksAnnouncement>;

/** KV value: the chunk manifest of a blob. An empty string marks a chunk whose hash is not known yet. */
export const manifestRecord = z.object({
  blob: digest,
  size,
  chunkSize: chunkSizeSchema,
  hashes: z.array(z.union([sha256Hex, z.literal('')])),
});
export type ManifestRecord = z.infer<typeof manifestRecord>;

/** KV value: which chunks of a blob a node holds. */
export const holderRecord = z.object({
  node: nodeId,
  blob: digest,
  seq: z.number().int().min(0),
  chunkCount: z.number().int().min(0),
  have: z.string(),
  complete: z.boolean(),
  at: z.number(),
});
export type HolderRecord = z.infer<typeof holderRecord>;

/** Agent → discovery, every few seconds; and the KV value discovery keeps for each node. */
export const nodeRecord = z.object({
  id: nodeId,
  /** Base URL of the node's peer API, e.g. http://10.0.0.5:65001. */
  url: z.string().url().max(512),
  zone: z.string().max(128),
  vswitch: z.string().max(128),
  pool: z.string().max(128),
  startedAt: z.number(),
  seenAt: z.number(),
  /**
   * The agent's clock when it sent the heartbeat; discovery's seenAt is its own clock at receipt, so the
   * two together show how far the agent's clock is off. Optional, as are the fields below, so that
   * heartbeats of agents that do not send them still validate.
   */
  sentAt: z.number().optional(),
  /** Bytes in the agent's chunk cache. */
  cacheBytes: z.number().int().min(0).optional(),
  /** How often the agent heartbeats, ms: how long a silence means it missed some. */
  heartbeatMs: z.number().int().min(1).max(3_600_000).optional(),
  /** Blob downloads the agent has under way. */
  downloads: z.number().int().min(0).optional(),
});
export type NodeRecord = z.infer<typeof nodeRecord>;

export const scheduleRequest = z.object({
  v: z.literal(1),
  node: nodeId,
  blob: digest,
  size,
  /** The chunk size the node would use if the blob has no manifest yet. */
  chunkSize: chunkSizeSchema,
  need: z.array(chunkIndex).max(100_000),
  /** Peers this node has found failing or slow for this blob. */
  avoid: z.array(nodeId).max(10_000).default([]),
  /**
   * Of `avoid`, the peers this node could not even connect to (refused, no route, no answer to connect),
   * sent for a short while after the failure. A reported peer that has also missed its heartbeats is
   * taken for dead by the scheduler (its leases free, a parent for nobody) until it is heard from again.
   */
  unreachable: z.array(nodeId).max(10_000).optional(),
  /**
   * How many chunks the node can start now. When set, `need` lists every chunk it could use and the
   * scheduler chooses which `max` of them to assign (rarest first, where parents have upload to spare);
   * the rest of `need` is left out of the reply. Unset, every needed chunk gets an assignment.
   */
  max: z.number().int().min(1).max(100_000).optional(),
  /**
   * The chunks of this blob the node is fetching right now. A peer assignment from an earlier reply that
   * is not among them has finished (or was given up), so its parent has upload to spare again: the
   * scheduler learns that now rather than from the node's next announcement. The node's leases of the
   * chunks listed are renewed when due (see origin.lease).
   */
  fetching: z.array(chunkIndex).max(100_000).optional(),
});
export type ScheduleRequest = z.infer<typeof scheduleRequest>;

/** Where a parent stands relative to the node it serves: same vSwitch, same zone, or another zone. */
const locality = z.enum(['vswitch', 'zone', 'cross_zone']);
export type Locality = z.infer<typeof locality>;

export const chunkSource = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('peer'), node: nodeId, url: z.string(), locality: locality.optional() }),
  z.object({ kind: z.literal('origin'), leaseMs: z.number().int().min(0) }),
  z.object({
    kind: z.literal('wait'),
    retryMs: z.number().int().min(0),
    /**
     * `origin`: a chunk no one holds is waiting its turn for the registry, which is as busy as the mesh's
     * origin budget allows, or for the node that holds its origin or zone lease (fetching it, or next in
     * line to); fetching it from the registry anyway would only slow the others, or copy it once more.
     */
    queue: z.literal('origin').optional(),
  }),
]);
export type ChunkSource = z.infer<typeof chunkSource>;

export const assignment = z.object({
  index: chunkIndex,
  sha256: z.union([sha256Hex, z.null()]),
  source: chunkSource,
  /** Further peers to try, in order, if the first source fails. */
  alternates: z.array(z.object({ node: nodeId, url: z.string(), locality: locality.optional() })).default([]),
});
export type Assignment = z.infer<typeof assignment>;

export const scheduleReply = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    chunkSize: chunkSizeSchema,
    assignments: z.array(assignment),
    scheduler: z.string(),
  }),
  z.object({
    ok: z.literal(false),
    error: z.object({
      code: z.string(),
      message: z.string(),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  }),
]);
export type ScheduleReply = z.infer<typeof scheduleReply>;

/** KV value: a lease to fetch one chunk from the origin. Expired leases may be taken over. */
export const grantRecord = z.object({
  node: nodeId,
  expiresAt: z.number(),
  /** When the node was first granted the slot; renewals keep it (absent in leases of older schedulers). */
  grantedAt: z.number().optional(),
});
export type GrantRecord = z.infer<typeof grantRecord>;

/**
 * One way to reach a registry: the registry itself, a mirror serving one zone or region, or (for a cloud
 * registry instance) its VPC or internet endpoint. Agents choose among them by their own zone and region,
 * by discovery's health checks, and by their own recent failures.
 */
export const endpointCandidate = z.object({
  url: z.string().url().max(512),
  kind: z.enum(['registry', 'mirror', 'vpc', 'internet']),
  /** Set when the endpoint is meant for nodes of one zone; preferred by them, a last resort for others. */
  zone: z.string().max(128).optional(),
  /** Set when the endpoint is reachable only from one region; nodes of other regions never use it. */
  region: z.string().max(128).optional(),
  healthy: z.boolean(),
  /** How long the last health check took. */
  latencyMs: z.number().min(0).optional(),
  /** Why the last health check failed. */
  error: z.string().max(512).optional(),
});
export type EndpointCandidate = z.infer<typeof endpointCandidate>;

/** KV value: a registry's endpoints as discovery last checked them, in the order to try them. */
export const endpointRecord = z.object({
  /** The name images use for the registry: host[:port]. */
  registry: z.string().max(255),
  /** The first healthy endpoint (the first one when none is healthy), for readers that want one URL. */
  url: z.string().url(),
  /** Whether any endpoint is healthy. */
  healthy: z.boolean(),
  checkedAt: z.number(),
  /** Where the endpoints came from: `static`, or `instance:<id>` for a registry instance's API. */
  source: z.string().max(64),
  endpoints: z.array(endpointCandidate).max(64).default([]),
});
export type EndpointRecord = z.infer<typeof endpointRecord>;

/** KV value: a Kubernetes node as discovery sees it, whether or not its agent runs. */
export const topologyRecord = z.object({
  /** The node's name in Kubernetes (the key is the mesh's node ID for it). */
  name: z.string().max(253),
  zone: z.string().max(128),
  region: z.string().max(128),
  vswitch: z.string().max(128),
  pool: z.string().max(128),
  ready: z.boolean(),
  /** False when the node-pool filter leaves the node out of the mesh. */
  inMesh: z.boolean(),
  agent: z.object({
    state: z.enum(['running', 'starting', 'crashloop', 'failed', 'missing']),
    pod: z.string().max(253).optional(),
    restarts: z.number().int().min(0),
    ready: z.boolean(),
  }),
  /** Why the node has no working agent in the mesh, when it has none. */
  reason: z.string().max(1024).optional(),
  updatedAt: z.number(),
});
export type TopologyRecord = z.infer<typeof topologyRecord>;

export const leaveMessage = z.object({ node: nodeId, at: z.number() });
export type LeaveMessage = z.infer<typeof leaveMessage>;

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Decodes and validates a payload; a bad one becomes SHOAL_ERR_BAD_MESSAGE naming the first bad field. */
export function decode<T>(schema: z.ZodType<T>, data: Uint8Array | string, what: string): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof data === 'string' ? data : decoder.decode(data));
  } catch (cause) {
    throw new ShoalError('SHOAL_ERR_BAD_MESSAGE', `${what}: payload is not JSON`, { cause });
  }
  const result = schema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue?.path.length ? issue.path.join('.') : '(root)';
    throw new ShoalError('SHOAL_ERR_BAD_MESSAGE', `${what}: ${where}: ${issue?.message ?? 'invalid'}`);
  }
  return result.data;
}

export function encode(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}
