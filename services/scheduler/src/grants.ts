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
  /** When the node was first granted the slot: a renewal keeps it. */
  grantedAt: number;
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
  /**
   * Extends a lease `node` holds on one chunk by another leaseMs, if less than two thirds of it is left,
   * so that a fetch still running (a registry slower than the lease is long) is not handed to another
   * node; at most MAX_RENEWED_LEASES leases from the first grant. Resolves to the renewed lease, or null
   * when the node holds none there (expired, released, taken over), it is not due, or the store's view
   * of the bucket does not know the key.
   */
  renew(blobHex: string, index: number, node: string, now: number, zone?: string): Promise<Grant | null>;
  /**
   * Gives a lease back early, e.g. once its holder announced the chunk; a no-op if it was taken over. A
   * lease renewed since (by another replica) is still given back while the same node holds it.
   */
  release(grant: Grant): Promise<void>;
  /**
   * Whether `take` may succeed, answered at once from what the store has seen: false only when every slot
   * is known to be held by another node whose lease has not expired. Lets a decision skip chunks whose
   * leases are spoken for without waiting on the store.
   */
  mayTake(blobHex: string, index: number, node: string, now: number, zone?: string): boolean;
  /**
   * Origin leases held now, over the whole mesh as far as this store has seen, counting those this
   * process has asked for and not yet heard back about (zone leases are not counted), with how many of
   * them `node` holds; undefined when the store keeps no view to count from.
   */
  liveOrigin(now: number, node?: string): OriginLeases | undefined;
  /**
   * Whether `node` holds a live origin lease on the chunk, as far as the store has seen (false when it
   * keeps no view).
   */
  holdsOrigin(blobHex: string, index: number, node: string, now: number): boolean;
}

/** The origin leases held at one moment. */
export interface OriginLeases {
  /** Over the whole mesh. */
  total: number;
  /** Those of the node asked about; 0 when none was named. */
  held: number;
  /** The nodes holding any. */
  holders: Set<string>;
}

