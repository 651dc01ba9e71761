/**
 * The scheduler's in-memory view of the mesh: chunk manifests, holders and live nodes. It changes only
 * through IndexEvents applied one at a time, so the same state can be rebuilt from the KV buckets on start,
 * replayed from recorded events, or built by hand in a test. Alongside the records it keeps the per-chunk
 * holder index (holder-index.ts), updated incrementally by the same events, so planning never scans every
 * holder of a blob.
 */
import {
  Bitmap,
  chunkKeys,
  decode,
  holderRecord,
  manifestRecord,
  nodeRecord,
  type HolderRecord,
  type ManifestRecord,
  type NodeRecord,
} from '@shoal/mesh';
import {
  createBlobHolderIndex,
  decodeHolding,
  placeHolding,
  unplaceHolding,
  type BlobHolderIndex,
} from './holder-index.js';

export interface HolderEntry {
  node: string;
  seq: number;
  have: Bitmap;
  complete: boolean;
}

export interface IndexState {
  /** Keyed by blob hex (the digest without "sha256:"). */
  readonly manifests: Map<string, ManifestRecord>;
  /** Blob hex → node → what that node holds. */
  readonly holders: Map<string, Map<string, HolderEntry>>;
  readonly nodes: Map<string, NodeRecord>;
  /**
   * Blob hex → the per-chunk holder index, derived from `holders` and `nodes`. Only holders whose node
   * record is known are placed in it. Change it only through applyIndexEvent and the clear functions.
   */
  readonly holderIndex: Map<string, BlobHolderIndex>;
  /** Node → the blobs it has a holder record for, so that a change of its topology re-places them. */
  readonly blobsOf: Map<string, Set<string>>;
}

export type IndexEvent =
  | { type: 'manifest_put'; blobHex: string; manifest: ManifestRecord }
  | { type: 'manifest_deleted'; blobHex: string }
  | { type: 'holder_put'; blobHex: string; holder: HolderRecord }
  | { type: 'holder_deleted'; blobHex: string; node: string }
  | { type: 'node_put'; node: NodeRecord }
  | { type: 'node_deleted'; node: string };

export interface IndexSizes {
  blobs: number;
  holders: number;
  nodes: number;
}

export function createIndexState(): IndexState {
  return {
    manifests: new Map(),
    holders: new Map(),
    nodes: new Map(),
    holderIndex: new Map(),
    blobsOf: new Map(),
  };
}

function place(state: IndexState, blobHex: string, node: NodeRecord, bits: Uint8Array, length: number): void {
  let index = state.holderIndex.get(blobHex);
  if (!index) {
    index = createBlobHolderIndex();
    state.holderIndex.set(blobHex, index);
  }
  placeHolding(index, node.id, node.zone, node.vswitch, bits, length);
}

function unplace(state: IndexState, blobHex: string, node: string): void {
  const index = state.holderIndex.get(blobHex);
  if (!index) return;
  unplaceHolding(index, node);
  if (index.placed.size === 0) state.holderIndex.delete(blobHex);
}

/** Bytes of a stored bitmap, for placing a holder whose node record arrived after its holder record. */
function bitsOf(have: Bitmap): Uint8Array {
  return decodeHolding(have.length, have.toBase64());
}

