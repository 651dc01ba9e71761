/**
 * Planning: for one schedule request, decide where each needed chunk comes from. This module knows
 * nothing about NATS; it reads an IndexState, takes origin leases through a GrantStore and spreads load
 * with a LoadTracker, so that tests and the simulator run exactly the code production runs.
 *
 * Per chunk, in order of preference:
 *   1. a live peer that holds the chunk and whose hash is in the manifest (a chunk without a known hash
 *      cannot be verified, so it is never served peer to peer), preferring the requester's vSwitch, then
 *      its zone, then anyone; among equals, the parent this replica has loaded least recently;
 *   2. an origin lease, if one of the chunk's `perChunk` slots is free or expired;
 *   3. otherwise, wait and ask again.
 */
import { chunkCount, ShoalError, type Assignment, type NodeRecord, type ScheduleRequest } from '@shoal/mesh';
import type { Grant, GrantStore } from './grants.js';
import type { HolderEntry, IndexState } from './index-state.js';

export interface PlanOptions {
  /** A node whose record is older than this is not a parent. */
  nodeTtlMs: number;
  retryMs: number;
  /** How many further peers to offer per chunk. */
  maxAlternates: number;
  /** At most this many origin grants per plan; 0 means no limit. */
  originMaxPerRequest: number;
  /** How many origin leases are requested at once. */
  grantConcurrency?: number;
}

export interface Plan {
  chunkSize: number;
  assignments: Assignment[];
  counts: { peer: number; origin: number; wait: number };
  /** The leases taken for this plan, so that the caller can release them once the chunks are announced. */
  grants: Grant[];
  /** Origin leases that could not be requested because the grant store failed; those chunks wait. */
  grantErrors: unknown[];
}

/** Per-parent load, decaying exponentially: recent assignments weigh more than old ones. */
export interface LoadTracker {
  load(node: string, now: number): number;
  add(node: string, now: number, amount?: number): void;
  readonly size: number;
}

export function decayingLoad(halfLifeMs: number): LoadTracker {
  const entries = new Map<string, { value: number; at: number }>();
  const decayed = (entry: { value: number; at: number }, now: number) =>
    entry.value * Math.pow(2, -Math.max(0, now - entry.at) / halfLifeMs);
  let additions = 0;
  return {
    load(node, now) {
      const entry = entries.get(node);
      return entry ? decayed(entry, now) : 0;
    },
    add(node, now, amount = 1) {
      const entry = entries.get(node);
      entries.set(node, { value: (entry ? decayed(entry, now) : 0) + amount, at: now });
      // Parents that stopped receiving work are forgotten now and then, so the map stays small.
      if (++additions % 1024 === 0) {
        for (const [key, value] of entries) if (decayed(value, now) < 0.01) entries.delete(key);
      }
    },
    get size() {
      return entries.size;
    },
  };
}

/** 0: same vSwitch, 1: same zone, 2: anywhere (also when the requester's topology is unknown). */
export function topologyTier(requester: NodeRecord | undefined, parent: NodeRecord): 0 | 1 | 2 {
  if (!requester) return 2;
  if (requester.vswitch !== '' && requester.vswitch === parent.vswitch && requester.zone === parent.zone)
    return 0;
  if (requester.zone !== '' && requester.zone === parent.zone) return 1;
  return 2;
}

/**
 * A stable pseudo-random tie-break (FNV-1a). Replicas start with empty load counters; without it they
 * would all send the first requests to the same parent.
 */
