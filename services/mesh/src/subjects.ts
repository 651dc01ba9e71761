/**
 * Every NATS subject, stream and bucket Shoal uses, declared once. Nothing else builds a subject string.
 *
 * Grammar (tokens are validated; node IDs are [A-Za-z0-9_-]{1,64}):
 *
 *   shoal.announce.<node>            agent → announcer (JetStream, stream SHOAL_ANNOUNCE): chunk holdings
 *   shoal.schedule.v1                agent → scheduler (request/reply, queue group "shoal-scheduler")
 *   shoal.node.heartbeat.<node>      agent → discovery (core NATS, queue group "shoal-discovery")
 *   shoal.node.leave.<node>          agent → discovery on clean shutdown
 *   shoal.events.<type>.<origin>     every service (JetStream, stream SHOAL_EVENTS); origin is a node ID or
 *                                    a service instance name
 */

import { createHash } from 'node:crypto';

export const SUBJECT_PREFIX = 'shoal';

const tokenPattern = /^[A-Za-z0-9_-]{1,64}$/;

export function isValidToken(token: string): boolean {
  return tokenPattern.test(token);
}

function token(value: string, what: string): string {
  if (!tokenPattern.test(value)) {
    throw new TypeError(`invalid ${what} "${value.slice(0, 80)}": want 1-64 of [A-Za-z0-9_-]`);
  }
  return value;
}

export const subjects = {
  announce: (node: string) => `${SUBJECT_PREFIX}.announce.${token(node, 'node id')}`,
  announceAll: `${SUBJECT_PREFIX}.announce.>`,
  schedule: `${SUBJECT_PREFIX}.schedule.v1`,
  heartbeat: (node: string) => `${SUBJECT_PREFIX}.node.heartbeat.${token(node, 'node id')}`,
  heartbeatAll: `${SUBJECT_PREFIX}.node.heartbeat.*`,
  leave: (node: string) => `${SUBJECT_PREFIX}.node.leave.${token(node, 'node id')}`,
  leaveAll: `${SUBJECT_PREFIX}.node.leave.*`,
  event: (type: string, origin: string) =>
    `${SUBJECT_PREFIX}.events.${token(type, 'event type')}.${token(origin, 'event origin')}`,
  eventsAll: `${SUBJECT_PREFIX}.events.>`,
  eventsOfType: (type: string) => `${SUBJECT_PREFIX}.events.${token(type, 'event type')}.*`,
  eventsOfOrigin: (origin: string) => `${SUBJECT_PREFIX}.events.*.${token(origin, 'event origin')}`,
} as const;

export const queueGroups = {
  scheduler: 'shoal-scheduler',
  discovery: 'shoal-discovery',
} as const;

export const streams = {
  announce: 'SHOAL_ANNOUNCE',
  events: 'SHOAL_EVENTS',
} as const;

export const consumers = {
  /** One durable consumer shared by every announcer replica: each announcement is applied once. */
  announcer: 'shoal-announcer',
} as const;

export const buckets = {
  /** Node registry: key = node ID. Written by discovery. */
  nodes: 'shoal_nodes',
  /** Chunk index: manifests and holders in one bucket, so a single watch sees them in order. */
  chunks: 'shoal_chunks',
  /** Origin leases: key = <blob hex>.<chunk>.<slot>. */
  grants: 'shoal_grants',
  /** Registry endpoints: key = registry key. Written by discovery. */
  endpoints: 'shoal_endpoints',
  /** Kubernetes nodes with their topology and agent state: key = node ID. Written by discovery. */
  topology: 'shoal_topology',
} as const;

/**
 * The mesh's ID for a machine name (a host name, a Kubernetes node name such as cn-hangzhou.10.0.0.5):
 * the characters a subject token cannot carry become '-'. A name longer than a token may be is cut and
 * given a hash of the whole name, so that long names sharing a prefix stay apart.
 */
export function nodeIdOf(name: string): string {
  const id = name.replace(/[^A-Za-z0-9_-]/g, '-');
  if (id.length <= 64) return id || 'node';
  return `${id.slice(0, 55)}-${createHash('sha256').update(name).digest('hex').slice(0, 8)}`;
}

/** Keys of the chunk-index bucket. */
export const chunkKeys = {
  manifest: (blobHex: string) => `m.${blobHex}`,
  holder: (blobHex: string, node: string) => `h.${blobHex}.${token(node, 'node id')}`,
  holdersOf: (blobHex: string) => `h.${blobHex}.*`,
  parse(
    key: string,
  ): { kind: 'manifest'; blobHex: string } | { kind: 'holder'; blobHex: string; node: string } | null {
    const parts = key.split('.');
    if (parts[0] === 'm' && parts.length === 2 && parts[1]) return { kind: 'manifest', blobHex: parts[1] };
    if (parts[0] === 'h' && parts.length === 3 && parts[1] && parts[2]) {
      return { kind: 'holder', blobHex: parts[1], node: parts[2] };
    }
    return null;
  },
} as const;

export const grantKey = (blobHex: string, chunk: number, slot: number) => `${blobHex}.${chunk}.${slot}`;

/** Registry keys contain ':' and '.', which KV keys cannot carry in a token, so they are encoded. */
export function endpointKey(registry: string): string {
  return Buffer.from(registry).toString('base64url');
}

export function endpointKeyToRegistry(key: string): string {
  return Buffer.from(key, 'base64url').toString();
}
