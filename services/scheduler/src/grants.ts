/**
 * Origin and zone leases. A chunk may be fetched from the origin by at most `perChunk` nodes at a time, and
 * from outside a zone by at most `perZone` nodes of that zone at a time: each slot is a lease with an
 * expiry, taken with compare-and-set so that scheduler replicas never hand out the same slot twice. The
 * in-memory store has the same semantics and is used by planner tests and simulations.
 *
 * Origin leases live under grantKey (<blob hex>.<chunk>.<slot>); zone leases under zoneGrantKey
 * (<blob hex>.<chunk>.z.<zone as base64url>.<slot>), a different number of tokens, so the two never collide.
 *
 * A replica keeps a view of the bucket (a watch, see LeaseView), so that a slot it can see is held costs
 * no round trip and a free one costs one write; compare-and-set still decides, so a view that lags only
 * costs a retry.
 */
import { decode, encode, grantKey, grantRecord, type GrantRecord, isCasConflict } from '@shoal/mesh';
import type { KV } from '@nats-io/kv';

export interface Grant {
  key: string;
  blobHex: string;
  index: number;
  slot: number;
  node: string;
  expiresAt: number;
  /** The revision the lease was written at, so that releasing it never removes a newer lease. */
  revision: number;
  /** Set on a zone lease: the zone whose outside pulls of this chunk it admits. */
  zone?: string;
}

export interface GrantStore {
  readonly leaseMs: number;
  /**
   * Takes (or renews, if `node` already holds it) a lease on one chunk. Resolves to null when every slot
   * is held by another node whose lease has not expired. Without `zone` (or with an empty one) this is an
   * origin lease with `perChunk` slots; with a zone it is that zone's lease with `perZone` slots, which
   * admits its holder to fetch the chunk from outside the zone.
   */
  take(blobHex: string, index: number, node: string, now: number, zone?: string): Promise<Grant | null>;
  /** Gives a lease back early, e.g. once its holder announced the chunk; a no-op if it was taken over. */
  release(grant: Grant): Promise<void>;
  /**
   * Whether `take` may succeed, answered at once from what the store has seen: false only when every slot
   * is known to be held by another node whose lease has not expired. Lets a decision skip chunks whose
   * leases are spoken for without waiting on the store.
   */
  mayTake(blobHex: string, index: number, node: string, now: number, zone?: string): boolean;
  /**
   * Origin leases held now, over the whole mesh as far as this store has seen, counting those this
   * process has asked for and not yet heard back about (zone leases are not counted); undefined when the
   * store keeps no view to count from.
   */
  liveOrigin(now: number): number | undefined;
}

export interface GrantStoreOptions {
  perChunk: number;
  leaseMs: number;
  /** Slots of each (blob, chunk, zone) lease; 1 when not given. */
  perZone?: number;
  /**
   * Whether a node can no longer be counted on (see Suspects): its leases are free to take before they
   * expire, and do not count against the origin budget.
   */
  gone?: (node: string) => boolean;
}

/**
 * Whether `lease` keeps `node` (or, undefined, anyone) from its slot: held by another node, not expired,
 * and that node not gone.
 */
function heldAgainst(
  lease: GrantRecord | undefined,
  node: string | undefined,
  now: number,
  gone: ((node: string) => boolean) | undefined,
): boolean {
  return lease !== undefined && lease.expiresAt > now && lease.node !== node && gone?.(lease.node) !== true;
}

/**
 * The KV key of a zone lease. Zone names may hold characters a KV key cannot (spaces, ':'), so the zone is
 * base64url-encoded, which uses only letters, digits, '-' and '_'.
 */
export function zoneGrantKey(blobHex: string, index: number, zone: string, slot: number): string {
  let token = zoneTokens.get(zone);
  if (token === undefined) {
    token = Buffer.from(zone).toString('base64url');
    // A cluster has a handful of zones; the bound only guards against a flood of made-up names.
    if (zoneTokens.size < 4096) zoneTokens.set(zone, token);
  }
  return `${blobHex}.${index}.z.${token}.${slot}`;
}

const zoneTokens = new Map<string, string>();

