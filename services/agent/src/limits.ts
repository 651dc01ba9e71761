/**
 * The agent's limits that can change while it runs: the rate limiters, the per-peer upload slots,
 * whether it serves peers, and the sizes of its cache tiers. One object owns them, so the limits API
 * and the code that enforces them see the same values.
 */
import { type AgentLimits, ShoalError } from '@shoal/mesh';
import type { MemoryTier } from './memory-tier.js';
import { ConcurrencyLimiter, TokenBucket } from './rate-limit.js';
import type { ChunkStore } from './store.js';

export type { AgentLimits };

/** The smallest burst accepted at run time, as in the configuration. */
const MIN_BURST = 64 * 1024;

export interface LimitsHooks {
  store: ChunkStore;
  memory: MemoryTier;
  /** Called when `share` changes, so the mesh client can withdraw or re-announce this node's chunks. */
  onShareChange?: (share: boolean) => void;
}

export class AgentLimiters {
  /** Every byte this node downloads, from peers and the registry. */
  readonly download: TokenBucket;
  /** Chunk bytes fetched from the registry. */
  readonly registry: TokenBucket;
  /** Chunk bytes uploaded to peers, all together. */
  readonly peerUploads: TokenBucket;
  /** Chunk uploads running at once, per peer. */
  readonly uploadsPerPeer: ConcurrencyLimiter;
  private shareValue: boolean;

  constructor(
    initial: AgentLimits,
    private readonly hooks: LimitsHooks,
  ) {
    this.download = new TokenBucket(initial.downloadRate, initial.downloadBurst);
    this.registry = new TokenBucket(initial.registryRate, initial.registryBurst);
    this.peerUploads = new TokenBucket(initial.uploadRate, initial.uploadBurst);
    this.uploadsPerPeer = new ConcurrencyLimiter(initial.uploadsPerPeer);
    this.shareValue = initial.share;
  }

  get share(): boolean {
    return this.shareValue;
  }

  current(): AgentLimits {
    return {
      downloadRate: this.download.limit.rate,
      downloadBurst: this.download.limit.burst,
      uploadRate: this.peerUploads.limit.rate,
      uploadBurst: this.peerUploads.limit.burst,
      uploadsPerPeer: this.uploadsPerPeer.limit,
      registryRate: this.registry.limit.rate,
      registryBurst: this.registry.limit.burst,
      share: this.shareValue,
      cacheMaxSize: this.hooks.store.capacity,
      memory: this.hooks.memory.stats().budget,
    };
  }

  /**
   * Applies the given limits at once: waiting transfers are re-timed at the new rates, a smaller memory
   * tier drops chunks at once, and a smaller cache is swept (the returned promise resolves when the
   * evicted blobs are gone).
   */
  async apply(change: Partial<AgentLimits>): Promise<AgentLimits> {
    const now = this.current();
    const next = { ...now, ...change };
    if (next.downloadRate !== now.downloadRate || next.downloadBurst !== now.downloadBurst)
      this.download.setRate(next.downloadRate, next.downloadBurst);
    if (next.registryRate !== now.registryRate || next.registryBurst !== now.registryBurst)
      this.registry.setRate(next.registryRate, next.registryBurst);
    if (next.uploadRate !== now.uploadRate || next.uploadBurst !== now.uploadBurst)
      this.peerUploads.setRate(next.uploadRate, next.uploadBurst);
    if (next.uploadsPerPeer !== now.uploadsPerPeer) this.uploadsPerPeer.setMax(next.uploadsPerPeer);
    if (next.memory !== now.memory) this.hooks.memory.setBudget(next.memory);
    if (next.share !== now.share) {
      this.shareValue = next.share;
      this.hooks.onShareChange?.(next.share);
    }
    if (next.cacheMaxSize !== now.cacheMaxSize) {
      this.hooks.store.setMaxBytes(next.cacheMaxSize);
      await this.hooks.store.sweep();
    }
    return this.current();
  }
}

const sizeFields = [
  'downloadRate',
  'uploadRate',
  'registryRate',
  'cacheMaxSize',
  'memory',
  'downloadBurst',
  'uploadBurst',
  'registryBurst',
] as const;

function invalid(field: string, message: string): ShoalError {
  return new ShoalError('SHOAL_ERR_BAD_MESSAGE', `${field}: ${message}`, { details: { field } });
}

/**
 * Validates a change of limits (the body of `PUT /shoal/v1/limits`): an object naming some of the
 * limits, sizes and rates as whole bytes (0: unlimited), bursts at least 64 KiB, `uploadsPerPeer` a
 * whole number, `share` a boolean. Throws SHOAL_ERR_BAD_MESSAGE naming the first bad field.
 */
export function parseLimitsChange(body: unknown): Partial<AgentLimits> {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw invalid('body', 'expected a JSON object of limits');
  const input = body as Record<string, unknown>;
  const out: Partial<AgentLimits> = {};
  const known = new Set<string>([...sizeFields, 'uploadsPerPeer', 'share']);
  for (const key of Object.keys(input)) if (!known.has(key)) throw invalid(key.slice(0, 40), 'unknown limit');
  for (const field of sizeFields) {
    const value = input[field];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0)
      throw invalid(field, 'expected a whole number of bytes, 0 or more');
    if (field.endsWith('Burst') && value < MIN_BURST)
      throw invalid(field, `expected at least ${MIN_BURST} bytes`);
    out[field] = value;
  }
  const slots = input.uploadsPerPeer;
  if (slots !== undefined) {
    if (typeof slots !== 'number' || !Number.isSafeInteger(slots) || slots < 0 || slots > 1024)
      throw invalid('uploadsPerPeer', 'expected a whole number from 0 to 1024');
    out.uploadsPerPeer = slots;
  }
  const share = input.share;
  if (share !== undefined) {
    if (typeof share !== 'boolean') throw invalid('share', 'expected true or false');
    out.share = share;
  }
  return out;
}