/** Counts the live origin leases among `entries` (keys, and values holding leases; zone leases are skipped). */
function countOrigin<V>(
  entries: Iterable<[string, V]>,
  leaseOf: (value: V) => GrantRecord | undefined,
  node: string | undefined,
  now: number,
  gone: ((node: string) => boolean) | undefined,
): OriginLeases {
  const counted: OriginLeases = { total: 0, held: 0, holders: new Set() };
  for (const [key, value] of entries) {
    const lease = leaseOf(value);
    if (!lease || !isOriginKey(key) || !heldAgainst(lease, undefined, now, gone)) continue;
    counted.total++;
    counted.holders.add(lease.node);
    if (lease.node === node) counted.held++;
  }
  return counted;
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

/** Whether `node` holds an unexpired origin lease on the chunk, among the leases `leaseAt` knows by key. */
function holdsOriginSlot(
  perChunk: number,
  leaseAt: (key: string) => GrantRecord | undefined,
  blobHex: string,
  index: number,
  node: string,
  now: number,
): boolean {
  for (let slot = 0; slot < perChunk; slot++) {
    const lease = leaseAt(grantKey(blobHex, index, slot));
    if (lease !== undefined && lease.node === node && lease.expiresAt > now) return true;
  }
  return false;
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

/**
 * How long, in leases, renewals may keep a chunk with one node from its first grant. A fetch that takes
 * longer (a registry trickling bytes, a chunk queued behind the node's own rate limit) lets the chunk go
 * to another node, as an unrenewed lease did after one lease.
 */
export const MAX_RENEWED_LEASES = 3;

/** When a lease was first granted; leases written without it (older schedulers) count from their write. */
function grantedAtOf(lease: GrantRecord, leaseMs: number): number {
  return lease.grantedAt ?? lease.expiresAt - leaseMs;
}

/**
 * Whether `node` holds `lease` with less than two thirds of `leaseMs` left, and first got it less than
 * MAX_RENEWED_LEASES leases ago, so that it is due for renewal. A lease of a node taken for gone is not
 * renewed: its leases are free for others to take.
 */
function dueForRenewal(
  lease: GrantRecord | undefined,
  node: string,
  now: number,
  options: GrantStoreOptions,
): lease is GrantRecord {
  return (
    lease !== undefined &&
    lease.node === node &&
    lease.expiresAt > now &&
    lease.expiresAt - now < (options.leaseMs * 2) / 3 &&
    now - grantedAtOf(lease, options.leaseMs) < MAX_RENEWED_LEASES * options.leaseMs &&
    options.gone?.(node) !== true
  );
}

/** The first grant time of a lease `node` is taking over `current`: kept when it is the node's own. */
function firstGranted(current: GrantRecord | undefined, node: string, now: number, leaseMs: number): number {
  return current?.node === node && current.expiresAt > now ? grantedAtOf(current, leaseMs) : now;
}

/**
 * Whether `current` (at `revision`) is `grant` renewed since, by this replica or another: the same node's
 * lease, written later, from the same first grant.
 */
function renewalOf(
  grant: Grant,
  current: GrantRecord | undefined,
  revision: number,
  leaseMs: number,
): boolean {
  return (
    current !== undefined &&
    current.node === grant.node &&
    revision > grant.revision &&
    grantedAtOf(current, leaseMs) === grant.grantedAt
  );
}

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
  record: { node: string; expiresAt: number; grantedAt: number },
  revision: number,
  zone: string | undefined,
): Grant {
  const grant: Grant = { key, blobHex, index, slot, ...record, revision };
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
        const current = leases.get(key);
        if (heldAgainst(current, node, now, options.gone)) continue;
        const record = {
          node,
          expiresAt: now + options.leaseMs,
          grantedAt: firstGranted(current, node, now, options.leaseMs),
        };
        leases.set(key, { ...record, revision: ++revision });
        return Promise.resolve(grantFor(key, blobHex, index, slot, record, revision, scope.zone));
      }
      return Promise.resolve(null);
    },
    renew(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      for (let slot = 0; slot < scope.slots; slot++) {
        const key = scope.key(slot);
        const current = leases.get(key);
        if (!dueForRenewal(current, node, now, options)) continue;
        const record = {
          node,
          expiresAt: now + options.leaseMs,
          grantedAt: grantedAtOf(current, options.leaseMs),
        };
        leases.set(key, { ...record, revision: ++revision });
        return Promise.resolve(grantFor(key, blobHex, index, slot, record, revision, scope.zone));
      }
      return Promise.resolve(null);
    },
    release(grant) {
      const current = leases.get(grant.key);
      if (
        current?.revision === grant.revision ||
        (current && renewalOf(grant, current, current.revision, options.leaseMs))
      )
        leases.delete(grant.key);
      return Promise.resolve();
    },
    liveOrigin(now, node) {
      return countOrigin(leases, (lease) => lease, node, now, options.gone);
    },
    holdsOrigin(blobHex, index, node, now) {
      return holdsOriginSlot(options.perChunk, (key) => leases.get(key), blobHex, index, node, now);
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
   * Origin leases in the view that have not expired, leaving out those of nodes that are `gone`, with how
   * many `node` holds; undefined until the view is loaded.
   */
  liveOrigin(now: number, node?: string, gone?: (node: string) => boolean): OriginLeases | undefined {
    return this.loaded ? countOrigin(this.entries, (entry) => entry.lease, node, now, gone) : undefined;
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
  /**
   * Origin leases asked for and not yet answered, by node: counted as held, so that neither the budget
   * nor a node's share is overrun by decisions running at once.
   */
  const asking = new Map<string, number>();
  async function takeSlot(
    key: string,
    blobHex: string,
    index: number,
    slot: number,
    node: string,
    now: number,
    zone: string | undefined,
  ): Promise<Grant | null> {
    // Two rounds: the first from the view when it knows the key, the second (after a write lost to a newer
    // one, or a lease deleted or expired between read and write) from the bucket itself.
    for (let round = 0; round < 2; round++) {
      const { revision, lease: current } = await read(key, round > 0);
      if (heldAgainst(current, node, now, options.gone)) return null;
      const record = {
        node,
        expiresAt: now + options.leaseMs,
        grantedAt: firstGranted(current, node, now, options.leaseMs),
      };
      const written = await write(key, record, revision);
      if (written === undefined) continue;
      return grantFor(key, blobHex, index, slot, record, written, zone);
    }
    return null;
  }

  /**
   * Writes a lease if the key is still at `revision` (previousSeq makes this exact: 0 means only if the
   * key does not exist); resolves to the new revision, or undefined when something was written since.
   */
  async function write(
    key: string,
    record: Required<GrantRecord>,
    revision: number,
  ): Promise<number | undefined> {
    try {
      const rev = await kv.put(key, encode(record satisfies GrantRecord), { previousSeq: revision });
      view?.saw(key, rev, record);
      return rev;
    } catch (err) {
      if (isCasConflict(err)) return undefined;
      throw err;
    }
  }

  /** What the view (unless `fromBucket`) or, where it does not know, the bucket holds at `key`. */
  async function read(
    key: string,
    fromBucket = false,
  ): Promise<{ revision: number; lease: GrantRecord | undefined }> {
    const seen = fromBucket ? undefined : view?.lookup(key);
    if (seen === 'absent') return { revision: 0, lease: undefined };
    if (seen) return seen;
    const entry = await kv.get(key);
    return {
      revision: entry?.revision ?? 0,
      lease: entry?.operation === 'PUT' ? readLease(key, entry.value) : undefined,
    };
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
      if (origin) asking.set(node, (asking.get(node) ?? 0) + 1);
      try {
        for (let slot = 0; slot < scope.slots; slot++) {
          const grant = await takeSlot(scope.key(slot), blobHex, index, slot, node, now, scope.zone);
          if (grant) return grant;
        }
        return null;
      } finally {
        if (origin) {
          const left = (asking.get(node) ?? 1) - 1;
          if (left > 0) asking.set(node, left);
          else asking.delete(node);
        }
      }
    },
    async renew(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      for (let slot = 0; slot < scope.slots; slot++) {
        const key = scope.key(slot);
        // From the view alone when there is one: until it is loaded (a watch restarting, NATS in trouble)
        // leases are not renewed, and run out as they used to, rather than cost a read per chunk.
        const known = view ? view.lookup(key) : await read(key, true);
        if (known === undefined || known === 'absent') continue;
        const { revision, lease } = known;
        if (!dueForRenewal(lease, node, now, options)) continue;
        const record = {
          node,
          expiresAt: now + options.leaseMs,
          grantedAt: grantedAtOf(lease, options.leaseMs),
        };
        // Lost to a newer write (another replica renewed it, or it was released): nothing to do.
        const written = await write(key, record, revision);
        return written === undefined
          ? null
          : grantFor(key, blobHex, index, slot, record, written, scope.zone);
      }
      return null;
    },
    async release(grant) {
      let revision = grant.revision;
      // Twice at most: a lease another replica renewed for the same node has a newer revision.
      for (let round = 0; round < 2; round++) {
        try {
          await kv.delete(grant.key, { previousSeq: revision });
          view?.released(grant.key, revision);
          return;
        } catch (err) {
          if (!isCasConflict(err)) throw err;
        }
        const seen = view?.lookup(grant.key);
        if (!seen || seen === 'absent' || !renewalOf(grant, seen.lease, seen.revision, options.leaseMs))
          return;
        revision = seen.revision;
      }
    },
    holdsOrigin(blobHex, index, node, now) {
      const leaseAt = (key: string) => {
        const seen = view?.lookup(key);
        return seen && seen !== 'absent' ? seen.lease : undefined;
      };
      return holdsOriginSlot(options.perChunk, leaseAt, blobHex, index, node, now);
    },
    liveOrigin(now, node) {
      const seen = view?.liveOrigin(now, node, options.gone);
      if (!seen) return undefined;
      for (const [asker, count] of asking) {
        seen.total += count;
        seen.holders.add(asker);
        if (asker === node) seen.held += count;
      }
      return seen;
    },
  };
}