export function applyIndexEvent(state: IndexState, event: IndexEvent): void {
  switch (event.type) {
    case 'manifest_put':
      state.manifests.set(event.blobHex, event.manifest);
      return;
    case 'manifest_deleted':
      state.manifests.delete(event.blobHex);
      return;
    case 'holder_put': {
      const { holder } = event;
      let byNode = state.holders.get(event.blobHex);
      if (!byNode) {
        byNode = new Map();
        state.holders.set(event.blobHex, byNode);
      }
      const bits = decodeHolding(holder.chunkCount, holder.have);
      byNode.set(holder.node, {
        node: holder.node,
        seq: holder.seq,
        // The bitmap and the index's copy share one buffer; neither is ever modified in place.
        have: new Bitmap(holder.chunkCount, bits),
        complete: holder.complete,
      });
      let blobs = state.blobsOf.get(holder.node);
      if (!blobs) {
        blobs = new Set();
        state.blobsOf.set(holder.node, blobs);
      }
      blobs.add(event.blobHex);
      const node = state.nodes.get(holder.node);
      if (node) place(state, event.blobHex, node, bits, holder.chunkCount);
      return;
    }
    case 'holder_deleted': {
      const byNode = state.holders.get(event.blobHex);
      if (!byNode) return;
      byNode.delete(event.node);
      if (byNode.size === 0) state.holders.delete(event.blobHex);
      const blobs = state.blobsOf.get(event.node);
      blobs?.delete(event.blobHex);
      if (blobs?.size === 0) state.blobsOf.delete(event.node);
      unplace(state, event.blobHex, event.node);
      return;
    }
    case 'node_put': {
      const { node } = event;
      const before = state.nodes.get(node.id);
      state.nodes.set(node.id, node);
      // Heartbeats rewrite the record every few seconds; only a new node or a changed zone or vSwitch
      // moves its holdings in the index.
      if (before && before.zone === node.zone && before.vswitch === node.vswitch) return;
      for (const blobHex of state.blobsOf.get(node.id) ?? []) {
        const entry = state.holders.get(blobHex)?.get(node.id);
        if (entry) place(state, blobHex, node, bitsOf(entry.have), entry.have.length);
      }
      return;
    }
    case 'node_deleted':
      state.nodes.delete(event.node);
      // Without a record the node is no parent; its holder records stay, and are placed again if it returns.
      for (const blobHex of state.blobsOf.get(event.node) ?? []) unplace(state, blobHex, event.node);
      return;
    default: {
      const unreachable: never = event;
      throw new TypeError(`unknown index event ${JSON.stringify(unreachable)}`);
    }
  }
}

/** Forgets every manifest and holder record, e.g. before the chunks bucket is watched again from the start. */
export function clearHolders(state: IndexState): void {
  state.manifests.clear();
  state.holders.clear();
  state.holderIndex.clear();
  state.blobsOf.clear();
}

/** Forgets every node record, e.g. before the nodes bucket is watched again from the start. */
export function clearNodes(state: IndexState): void {
  state.nodes.clear();
  // Holder records stay; without node records none of them is placed in the index.
  state.holderIndex.clear();
}

export function indexSizes(state: IndexState): IndexSizes {
  let holders = 0;
  for (const byNode of state.holders.values()) holders += byNode.size;
  return { blobs: state.manifests.size, holders, nodes: state.nodes.size };
}

/** One KV entry, as the watcher hands it over. */
export interface KvChange {
  key: string;
  operation: 'PUT' | 'DEL' | 'PURGE';
  value: Uint8Array;
}

/** The event a change means; `warning` says why an unreadable value was taken as a deletion. */
export type Translation = { event: IndexEvent; warning?: string } | { ignored: string };

function tryDecode<T>(schema: Parameters<typeof decode<T>>[0], value: Uint8Array, what: string): T | string {
  try {
    return decode(schema, value, what);
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/**
 * Turns a change in the chunks bucket into an index event. A value that does not parse is treated as a
 * deletion of its key: the scheduler must never plan from a record it cannot read.
 */
export function chunkChangeToEvent(change: KvChange): Translation {
  const parsed = chunkKeys.parse(change.key);
  if (!parsed) return { ignored: `unknown key ${change.key}` };
  const deleted = change.operation !== 'PUT';
  if (parsed.kind === 'manifest') {
    const gone = { type: 'manifest_deleted', blobHex: parsed.blobHex } as const;
    if (deleted) return { event: gone };
    const manifest = tryDecode(manifestRecord, change.value, `manifest ${change.key}`);
    if (typeof manifest === 'string') return { event: gone, warning: manifest };
    return { event: { type: 'manifest_put', blobHex: parsed.blobHex, manifest } };
  }
  const gone = { type: 'holder_deleted', blobHex: parsed.blobHex, node: parsed.node } as const;
  if (deleted) return { event: gone };
  const holder = tryDecode(holderRecord, change.value, `holder ${change.key}`);
  if (typeof holder === 'string') return { event: gone, warning: holder };
  if (holder.node !== parsed.node)
    return { event: gone, warning: `holder ${change.key}: names node ${holder.node}` };
  return { event: { type: 'holder_put', blobHex: parsed.blobHex, holder } };
}

export function nodeChangeToEvent(change: KvChange): Translation {
  const gone = { type: 'node_deleted', node: change.key } as const;
  if (change.operation !== 'PUT') return { event: gone };
  const node = tryDecode(nodeRecord, change.value, `node ${change.key}`);
  if (typeof node === 'string') return { event: gone, warning: node };
  if (node.id !== change.key) return { event: gone, warning: `node ${change.key}: record names ${node.id}` };
  return { event: { type: 'node_put', node } };
}
