/**
 * Planning: for one schedule request, decide where each needed chunk comes from. This module knows
 * nothing about NATS; it reads an IndexState, takes leases through a GrantStore and spreads load with a
 * LoadTracker, so that tests and the simulator run exactly the code production runs.
 *
 * Per chunk, in order of preference:
 *   1. a live peer that holds the chunk and whose hash is in the manifest (a chunk without a known hash
 *      cannot be verified, so it is never served peer to peer), preferring the requester's vSwitch, then
 *      its zone, then anyone; among equals, the least loaded of a small pseudo-random sample, so that a
 *      decision costs the same whether 10 or 4,000 nodes hold the chunk;
 *   2. an origin lease, if one of the chunk's `perChunk` slots is free or expired;
 *   3. otherwise, wait and ask again.
 *
 * Zone gate: when the requester's zone is known and no one in it can serve the chunk, the chunk has to
 * come from outside the zone, and only the holders of the (blob, chunk, zone) lease (`perZone` of them)
 * may fetch it from there: from another zone's peer, or from the origin if they also get an origin lease.
 * Everyone else in the zone waits until someone in the zone holds the chunk, so each zone pulls each
 * chunk across the zone boundary about once.
 */
import {
  chunkCount,
  ShoalError,
  type Assignment,
  type AssignmentRecord,
  type Locality,
  type NodeRecord,
  type RankingRule,
  type ScheduleRequest,
  type WaitReason,
  chooseParent,
  compareCandidates,
  rankedLoad,
} from '@shoal/mesh';
import type { Grant, GrantStore, OriginLeases } from './grants.js';
import { holderCount, holderLists, tieredGroups } from './holder-index.js';
import type { IndexState } from './index-state.js';

export interface PlanOptions {
  /** A node whose record is older than this is not a parent. */
  nodeTtlMs: number;
  /** Nodes taken for dead: parents for nobody, whatever their record says (see Suspects). */
  suspected?: (node: string) => boolean;
  retryMs: number;
  /** How many further peers to offer per chunk. */
  maxAlternates: number;
  /** At most this many origin grants per plan; 0 means no limit. */
  originMaxPerRequest: number;
  /**
   * The mesh's origin budget: how many origin leases may be held at once, over every replica. Checked
   * against the grant store's count right before each origin lease is taken; without it, origin grants
   * are limited only per chunk and per request.
   */
  originBudget?: () => number;
  /**
   * The most origin leases `node` may hold at once, given the origin leases held (see OriginShares).
   * Checked with the budget; a node at its share waits for the origin as it does when the budget is spent.
   */
  originShare?: (node: string, live: OriginLeases, now: number) => number;
  /** How many leases (origin or zone) are requested at once. */
  grantConcurrency?: number;
  /**
   * How many live candidates are examined per chunk (default 8): the least loaded of them is chosen, and
   * the next ones are the alternates. Bounding it keeps a decision cheap when thousands hold the chunk.
   */
  sampleSize?: number;
  /**
   * Whether a requester whose zone is known needs a zone lease to fetch a chunk from outside its zone
   * (default true). Off, every node goes to other zones' peers or competes for the origin on its own.
   */
  zoneGate?: boolean;
  /**
   * With a request's `max`: a parent whose load (transfers assigned to it and not yet finished) has
   * reached this many is busy, and is not given more (default 8, the agents' upload lanes).
   */
  parentSlots?: number;
  /** With a request's `max`: the first this many chunks of `need` are taken in order (default 2). */
  inOrder?: number;
  /** With a request's `max`: how many of the other chunks are ranked by rarity (default 32). */
  chooseSample?: number;
}

