/**
 * The per-chunk holder index: for each blob, which nodes hold each chunk, grouped by zone and vSwitch.
 * Planning reads it so that the candidates for one chunk in the requester's vSwitch or zone are found
 * without scanning every holder of the blob; with 5,000 nodes a scan per request would cost milliseconds.
 *
 * It is derived state: IndexState keeps the holder records and node records it is built from, and
 * index-state.ts updates it incrementally on every event. A holder is placed only while its node record
 * is known, because its zone and vSwitch come from that record (and a node without a record is never a
 * parent anyway).
 *
 * Memory stays proportional to what is held, not to nodes × chunks. A node that holds the whole blob is
 * kept once in its group's `complete` list rather than once per chunk, so a finished swarm of 5,000
 * nodes costs 5,000 entries per blob. A node that holds part of the blob is listed under each chunk it
 * holds, with its position in every list, so that removing it is a constant-time swap with the last
 * entry rather than a search.
 */

/** The holders of one blob that share a zone and a vSwitch. */
export interface HolderGroup {
  readonly zone: string;
  readonly vswitch: string;
  /** Nodes that hold every chunk of the blob. */
  readonly complete: string[];
  /** Per chunk, the nodes of this group that hold that chunk but not the whole blob. */
  readonly partial: (string[] | undefined)[];
  /** How many nodes are placed in this group, so that an empty group can be dropped. */
  members: number;
}

/** Where one node's holding of one blob is placed. */
interface Placement {
  readonly group: HolderGroup;
  /** The holding as bytes (bit i of byte i >> 3 is chunk i), kept to diff against the next snapshot. */
  bits: Uint8Array;
  /** The number of chunks in the blob, as the holder record states it. */
  length: number;
  /** How many chunks are held. */
  count: number;
  /** The node's position in `group.complete` while it holds every chunk, otherwise -1. */
  completeAt: number;
  /** While the holding is partial: per held chunk, the node's position in `group.partial[chunk]`. */
  positions: Int32Array | undefined;
}

/** The holder index of one blob. */
export interface BlobHolderIndex {
  /** Zone → vSwitch → group. */
  readonly groups: Map<string, Map<string, HolderGroup>>;
  /** Node → its placement. */
  readonly placed: Map<string, Placement>;
}

const popcount = new Uint8Array(256);
for (let i = 1; i < 256; i++) popcount[i] = (popcount[i >> 1] ?? 0) + (i & 1);

/**
 * Decodes a holder record's base64 bitmap into exactly ceil(length / 8) bytes. Bits past the end of the
 * blob are cleared, because a malformed announcement with them set would otherwise count as held chunks
 * and could make a partial holder look complete.
 */
export function decodeHolding(length: number, base64: string): Uint8Array {
  const bits = new Uint8Array(Math.ceil(length / 8));
  bits.set(Buffer.from(base64, 'base64').subarray(0, bits.length));
  const tail = length & 7;
  if (tail !== 0) bits[bits.length - 1] = (bits[bits.length - 1] ?? 0) & ((1 << tail) - 1);
  return bits;
}

function countBits(bits: Uint8Array): number {
  let n = 0;
  for (const byte of bits) n += popcount[byte] ?? 0;
  return n;
}

function groupOf(index: BlobHolderIndex, zone: string, vswitch: string): HolderGroup {
  let byVswitch = index.groups.get(zone);
  if (!byVswitch) {
    byVswitch = new Map();
    index.groups.set(zone, byVswitch);
  }
  let group = byVswitch.get(vswitch);
  if (!group) {
    group = { zone, vswitch, complete: [], partial: [], members: 0 };
    byVswitch.set(vswitch, group);
  }
  return group;
}

function addPartial(index: BlobHolderIndex, node: string, placement: Placement, chunk: number): void {
  const { group } = placement;
  let list = group.partial[chunk];
  if (!list) {
    list = [];
    // Assigning past the end leaves holes, which is what an unheld chunk is.
    group.partial[chunk] = list;
  }
  if (placement.positions) placement.positions[chunk] = list.length;
  list.push(node);
}

function removePartial(index: BlobHolderIndex, placement: Placement, chunk: number): void {
  const { group, positions } = placement;
  const list = group.partial[chunk];
  if (!list || !positions) return;
  const at = positions[chunk] ?? -1;
  const last = list.pop();
  if (last === undefined) return;
  if (at >= 0 && at < list.length) {
    // The last entry moves into the freed slot; its own position record follows it.
    list[at] = last;
    const moved = index.placed.get(last);
    if (moved?.positions) moved.positions[chunk] = at;
  }
  // An empty list is dropped so that a chunk nobody in the group holds any more costs nothing.
  if (list.length === 0) group.partial[chunk] = undefined;
}

function addComplete(node: string, placement: Placement): void {
  placement.completeAt = placement.group.complete.length;
  placement.group.complete.push(node);
}

function removeComplete(index: BlobHolderIndex, placement: Placement): void {
  const list = placement.group.complete;
  const at = placement.completeAt;
  placement.completeAt = -1;
  const last = list.pop();
  if (last === undefined || at < 0 || at >= list.length) return;
  list[at] = last;
  const moved = index.placed.get(last);
  if (moved) moved.completeAt = at;
}

/** Calls `fn` for every chunk whose bit is set in `bits`. */
function forEachSet(bits: Uint8Array, fn: (chunk: number) => void): void {
  for (let i = 0; i < bits.length; i++) {
    let byte = bits[i] ?? 0;
    while (byte !== 0) {
      const low = byte & -byte;
      fn((i << 3) | (31 - Math.clz32(low)));
      byte ^= low;
    }
  }
}

const isComplete = (count: number, length: number) => length > 0 && count === length;