function tieBreak(requester: string, index: number, parent: string): number {
  let hash = 0x811c9dc5;
  const text = `${requester}|${index}|${parent}`;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

interface Candidate {
  node: NodeRecord;
  holder: HolderEntry;
  tier: number;
}

export function blobHexOf(blob: string): string {
  return blob.startsWith('sha256:') ? blob.slice('sha256:'.length) : blob;
}

export async function planRequest(
  state: IndexState,
  request: ScheduleRequest,
  grants: GrantStore,
  load: LoadTracker,
  options: PlanOptions,
  now: number,
): Promise<Plan> {
  const blobHex = blobHexOf(request.blob);
  const manifest = state.manifests.get(blobHex);
  if (manifest && manifest.size !== request.size) {
    throw new ShoalError(
      'SHOAL_ERR_BAD_MESSAGE',
      `schedule request: size ${request.size} differs from the manifest's ${manifest.size} for ${request.blob}`,
    );
  }
  const chunkSize = manifest?.chunkSize ?? request.chunkSize;
  const count = chunkCount(request.size, chunkSize);
  const need: number[] = [];
  const seen = new Set<number>();
  for (const index of request.need) {
    if (index >= count) {
      throw new ShoalError(
        'SHOAL_ERR_BAD_MESSAGE',
        `schedule request: need: chunk ${index} is out of range (the blob has ${count} chunks of ${chunkSize} bytes)`,
      );
    }
    if (!seen.has(index)) {
      seen.add(index);
      need.push(index);
    }
  }

  const requester = state.nodes.get(request.node);
  const avoid = new Set(request.avoid);
  const eligible: Candidate[] = [];
  for (const holder of state.holders.get(blobHex)?.values() ?? []) {
    if (holder.node === request.node || avoid.has(holder.node)) continue;
    const node = state.nodes.get(holder.node);
    if (!node || now - node.seenAt > options.nodeTtlMs) continue;
    eligible.push({ node, holder, tier: topologyTier(requester, node) });
  }

  const assignments: (Assignment | undefined)[] = new Array<Assignment | undefined>(need.length);
  const counts = { peer: 0, origin: 0, wait: 0 };
  const toOrigin: { position: number; index: number; sha256: string | null }[] = [];
  need.forEach((index, position) => {
    const sha256 = manifest?.hashes[index] || null;
    const candidates = sha256 ? eligible.filter((c) => c.holder.have.has(index)) : [];
    if (candidates.length === 0) {
      toOrigin.push({ position, index, sha256 });
      return;
    }
    const ranked = candidates
      .map((c) => ({ c, load: load.load(c.node.id, now), tie: tieBreak(request.node, index, c.node.id) }))
      .sort((a, b) => a.c.tier - b.c.tier || a.load - b.load || a.tie - b.tie);
    const [first, ...rest] = ranked;
    if (!first) return;
    load.add(first.c.node.id, now);
    counts.peer++;
    assignments[position] = {
      index,
      sha256,
      source: { kind: 'peer', node: first.c.node.id, url: first.c.node.url },
      alternates: rest.slice(0, options.maxAlternates).map((r) => ({ node: r.c.node.id, url: r.c.node.url })),
    };
  });

  const taken: Grant[] = [];
  const grantErrors: unknown[] = [];
  const limit = options.originMaxPerRequest > 0 ? options.originMaxPerRequest : Infinity;
  const concurrency = Math.max(1, options.grantConcurrency ?? 16);
  let next = 0;
  // Leases are requested a window at a time, never more than the per-request limit still allows, so the
  // limit is exact without taking leases one round trip at a time.
  while (next < toOrigin.length && taken.length < limit) {
    const window = toOrigin.slice(next, next + Math.min(concurrency, limit - taken.length));
    next += window.length;
    const results = await Promise.allSettled(
      window.map((w) => grants.take(blobHex, w.index, request.node, now)),
    );
    results.forEach((result, i) => {
      const wanted = window[i];
      if (!wanted) return;
      if (result.status === 'rejected') {
        grantErrors.push(result.reason);
        return;
      }
      if (!result.value) return;
      taken.push(result.value);
      counts.origin++;
      assignments[wanted.position] = {
        index: wanted.index,
        sha256: wanted.sha256,
        source: { kind: 'origin', leaseMs: grants.leaseMs },
        alternates: [],
      };
    });
  }
  for (const wanted of toOrigin) {
    if (assignments[wanted.position]) continue;
    counts.wait++;
    assignments[wanted.position] = {
      index: wanted.index,
      sha256: wanted.sha256,
      source: { kind: 'wait', retryMs: options.retryMs },
      alternates: [],
    };
  }

  return {
    chunkSize,
    assignments: assignments.filter((a): a is Assignment => a !== undefined),
    counts,
    grants: taken,
    grantErrors,
  };
}