export interface Plan {
  chunkSize: number;
  assignments: Assignment[];
  /**
   * Why each assignment is what it is, one per assignment in the same order: the inputs of its decision
   * as the planner had them (references, not copies, so that recording them costs nothing).
   */
  explanations: Explanation[];
  counts: { peer: number; origin: number; wait: number };
  /**
   * Chunks sent outside the requester's zone under a zone lease (to another zone's peer or the origin);
   * always 0 when the zone gate does not apply.
   */
  crossZone: number;
  /**
   * The leases taken for this plan, origin and zone leases alike (a zone lease has `zone` set), so that the
   * caller can release them once the chunks are announced. A zone lease may be here for a chunk told to
   * wait: its holder is the node that will fetch the chunk for its zone once it can.
   */
  grants: Grant[];
  /** Leases that could not be requested because the grant store failed; those chunks wait. */
  grantErrors: unknown[];
}

/** Per-parent load, decaying exponentially: recent assignments weigh more than old ones. */
export interface LoadTracker {
  load(node: string, now: number): number;
  add(node: string, now: number, amount?: number): void;
  /** One transfer from this parent finished (its child announced the chunk). */
  release?(node: string, now: number): void;
  readonly size: number;
}

/**
 * Per-parent load as transfers assigned and not yet finished: how much of a parent's upload is spoken
 * for. Each assignment also lapses after `expireMs`, so a child that never reports back cannot leave a
 * parent looking busy for ever.
 */