/**
 * An origin lease's key is <blob hex>.<chunk>.<slot>; only a zone lease's has a ".z." token (hex, chunk
 * numbers and slots have no "z"). Asked of every lease known at each origin decision, so it allocates
 * nothing.
 */
const isOriginKey = (key: string) => !key.includes('.z.');

/** The key and slot count of a lease: a zone lease if a zone is named, otherwise an origin lease. */
function scopeOf(
  options: GrantStoreOptions,
  blobHex: string,
  index: number,
  zone: string | undefined,
): { slots: number; key: (slot: number) => string; zone: string | undefined } {
  if (zone) {
    return { slots: options.perZone ?? 1, key: (slot) => zoneGrantKey(blobHex, index, zone, slot), zone };
  }
  return { slots: options.perChunk, key: (slot) => grantKey(blobHex, index, slot), zone: undefined };
}

function grantFor(
  key: string,
  blobHex: string,
  index: number,
  slot: number,
  node: string,
  expiresAt: number,
  revision: number,
  zone: string | undefined,
): Grant {
  const grant: Grant = { key, blobHex, index, slot, node, expiresAt, revision };
  if (zone !== undefined) grant.zone = zone;
  return grant;
}

export function memoryGrantStore(options: GrantStoreOptions): GrantStore & { readonly size: number } {
  const leases = new Map<string, GrantRecord & { revision: number }>();
  let revision = 0;
  return {
    leaseMs: options.leaseMs,
    get size() {
      return leases.size;
    },
    mayTake(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      for (let slot = 0; slot < scope.slots; slot++)
        if (!heldAgainst(leases.get(scope.key(slot)), node, now, options.gone)) return true;
      return false;
    },
    take(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      for (let slot = 0; slot < scope.slots; slot++) {
        const key = scope.key(slot);
        if (heldAgainst(leases.get(key), node, now, options.gone)) continue;
        const expiresAt = now + options.leaseMs;
        leases.set(key, { node, expiresAt, revision: ++revision });
        return Promise.resolve(grantFor(key, blobHex, index, slot, node, expiresAt, revision, scope.zone));
      }
      return Promise.resolve(null);
    },
    release(grant) {
      if (leases.get(grant.key)?.revision === grant.revision) leases.delete(grant.key);
      return Promise.resolve();
    },
    liveOrigin(now) {
      let live = 0;
      for (const [key, lease] of leases)
        if (isOriginKey(key) && heldAgainst(lease, undefined, now, options.gone)) live++;
      return live;
    },
  };
}

/**
 * What a replica has seen of the `grants` bucket, fed by a watch: each key's latest revision and its
 * lease (undefined once deleted). Entries whose lease has expired are forgotten after a while; a
 * forgotten key is simply read from the bucket again when it is next wanted.
 */
export class LeaseView {
  private readonly entries = new Map<
    string,
    { revision: number; lease: GrantRecord | undefined; seenAt: number }
  >();
  private loaded = false;
  private lastPrune = 0;

  /** `forgetAfterMs`: how long an expired lease or a deletion is remembered. */
  constructor(
    private readonly forgetAfterMs: number,
    private readonly clock: () => number = Date.now,
  ) {}

  /** Records a key's value at `revision` (undefined for a deletion), unless a newer one is known. */
  saw(key: string, revision: number, lease: GrantRecord | undefined): void {
    const current = this.entries.get(key);
    if (current && current.revision >= revision) return;
    this.entries.set(key, { revision, lease, seenAt: this.clock() });
    this.prune();
  }

  /**
   * Notes that this replica deleted the lease written at `revision`, before the watch reports it: the
   * key reads as free at once (its revision is then stale, so a write to it asks the bucket first).
   */
  released(key: string, revision: number): void {
    const current = this.entries.get(key);
    if (current?.revision === revision) current.lease = undefined;
  }

  /** Marks the bucket's existing values as delivered: from now on a key not seen is a key not written. */
  markLoaded(): void {
    this.loaded = true;
  }

  /** Forgets everything, e.g. before a watch restarts; until loaded again every key is read afresh. */
  reset(): void {
    this.entries.clear();
    this.loaded = false;
  }