function indexHolding(index: BlobHolderIndex, node: string, placement: Placement): void {
  if (isComplete(placement.count, placement.length)) {
    placement.positions = undefined;
    addComplete(node, placement);
    return;
  }
  placement.positions = new Int32Array(placement.length).fill(-1);
  forEachSet(placement.bits, (chunk) => addPartial(index, node, placement, chunk));
}

function unindexHolding(index: BlobHolderIndex, placement: Placement): void {
  if (placement.completeAt >= 0) {
    removeComplete(index, placement);
    return;
  }
  forEachSet(placement.bits, (chunk) => removePartial(index, placement, chunk));
  placement.positions = undefined;
}

/**
 * Places a node's holding of a blob in the group of its zone and vSwitch, or updates it in place. An
 * update of a partial holding touches only the chunks whose bit changed, found by comparing bytes, so an
 * announcement of one more chunk costs about a hundred byte comparisons for a 1,024-chunk blob.
 */
export function placeHolding(
  index: BlobHolderIndex,
  node: string,
  zone: string,
  vswitch: string,
  bits: Uint8Array,
  length: number,
): void {
  const current = index.placed.get(node);
  if (
    current &&
    current.group.zone === zone &&
    current.group.vswitch === vswitch &&
    current.length === length
  ) {
    updateHolding(index, node, current, bits);
    return;
  }
  if (current) unplaceHolding(index, node);
  const group = groupOf(index, zone, vswitch);
  group.members++;
  const placement: Placement = {
    group,
    bits,
    length,
    count: countBits(bits),
    completeAt: -1,
    positions: undefined,
  };
  index.placed.set(node, placement);
  indexHolding(index, node, placement);
}

function updateHolding(index: BlobHolderIndex, node: string, placement: Placement, bits: Uint8Array): void {
  const count = countBits(bits);
  const wasComplete = placement.completeAt >= 0;
  const nowComplete = isComplete(count, placement.length);
  if (wasComplete !== nowComplete) {
    // Moving between the complete list and the per-chunk lists happens about once per node and blob.
    unindexHolding(index, placement);
    placement.bits = bits;
    placement.count = count;
    indexHolding(index, node, placement);
    return;
  }
  if (!nowComplete) {
    const old = placement.bits;
    for (let i = 0; i < bits.length; i++) {
      const before = old[i] ?? 0;
      const after = bits[i] ?? 0;
      if (before === after) continue;
      let added = after & ~before;
      while (added !== 0) {
        const low = added & -added;
        addPartial(index, node, placement, (i << 3) | (31 - Math.clz32(low)));
        added ^= low;
      }
      let removed = before & ~after;
      while (removed !== 0) {
        const low = removed & -removed;
        removePartial(index, placement, (i << 3) | (31 - Math.clz32(low)));
        removed ^= low;
      }
    }
  }
  placement.bits = bits;
  placement.count = count;
}

/** Removes a node's holding of a blob from the index; a no-op if it is not placed. */
export function unplaceHolding(index: BlobHolderIndex, node: string): void {
  const placement = index.placed.get(node);
  if (!placement) return;
  unindexHolding(index, placement);
  index.placed.delete(node);
  const { group } = placement;
  if (--group.members > 0) return;
  const byVswitch = index.groups.get(group.zone);
  byVswitch?.delete(group.vswitch);
  if (byVswitch?.size === 0) index.groups.delete(group.zone);
}

export function createBlobHolderIndex(): BlobHolderIndex {
  return { groups: new Map(), placed: new Map() };
}

/** The holders of one blob split by topology tier relative to a requester, as topologyTier ranks them. */
export interface TieredGroups {
  /** Tier 0: the requester's own vSwitch in its own zone. */
  sameVswitch: HolderGroup[];
  /** Tier 1: the rest of the requester's zone. */
  sameZone: HolderGroup[];
  /** Tier 2: everyone else, including nodes whose zone is unknown. */
  elsewhere: HolderGroup[];
}

/**
 * Splits a blob's groups into tiers for a requester. Empty labels mean "unknown" and never match, exactly
 * as in topologyTier: an unknown zone puts everyone in tier 2 except the requester's own known vSwitch.
 */
export function tieredGroups(
  index: BlobHolderIndex,
  requester: { zone: string; vswitch: string } | undefined,
): TieredGroups {
  const tiers: TieredGroups = { sameVswitch: [], sameZone: [], elsewhere: [] };
  for (const [zone, byVswitch] of index.groups) {
    for (const [vswitch, group] of byVswitch) {
      if (requester && requester.vswitch !== '' && vswitch === requester.vswitch && zone === requester.zone) {
        tiers.sameVswitch.push(group);
      } else if (requester && requester.zone !== '' && zone === requester.zone) {
        tiers.sameZone.push(group);
      } else {
        tiers.elsewhere.push(group);
      }
    }
  }
  return tiers;
}

/**
 * The nodes of some groups that hold `chunk`, as a list of non-empty lists (each group's complete
 * holders and its partial holders of that chunk). The lists are the index's own arrays: read them, never
 * change them.
 */
/** How many nodes of some groups hold `chunk`: what holderLists would return, counted without building it. */
export function holderCount(groups: readonly HolderGroup[], chunk: number): number {
  let count = 0;
  for (const group of groups) count += group.complete.length + (group.partial[chunk]?.length ?? 0);
  return count;
}

export function holderLists(groups: readonly HolderGroup[], chunk: number): (readonly string[])[] {
  const lists: (readonly string[])[] = [];
  for (const group of groups) {
    if (group.complete.length > 0) lists.push(group.complete);
    const partial = group.partial[chunk];
    if (partial && partial.length > 0) lists.push(partial);
  }
  return lists;
}
