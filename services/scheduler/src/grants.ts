/**
 * Origin leases. A chunk may be fetched from the origin by at most `perChunk` nodes at a time: each slot is
 * a lease with an expiry, taken with compare-and-set so that scheduler replicas never hand out the same
 * slot twice. The in-memory store has the same semantics and is used by planner tests and simulations.
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
}

export interface GrantStore {
  readonly leaseMs: number;
  /**
   * Takes (or renews, if `node` already holds it) a lease on one chunk. Resolves to null when every slot
   * is held by another node whose lease has not expired.
   */
  take(blobHex: string, index: number, node: string, now: number): Promise<Grant | null>;
  /** Gives a lease back early, e.g. once its holder announced the chunk; a no-op if it was taken over. */
  release(grant: Grant): Promise<void>;
}

export interface GrantStoreOptions {
  perChunk: number;
  leaseMs: number;
}

function grantFor(
  blobHex: string,
  index: number,
  slot: number,
  node: string,
  expiresAt: number,
  revision: number,
): Grant {
  return { key: grantKey(blobHex, index, slot), blobHex, index, slot, node, expiresAt, revision };
}

export function memoryGrantStore(options: GrantStoreOptions): GrantStore & { readonly size: number } {
  const leases = new Map<string, GrantRecord & { revision: number }>();
  let revision = 0;
  return {
    leaseMs: options.leaseMs,
    get size() {
      return leases.size;
    },
    take(blobHex, index, node, now) {
      for (let slot = 0; slot < options.perChunk; slot++) {
        const key = grantKey(blobHex, index, slot);
        const current = leases.get(key);
        if (current && current.expiresAt > now && current.node !== node) continue;
        const expiresAt = now + options.leaseMs;
        leases.set(key, { node, expiresAt, revision: ++revision });
        return Promise.resolve(grantFor(blobHex, index, slot, node, expiresAt, revision));
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
    blobHex: string,
    index: number,
    slot: number,
    node: string,
    now: number,
  ): Promise<Grant | null> {
    const key = grantKey(blobHex, index, slot);
    const expiresAt = now + options.leaseMs;
    const value = encode({ node, expiresAt } satisfies GrantRecord);
    // Two rounds: a lease deleted or expired between our read and our write is worth one more look.
    for (let round = 0; round < 2; round++) {
      const entry = await kv.get(key);
      if (!entry || entry.operation !== 'PUT') {
        try {
          // previousSeq makes this exact: the write fails if anything was written since our read.
          const rev = await kv.put(key, value, { previousSeq: entry?.revision ?? 0 });
          return grantFor(blobHex, index, slot, node, expiresAt, rev);
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
        return grantFor(blobHex, index, slot, node, expiresAt, rev);
      } catch (err) {
        if (isCasConflict(err)) continue;
        throw err;
      }
    }
    return null;
  }

  return {
    leaseMs: options.leaseMs,
    async take(blobHex, index, node, now) {
      for (let slot = 0; slot < options.perChunk; slot++) {
        const grant = await takeSlot(blobHex, index, slot, node, now);
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