  /**
   * The view of one key: its revision and lease (undefined once deleted), `absent` for a key not seen
   * since the view was loaded, or undefined when the bucket must be asked. A key forgotten by pruning
   * reads as absent too; writing it then fails compare-and-set, and the bucket is asked.
   */
  lookup(key: string): { revision: number; lease: GrantRecord | undefined } | 'absent' | undefined {
    const entry = this.entries.get(key);
    if (entry) return entry;
    return this.loaded ? 'absent' : undefined;
  }

  /**
   * Origin leases in the view that have not expired, leaving out those of nodes that are `gone`; undefined
   * until the view is loaded.
   */
  liveOrigin(now: number, gone?: (node: string) => boolean): number | undefined {
    if (!this.loaded) return undefined;
    let live = 0;
    for (const [key, entry] of this.entries)
      if (isOriginKey(key) && heldAgainst(entry.lease, undefined, now, gone)) live++;
    return live;
  }

  /** Drops leases that expired, and deletions seen, more than forgetAfterMs ago; runs at most that often. */
  private prune(): void {
    const now = this.clock();
    if (now - this.lastPrune < this.forgetAfterMs) return;
    this.lastPrune = now;
    for (const [key, entry] of this.entries)
      if ((entry.lease?.expiresAt ?? entry.seenAt) + this.forgetAfterMs <= now) this.entries.delete(key);
  }
}

/** A stored lease, or undefined when unreadable: an unreadable lease protects nothing. */
export function readLease(key: string, value: Uint8Array): GrantRecord | undefined {
  try {
    return decode(grantRecord, value, `grant ${key}`);
  } catch {
    return undefined;
  }
}

/** Leases in the `grants` KV bucket, shared by every scheduler replica. */
export function kvGrantStore(kv: KV, options: GrantStoreOptions, view?: LeaseView): GrantStore {
  /** Origin leases asked for and not yet answered: counted as held, so a budget is never overrun. */
  let asking = 0;
  async function takeSlot(
    key: string,
    blobHex: string,
    index: number,
    slot: number,
    node: string,
    now: number,
    zone: string | undefined,
  ): Promise<Grant | null> {
    const expiresAt = now + options.leaseMs;
    const value = encode({ node, expiresAt } satisfies GrantRecord);
    // Two rounds: the first from the view when it knows the key, the second (after a write lost to a newer
    // one, or a lease deleted or expired between read and write) from the bucket itself.
    for (let round = 0; round < 2; round++) {
      const seen = round === 0 ? view?.lookup(key) : undefined;
      let revision = 0;
      let current: GrantRecord | undefined;
      if (seen === 'absent') {
        revision = 0;
      } else if (seen) {
        ({ revision, lease: current } = seen);
      } else {
        const entry = await kv.get(key);
        revision = entry?.revision ?? 0;
        current = entry?.operation === 'PUT' ? readLease(key, entry.value) : undefined;
      }
      if (heldAgainst(current, node, now, options.gone)) return null;
      try {
        // previousSeq makes this exact: the write fails if anything was written since that revision
        // (0: if the key exists at all).
        const rev = await kv.put(key, value, { previousSeq: revision });
        view?.saw(key, rev, { node, expiresAt });
        return grantFor(key, blobHex, index, slot, node, expiresAt, rev, zone);
      } catch (err) {
        if (isCasConflict(err)) continue;
        throw err;
      }
    }
    return null;
  }

  return {
    leaseMs: options.leaseMs,
    mayTake(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      for (let slot = 0; slot < scope.slots; slot++) {
        const seen = view?.lookup(scope.key(slot));
        if (!seen || seen === 'absent') return true;
        if (!heldAgainst(seen.lease, node, now, options.gone)) return true;
      }
      return false;
    },
    async take(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      const origin = scope.zone === undefined;
      if (origin) asking++;
      try {
        for (let slot = 0; slot < scope.slots; slot++) {
          const grant = await takeSlot(scope.key(slot), blobHex, index, slot, node, now, scope.zone);
          if (grant) return grant;
        }
        return null;
      } finally {
        if (origin) asking--;
      }
    },
    async release(grant) {
      try {
        await kv.delete(grant.key, { previousSeq: grant.revision });
        view?.released(grant.key, grant.revision);
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    },
    liveOrigin(now) {
      const seen = view?.liveOrigin(now, options.gone);
      return seen === undefined ? undefined : seen + asking;
    },
  };
}