export function inflightLoad(expireMs: number): LoadTracker {
  const entries = new Map<string, number[]>();
  const live = (node: string, now: number) => {
    const times = entries.get(node);
    if (!times) return [];
    while (times.length > 0 && (times[0] ?? 0) + expireMs <= now) times.shift();
    if (times.length === 0) entries.delete(node);
    return times;
  };
  return {
    load: (node, now) => live(node, now).length,
    add(node, now, amount = 1) {
      const times = entries.get(node) ?? [];
      for (let i = 0; i < amount; i++) times.push(now);
      entries.set(node, times);
    },
    release(node, now) {
      live(node, now).shift();
    },
    get size() {
      return entries.size;
    },
  };
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

/**
 * The zone whose outside pulls a requester's chunks are gated on (its zone leases); undefined when the gate
 * is off or the requester's zone is unknown.
 */
export function gatedZone(
  options: Pick<PlanOptions, 'zoneGate'>,
  requester: NodeRecord | undefined,
): string | undefined {
  return options.zoneGate !== false && requester && requester.zone !== '' ? requester.zone : undefined;
}

/** 0: same vSwitch, 1: same zone, 2: anywhere (also when the requester's topology is unknown). */
export function topologyTier(requester: NodeRecord | undefined, parent: NodeRecord): 0 | 1 | 2 {
  if (!requester) return 2;
  if (requester.vswitch !== '' && requester.vswitch === parent.vswitch && requester.zone === parent.zone)
    return 0;
  if (requester.zone !== '' && requester.zone === parent.zone) return 1;
  return 2;
}

/** A topology tier as the agents' metrics name it. */
function localityOf(tier: number): Locality {
  return tier === 0 ? 'vswitch' : tier === 1 ? 'zone' : 'cross_zone';
}

/** FNV-1a: a cheap, stable pseudo-random hash of a short string. */
function fnv(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

/** Mixes two 32-bit numbers into a pseudo-random one (the murmur3 finaliser), far cheaper than hashing text. */
function mix(a: number, b: number): number {
  let h = (a ^ Math.imul(b + 1, 0x9e3779b1)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A candidate parent as sampled for one chunk; its load is rounded as `rankedLoad` records it. */
export interface Ranked {
  node: NodeRecord;
  tier: number;
  load: number;
  tie: number;
}

/** The inputs that decided one assignment. */
export type Explanation =
  | {
      source: 'peer';
      rule: RankingRule;
      /** The candidates ranked, best first; the parent is the first. */
      candidates: readonly Ranked[];
      /** Sampled holders left out of the ranking as busy. */
      busy: number;
      /** Admitted from outside the requester's zone by its zone lease. */
      zoneLease: boolean;
    }
  | { source: 'origin'; zoneLease: boolean }
  | { source: 'wait'; reason: WaitReason };

/** Leases refused in one decision after which chunks that need a lease are no longer tried. */
const LEASE_REFUSALS = 8;

/**
 * Live copies of a chunk in a zone from which on its busy holders are waited for rather than the chunk
 * fetched from outside again. One would keep every chunk to a single import per zone but leaves the
 * last nodes of a small zone queuing on one busy holder while other zones have upload to spare; two
 * halved the cross-zone traffic of the emulated cluster and kept the simulated maximum.
 */
const ZONE_COPIES = 2;

interface Pending {
  position: number;
  index: number;
  sha256: string | null;
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
  const sampleSize = Math.max(1, Math.floor(options.sampleSize ?? 8));
  /** Varies per requester and per moment, so that requesters walk the holders from different places. */
  const requestSalt = mix(fnv(request.node), now % 0x100000000);
  const zone = gatedZone(options, requester);
  const holderIndex = state.holderIndex.get(blobHex);
  const tiers = holderIndex ? tieredGroups(holderIndex, requester) : undefined;
  const tierGroups = tiers ? [tiers.sameVswitch, tiers.sameZone, tiers.elsewhere] : [];

  /**
   * Whether anyone holds the chunk now, read afresh from the index: taking a lease awaits the store, and
   * meanwhile a holder record may have arrived (which is also when the holder's own lease was released).
   */
  const heldNow = (index: number): boolean => {
    const current = state.holderIndex.get(blobHex);
    const groups = current ? tieredGroups(current, requester) : undefined;
    if (!groups) return false;
    for (const group of [groups.sameVswitch, groups.sameZone, groups.elsewhere]) {
      for (const list of holderLists(group, index)) if (list.length > 0) return true;
    }
    return false;
  };

  /**
   * Chunks no one holds that were left to wait because the mesh's origin budget, or the requester's share
   * of it, is spent; and which of the two.
   */
  const originQueued = new Map<number, WaitReason>();
  /** Queues a chunk for the origin behind those already queued, for the same reason. */
  const queueBehind = (index: number) => {
    const reason = originQueued.values().next().value;
    if (reason) originQueued.set(index, reason);
  };
  /** Why a chunk could not be assigned, by chunk index, for the chunks that end up waiting. */
  const heldBack = new Map<number, WaitReason>();

  /** Gives back an origin lease taken for a chunk that turned out to be held already. */
  const giveBack = async (grant: Grant): Promise<void> => {
    taken.splice(taken.indexOf(grant), 1);
    await grants.release(grant).catch(() => undefined);
  };

  /**
   * Sends a chunk to the registry if its leases can be had: the zone's (when gated), then the origin's.
   * A holder that was not there when the origin was chosen (`heldBefore` false) but is by the time the
   * leases are taken gets the chunk instead; one that was already there but cannot serve (avoided,
   * stale, or without a known hash) is why the origin was chosen.
   */
  const assignOrigin = async (wanted: Pending, heldBefore: boolean): Promise<boolean> => {
    // Read before the zone lease, so that a node in line for the registry does not hold its zone's lease
    // (and keep its zone from the chunk) while it waits; and again in one step with asking for the origin
    // lease, so that decisions running at once cannot each spend the same room: the store counts a lease
    // from the moment it is asked for.
    // The requester's own live lease on the chunk (a fetch that failed, asked for again) is taken again
    // without spending any room: it is counted already.
    const noRoom = (): WaitReason | undefined => {
      if (options.originBudget === undefined && options.originShare === undefined) return undefined;
      const live = grants.liveOrigin(now, request.node);
      if (!live || grants.holdsOrigin(blobHex, wanted.index, request.node, now)) return undefined;
      if (options.originBudget !== undefined && live.total >= options.originBudget()) return 'origin_budget';
      if (options.originShare !== undefined && live.held >= options.originShare(request.node, live, now))
        return 'origin_share';
      return undefined;
    };
    const queue = (reason: WaitReason) => {
      originQueued.set(wanted.index, reason);
      return false;
    };
    const before = noRoom();
    if (before) return queue(before);
    const zoneLease = zone !== undefined ? await lease(wanted.index, zone) : undefined;
    if (zoneLease === null) return false;
    const after = noRoom();
    if (after) {
      if (zoneLease) await giveBack(zoneLease);
      return queue(after);
    }
    const originLease = await lease(wanted.index);
    if (!originLease) return false;
    if (!heldBefore && heldNow(wanted.index)) {
      heldBack.set(wanted.index, 'holder_appeared');
      await giveBack(originLease);
      return false;
    }
    counts.origin++;
    if (zone !== undefined) crossZone++;
    assignments[wanted.position] = {
      index: wanted.index,
      sha256: wanted.sha256,
      source: { kind: 'origin', leaseMs: grants.leaseMs },
      alternates: [],
    };
    explanations[wanted.position] = { source: 'origin', zoneLease: zoneLease !== undefined };
    return true;
  };

  const parentRecord = (id: string): NodeRecord | undefined => {
    if (id === request.node || avoid.has(id) || options.suspected?.(id) === true) return undefined;
    const node = state.nodes.get(id);
    return node && now - node.seenAt <= options.nodeTtlMs ? node : undefined;
  };

  /**
   * Up to sampleSize live candidates for one chunk, best tier first, ranked by tier, then load, then the
   * tie-break. Each tier's holders are walked from a pseudo-random offset, so that requesters spread over
   * all holders while each decision examines only a few of them; a tier is left only once it is
   * exhausted. Stale and avoided holders are skipped without counting, so a holder that can serve is
   * never missed, however many cannot.
   */
  const sample = (chunk: number): Ranked[] => {
    const found: Ranked[] = [];
    const start = mix(requestSalt, chunk);
    for (let tier = 0; tier < tierGroups.length && found.length < sampleSize; tier++) {
      const lists = holderLists(tierGroups[tier] ?? [], chunk);
      let total = 0;
      for (const list of lists) total += list.length;
      if (total === 0) continue;
      let offset = start % total;
      let which = 0;
      while (offset >= (lists[which]?.length ?? 0)) offset -= lists[which++]?.length ?? 0;
      for (let examined = 0; examined < total && found.length < sampleSize; examined++) {
        const list = lists[which] ?? [];
        const id = list[offset];
        if (++offset >= list.length) {
          offset = 0;
          which = (which + 1) % lists.length;
        }
        const node = id === undefined ? undefined : parentRecord(id);
        if (node)
          found.push({
            node,
            tier,
            load: rankedLoad(load.load(node.id, now)),
            // The walk already starts at a pseudo-random offset per requester and chunk, so walk order is a
            // fair tie-break, and far cheaper than hashing every candidate's name.
            tie: found.length,
          });
      }
    }
    return found.sort(compareCandidates);
  };

  const assignments: (Assignment | undefined)[] = new Array<Assignment | undefined>(need.length);
  const explanations: (Explanation | undefined)[] = new Array<Explanation | undefined>(need.length);
  const counts = { peer: 0, origin: 0, wait: 0 };
  let crossZone = 0;

  /**
   * Gives the chunk to the parent the ranking chooses among `ranked` (sorted by the same comparator, so
   * the others keep their order as alternates). `busy` counts sampled holders left out of `ranked`.
   * Returns the parent, as ranked (its load before this chunk).
   */
  const assignPeer = (wanted: Pending, ranked: Ranked[], busy = 0, zoneLease = false): Ranked | undefined => {
    const chosen = chooseParent(ranked);
    if (!chosen) return undefined;
    const { parent } = chosen;
    load.add(parent.node.id, now);
    counts.peer++;
    const alternates: Assignment['alternates'] = [];
    for (const r of ranked) {
      if (alternates.length >= options.maxAlternates) break;
      if (r !== parent) alternates.push({ node: r.node.id, url: r.node.url, locality: localityOf(r.tier) });
    }
    assignments[wanted.position] = {
      index: wanted.index,
      sha256: wanted.sha256,
      source: { kind: 'peer', node: parent.node.id, url: parent.node.url, locality: localityOf(parent.tier) },
      alternates,
    };
    explanations[wanted.position] = {
      source: 'peer',
      rule: chosen.rule,
      candidates: ranked,
      busy,
      zoneLease,
    };
    return parent;
  };

  /** Chunks only another zone's holders have; each needs the zone lease first. */
  const outside: (Pending & { ranked: Ranked[] })[] = [];
  /** Chunks no peer can serve; each needs the zone lease (if gated) and an origin lease. */
  const toOrigin: Pending[] = [];
  // With `max` the chunks are chosen below instead; every needed chunk is not planned here.
  if (request.max === undefined)
    need.forEach((index, position) => {
      const wanted = { position, index, sha256: manifest?.hashes[index] || null };
      // A chunk without a known hash cannot be verified, so it is never served peer to peer.
      const ranked = wanted.sha256 ? sample(index) : [];
      const best = ranked[0];
      if (!best) toOrigin.push(wanted);
      else if (zone !== undefined && best.tier === 2) outside.push({ ...wanted, ranked });
      else assignPeer(wanted, ranked);
    });

  const taken: Grant[] = [];
  const grantErrors: unknown[] = [];
  /** Takes one lease, recording it for release; a failing store counts as a refusal, and is reported. */
  const lease = async (index: number, leaseZone?: string): Promise<Grant | null> => {
    try {
      const grant = await grants.take(blobHex, index, request.node, now, leaseZone);
      if (grant) taken.push(grant);
      else heldBack.set(index, leaseZone ? 'zone_lease_held' : 'origin_lease_held');
      return grant;
    } catch (err) {
      grantErrors.push(err);
      heldBack.set(index, 'lease_error');
      return null;
    }
  };
  const concurrency = Math.max(1, options.grantConcurrency ?? 16);

  // Pulls from another zone's holders need only the zone lease; they are not origin grants, so the
  // per-request origin limit does not apply.
  const leaseOutside = async (): Promise<void> => {
    for (let next = 0; next < outside.length; next += concurrency) {
      await Promise.all(
        outside.slice(next, next + concurrency).map(async (wanted) => {
          if (!(await lease(wanted.index, zone))) return;
          crossZone++;
          assignPeer(wanted, wanted.ranked, 0, true);
        }),
      );
    }
  };

  /** Origin grants one decision may make (the mesh's budget is checked as each is asked for). */
  const originLimit = options.originMaxPerRequest > 0 ? options.originMaxPerRequest : Infinity;

  // Leases are requested a window at a time, never more than the per-request limit still allows, so the
  // limit is exact without taking leases one round trip at a time. In a gated zone the zone lease comes
  // first: a node that cannot have it never competes for the origin, and the one that has it keeps it
  // while it waits for an origin lease, so that it, and no one else in its zone, fetches the chunk once
  // the chunk appears in another zone or the origin lease frees up.
  const leaseOrigin = async (): Promise<void> => {
    let next = 0;
    while (next < toOrigin.length && counts.origin < originLimit) {
      const window = toOrigin.slice(next, next + Math.min(concurrency, originLimit - counts.origin));
      next += window.length;
      await Promise.all(
        window.map(async (wanted) => {
          await assignOrigin(wanted, heldNow(wanted.index));
        }),
      );
      if (originQueued.size > 0) break;
    }
    // Once the budget has no room, the rest of the chunks no one holds are in line for it too; otherwise
    // the per-request limit held them back.
    for (const wanted of toOrigin.slice(next)) {
      if (originQueued.size > 0) queueBehind(wanted.index);
      else heldBack.set(wanted.index, 'origin_limit');
    }
  };

  if (request.max !== undefined) {
    await chooseAndAssign(request.max);
    return finish(true);
  }

  await Promise.all([leaseOutside(), leaseOrigin()]);
  return finish(false);

  /**
   * The node can start `max` chunks and listed every chunk it could use: choose which. The first few in
   * `need` (the runtime is streaming them) come first, then the rarest chunks, so that nodes fetch
   * different chunks and always have something to trade; a chunk is taken only where a parent has upload
   * to spare, or where a lease to go outside the zone (or to the origin) is free. Chunks not chosen are
   * left out of the reply, and a node that gets nothing is told to wait.
   */
  async function chooseAndAssign(max: number): Promise<void> {
    const parentSlots = options.parentSlots ?? 8;
    // A node with nothing of this blob in flight may take one parent one lane past its slots. Nodes that
    // are receiving ask again as their chunks land and take each lane as it frees; a node that has
    // nothing, asking only every few hundred ms, could otherwise be told the parents are busy until
    // origin.waitTimeout sends it to the registry. One chunk to start on, not a full share.
    let extraLanes = (request.fetching?.length ?? 0) === 0 ? 1 : 0;
    /** Spends the extra lane if the parent just given a chunk was at its slots already. */
    const countLane = (parent: Ranked | undefined) => {
      if (parent && parent.load >= parentSlots) extraLanes = 0;
    };
    const inOrder = Math.max(0, options.inOrder ?? 2);
    // Rarity is read from the index's list lengths without sampling; parents are sampled only for the
    // chunks actually considered, so a request listing a thousand chunks costs little more than eight.
    /** All holders of a chunk, and those in the requester's zone (tiers 0 and 1). */
    const holdersOf = (index: number) => {
      const inZone = holderCount(tierGroups[0] ?? [], index) + holderCount(tierGroups[1] ?? [], index);
      return { holders: inZone + holderCount(tierGroups[2] ?? [], index), inZone };
    };
    const candidate = (position: number) => {
      const index = need[position] ?? 0;
      return { position, index, sha256: manifest?.hashes[index] || null, holders: 0, inZone: 0, tie: 0 };
    };
    const headCount = Math.min(inOrder, need.length);
    const head = Array.from({ length: headCount }, (_, position) => candidate(position));
    const salt = requestSalt;
    // Rarest first among a spread sample of the rest: as good for diversity as ranking every chunk, and a
    // request listing a thousand chunks costs no more than one listing a hundred.
    const restCount = need.length - headCount;
    const chooseSample = Math.max(1, options.chooseSample ?? 32);
    const rest: ReturnType<typeof candidate>[] = [];
    if (restCount <= chooseSample) {
      for (let position = headCount; position < need.length; position++) rest.push(candidate(position));
    } else {
      const offset = salt % restCount;
      const stride = Math.max(1, Math.floor(restCount / chooseSample));
      for (let i = 0; i < chooseSample; i++)
        rest.push(candidate(headCount + ((offset + i * stride) % restCount)));
    }
    for (const candidate of [...head, ...rest]) {
      // Every listed holder counts towards rarity; whether one can serve is decided below, by sampling.
      ({ holders: candidate.holders, inZone: candidate.inZone } = holdersOf(candidate.index));
      candidate.tie = Math.imul(candidate.index + 1, 0x9e3779b1) ^ salt;
    }
    rest.sort((a, b) => a.holders - b.holders || a.tie - b.tie);
    let assigned = 0;
    // Leases refused in this decision. Past a few, the chunks that need one (from outside the zone, or
    // from the registry) are spoken for by other nodes and are not tried: early in a rollout, when every
    // chunk needs one, that keeps a decision that can give nothing as cheap as one that gives plenty.
    let refusals = 0;
    // Leases are taken concurrently, each chunk counted as assigned while its lease is pending, so a
    // decision waits for about one round trip to the store however many chunks need a lease. Leases the
    // store's view already shows taken are refused without asking.
    const pending: Promise<void>[] = [];
    let originPending = 0;
    const mayLease = (index: number, leaseZone?: string) =>
      grants.mayTake(blobHex, index, request.node, now, leaseZone);
    for (const wanted of [...head, ...rest]) {
      if (assigned >= max) break;
      const needsLease = zone !== undefined ? wanted.inZone === 0 : wanted.holders === 0;
      if (needsLease && refusals >= LEASE_REFUSALS) {
        heldBack.set(wanted.index, 'leases_refused');
        continue;
      }
      // Parents with upload to spare. In a gated zone whose live holders (not avoided, not stale) of the
      // chunk are already ZONE_COPIES or more, only those: they are busy for a moment, and going outside
      // would copy the chunk into the zone once more.
      const sampled = wanted.sha256 && wanted.holders > 0 ? sample(wanted.index) : [];
      const inZoneLive = zone === undefined ? 0 : sampled.filter((r) => r.tier < 2).length;
      const ranked = sampled.filter(
        (r) => r.load < parentSlots + extraLanes && (inZoneLive < ZONE_COPIES || r.tier < 2),
      );
      const best = ranked[0];
      const busy = sampled.length - ranked.length;
      if (best && (zone === undefined || best.tier < 2)) {
        countLane(assignPeer(wanted, ranked, busy));
        assigned++;
      } else if (best) {
        if (!mayLease(wanted.index, zone)) {
          heldBack.set(wanted.index, 'zone_lease_held');
          refusals++;
          continue;
        }
        // The parent is counted at once, so later chunks of this decision see its load.
        countLane(assignPeer(wanted, ranked, busy, true));
        assigned++;
        pending.push(
          lease(wanted.index, zone).then((grant) => {
            if (grant) {
              crossZone++;
              return;
            }
            refusals++;
            assigned--;
            counts.peer--;
            assignments[wanted.position] = undefined;
            explanations[wanted.position] = undefined;
            load.release?.(best.node.id, now);
          }),
        );
      } else if (sampled.length > 0) {
        // Live holders with a known hash, all busy: one frees up within moments.
        heldBack.set(wanted.index, 'parents_busy');
      } else if (counts.origin + originPending < originLimit) {
        // No holder can serve it: none listed, or only ones that are avoided, stale or announced no hash.
        // Every real holder announces the hash with its first chunk (an origin fetch) or got the chunk
        // verified against it, so a holder without one is not worth waiting for; the origin lease still
        // keeps the mesh to one registry fetch of the chunk at a time.
        if (!mayLease(wanted.index) || (zone !== undefined && !mayLease(wanted.index, zone))) {
          heldBack.set(wanted.index, mayLease(wanted.index) ? 'zone_lease_held' : 'origin_lease_held');
          refusals++;
          continue;
        }
        assigned++;
        originPending++;
        // Chosen because no holder could serve when the request began: one that appeared since counts.
        pending.push(
          assignOrigin(wanted, wanted.holders > 0).then((ok) => {
            originPending--;
            if (ok) return;
            assigned--;
            refusals++;
          }),
        );
      } else if (originQueued.size > 0) {
        // No holder can serve it and the registry is as busy as the budget allows: it waits its turn.
        queueBehind(wanted.index);
      } else {
        heldBack.set(wanted.index, 'origin_limit');
      }
    }
    await Promise.all(pending);
  }

  function finish(chosenOnly: boolean): Plan {
    // A plain loop, because forEach would skip the slots of the sparse array that were never assigned.
    const anyAssigned = assignments.some((a) => a !== undefined);
    for (let position = 0; position < need.length; position++) {
      if (assignments[position]) continue;
      // Chosen-only replies leave out what was not chosen, unless nothing was: then the first chunk waits.
      if (chosenOnly && (anyAssigned || position > 0)) continue;
      const index = need[position] ?? 0;
      counts.wait++;
      // A chosen-only reply that gives nothing names one chunk for all: it is queued for the origin's budget
      // if any chunk was, and behind a lease if that chunk's reason (or else the first one) says so.
      const queuedFor =
        originQueued.get(index) ?? (chosenOnly ? originQueued.values().next().value : undefined);
      // The one chunk named for all says why it was held back, or else the first reason any chunk was.
      const reason = heldBack.get(index) ?? heldBack.values().next().value ?? 'no_holder_yet';
      // A chunk whose origin or zone lease another node holds is on its way: that node is fetching it or
      // next in line to, and its lease runs out once it stops. The requester waits for that fetch as
      // patiently as for a turn of its own, instead of fetching the chunk from the registry once more.
      const queued =
        queuedFor !== undefined || reason === 'origin_lease_held' || reason === 'zone_lease_held';
      assignments[position] = {
        index,
        sha256: manifest?.hashes[index] || null,
        source: queued
          ? { kind: 'wait', retryMs: options.retryMs, queue: 'origin' }
          : { kind: 'wait', retryMs: options.retryMs },
        alternates: [],
      };
      explanations[position] = { source: 'wait', reason: queuedFor ?? reason };
    }

    const planned: Assignment[] = [];
    const explained: Explanation[] = [];
    for (let position = 0; position < need.length; position++) {
      const assignment = assignments[position];
      const explanation = explanations[position];
      if (!assignment) continue;
      planned.push(assignment);
      // Every assignment is explained where it is made; the fallback only guards that invariant.
      explained.push(explanation ?? { source: 'wait', reason: 'no_holder_yet' });
    }

    return {
      chunkSize,
      assignments: planned,
      explanations: explained,
      counts,
      crossZone,
      grants: taken,
      grantErrors,
    };
  }
}

/** What one `chunks_assigned` event carries at most, so that a decision over a whole blob stays small. */
export const recordLimits = { assignments: 64, candidates: 8 } as const;

/**
 * The assignments of a plan with the inputs that decided each, as a `chunks_assigned` event records
 * them: the first `limits.assignments` assignments and the first `limits.candidates` candidates of each
 * (the parent is always the first), with what was left out counted in `truncated`.
 */
export function assignmentRecords(
  plan: Pick<Plan, 'assignments' | 'explanations'>,
  limits: { assignments: number; candidates: number } = recordLimits,
): { assignments: AssignmentRecord[]; truncated?: { assignments: number; candidates: number } } {
  const records: AssignmentRecord[] = [];
  let candidatesLeft = 0;
  const count = Math.min(plan.assignments.length, limits.assignments);
  for (let i = 0; i < count; i++) {
    const assignment = plan.assignments[i];
    const explanation = plan.explanations[i];
    if (!assignment || !explanation) continue;
    const { index, source } = assignment;
    if (source.kind === 'peer' && explanation.source === 'peer') {
      const kept = explanation.candidates.slice(0, limits.candidates);
      candidatesLeft += explanation.candidates.length - kept.length;
      records.push({
        index,
        source: 'peer',
        peer: source.node,
        ...(source.locality ? { locality: source.locality } : {}),
        candidates: kept.map((r) => ({ node: r.node.id, tier: r.tier, load: r.load, tie: r.tie })),
        ...(explanation.busy > 0 ? { busy: explanation.busy } : {}),
        ...(explanation.zoneLease ? { zoneLease: true } : {}),
        reason: explanation.rule,
      });
    } else if (source.kind === 'origin' && explanation.source === 'origin') {
      records.push({ index, source: 'origin', zoneLease: explanation.zoneLease, reason: 'no_live_holder' });
    } else if (source.kind === 'wait' && explanation.source === 'wait') {
      records.push({
        index,
        source: 'wait',
        ...(source.queue ? { queue: source.queue } : {}),
        reason: explanation.reason,
      });
    }
  }
  const assignmentsLeft = plan.assignments.length - count;
  return assignmentsLeft > 0 || candidatesLeft > 0
    ? { assignments: records, truncated: { assignments: assignmentsLeft, candidates: candidatesLeft } }
    : { assignments: records };
}
