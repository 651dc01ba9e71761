/**
 * Origin and zone leases. A chunk may be fetched from the origin by at most `perChunk` nodes at a time, and
 * from outside a zone by at most `perZone` nodes of that zone at a time: each slot is a lease with an
 * expiry, taken with compare-and-set so that scheduler replicas never hand out the same slot twice. The
 * in-memory store has the same semantics and is used by planner tests and simulations.
 *
 * Origin leases live under grantKey (<blob hex>.<chunk>.<slot>); zone leases under zoneGrantKey
 * (<blob hex>.<chunk>.z.<zone as base64url>.<slot>), a different number of tokens, so the two never collide.
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
}

export interface GrantStoreOptions {
  perChunk: number;
  leaseMs: number;
  /** Slots of each (blob, chunk, zone) lease; 1 when not given. */
  perZone?: number;
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
    take(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      for (let slot = 0; slot < scope.slots; slot++) {
        const key = scope.key(slot);
        const current = leases.get(key);
        if (current && current.expiresAt > now && current.node !== node) continue;
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
  };
}

/** Leases in the `grants` KV bucket, shared by every scheduler replica. */
export function kvGrantStore(kv: KV, options: GrantStoreOptions): GrantStore {
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
    // Two rounds: a lease deleted or expired between our read and our write is worth one more look.
    for (let round = 0; round < 2; round++) {
      const entry = await kv.get(key);
      if (!entry || entry.operation !== 'PUT') {
        try {
          // previousSeq makes this exact: the write fails if anything was written since our read.
          const rev = await kv.put(key, value, { previousSeq: entry?.revision ?? 0 });
          return grantFor(key, blobHex, index, slot, node, expiresAt, rev, zone);
        } catch (err) {
          if (isCasConflict(err)) continue;
          throw err;
        }
      }
      let current: GrantRecord | undefined;
      try {
        current = decode(grantRecord, entry.value, `grant ${key}`);
      } catch {
        // An unreadable lease protects nothing; it is overwritten like an expired one.
        current = undefined;
      }
      if (current && current.expiresAt > now && current.node !== node) return null;
      try {
        const rev = await kv.update(key, value, entry.revision);
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
    async take(blobHex, index, node, now, zone) {
      const scope = scopeOf(options, blobHex, index, zone);
      for (let slot = 0; slot < scope.slots; slot++) {
        const grant = await takeSlot(scope.key(slot), blobHex, index, slot, node, now, scope.zone);
        if (grant) return grant;
      }
      return null;
    },
    async release(grant) {
      try {
        await kv.delete(grant.key, { previousSeq: grant.revision });
      } catch (err) {
        if (!isCasConflict(err)) throw err;
      }
    },
  };
}
