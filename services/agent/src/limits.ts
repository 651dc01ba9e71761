/**
 * The agent's limits that can change while it runs: the rate limiters, the per-peer upload slots,
 * whether it serves peers, and the sizes of its cache tiers. One object owns them, so the limits API
 * and the code that enforces them see the same values.
 *
 * A change made through the API is an override of the configured value. Overrides are kept in a small
 * file in the cache directory (`limits.json`) and applied over the configuration at the next start, until
 * they are dropped (`DELETE /shoal/v1/limits`); a file that cannot be used is set aside, never fatal.
 */
import { open, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  type AgentLimits,
  type AgentLimitsView,
  LIMIT_MAX_UPLOADS_PER_PEER,
  LIMIT_MIN_BURST,
  limitKinds,
  type LimitName,
  type Logger,
  ShoalError,
} from '@shoal/mesh';
import { replaceFile } from './atomic-file.js';
import type { MemoryTier } from './memory-tier.js';
import { ConcurrencyLimiter, TokenBucket } from './rate-limit.js';
import type { ChunkStore } from './store.js';

export type { AgentLimits, AgentLimitsView, LimitName };

/** The overrides file's name in the cache directory. */
export const LIMITS_FILE = 'limits.json';
/** The overrides file's format; a file of another version is set aside, not guessed at. */
const LIMITS_FILE_VERSION = 1;

const limitNames = Object.keys(limitKinds) as LimitName[];

export interface LimitsHooks {
  store: ChunkStore;
  memory: MemoryTier;
  /** Called when `share` changes, so the mesh client can withdraw or re-announce this node's chunks. */
  onShareChange?: (share: boolean) => void;
}

/** Where overrides of the configured limits are kept between restarts. */
export interface LimitsOverrideStore {
  /** Names the place in messages: the file's path. */
  readonly where: string;
  /** The overrides saved; none when nothing was saved, or what was saved cannot be used. */
  load(): Promise<Partial<AgentLimits>>;
  /** Replaces what is saved; resolves once it would survive a crash. */
  save(overrides: Partial<AgentLimits>): Promise<void>;
  clear(): Promise<void>;
}

/** Overrides kept only in memory: for tests, and for an agent that should forget them at restart. */
export function memoryOverrideStore(initial: Partial<AgentLimits> = {}): LimitsOverrideStore {
  let saved = { ...initial };
  return {
    where: 'memory',
    load: async () => ({ ...saved }),
    save: async (overrides) => {
      saved = { ...overrides };
    },
    clear: async () => {
      saved = {};
    },
  };
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err));

/**
 * Overrides in a JSON file, `{ "version": 1, "changedAt": "…", "overrides": { … } }`, replaced atomically:
 * written to a temporary file, synced, renamed over the old one, and the directory synced. A file that
 * cannot be read or does not hold valid overrides is renamed to `<path>.bad` with a warning, and the
 * configured limits apply.
 */
export function fileOverrideStore(path: string, log: Logger): LimitsOverrideStore {
  let tempCounter = 0;
  const setAside = async (why: string): Promise<void> => {
    const aside = `${path}.bad`;
    try {
      await rename(path, aside);
      log.warn(
        { file: path, movedTo: aside, reason: why },
        `ignoring the limits overrides file ${path} (${why}); moved it to ${aside}, the configured limits apply`,
      );
    } catch (err) {
      log.warn(
        { file: path, reason: why, err: errorText(err) },
        `ignoring the limits overrides file ${path} (${why}); could not move it aside, the configured limits apply`,
      );
    }
  };
  return {
    where: path,
    async load() {
      let text: string;
      try {
        text = await readFile(path, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
        await setAside(`cannot read it: ${errorText(err)}`);
        return {};
      }
      let doc: unknown;
      try {
        doc = JSON.parse(text);
      } catch {
        await setAside('not JSON');
        return {};
      }
      const file = doc as { version?: unknown; overrides?: unknown } | null;
      if (typeof file !== 'object' || file === null || Array.isArray(file)) {
        await setAside('not a JSON object');
        return {};
      }
      if (file.version !== LIMITS_FILE_VERSION) {
        await setAside(`version ${JSON.stringify(file.version)}, expected ${LIMITS_FILE_VERSION}`);
        return {};
      }
      try {
        return parseLimitsChange(file.overrides);
      } catch (err) {
        await setAside(`bad overrides: ${errorText(err)}`);
        return {};
      }
    },
    async save(overrides) {
      const temp = `${path}.${process.pid}.${tempCounter++}.tmp`;
      const body = { version: LIMITS_FILE_VERSION, changedAt: new Date().toISOString(), overrides };
      await replaceFile(path, temp, `${JSON.stringify(body, null, 2)}\n`, 0o644);
      await syncDir(dirname(path));
    },
    async clear() {
      await rm(path, { force: true });
      await syncDir(dirname(path));
    },
  };
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
  private overrides: Partial<AgentLimits>;
  /** Changes run one at a time, so the saved overrides and the limits in force never disagree. */
  private queue: Promise<unknown> = Promise.resolve();

  /**
   * Starts with the configured limits, and the given overrides over them; the cache tiers are resized to
   * match (the caller sweeps the store).
   */
  constructor(
    private readonly configured: AgentLimits,
    private readonly hooks: LimitsHooks,
    private readonly saved: LimitsOverrideStore = memoryOverrideStore(),
    overrides: Partial<AgentLimits> = {},
  ) {
    this.overrides = { ...overrides };
    const initial = { ...configured, ...overrides };
    this.download = new TokenBucket(initial.downloadRate, initial.downloadBurst);
    this.registry = new TokenBucket(initial.registryRate, initial.registryBurst);
    this.peerUploads = new TokenBucket(initial.uploadRate, initial.uploadBurst);
    this.uploadsPerPeer = new ConcurrencyLimiter(initial.uploadsPerPeer);
    this.shareValue = initial.share;
    if (hooks.memory.stats().budget !== initial.memory) hooks.memory.setBudget(initial.memory);
    if (hooks.store.capacity !== initial.cacheMaxSize) hooks.store.setMaxBytes(initial.cacheMaxSize);
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

  /** The limits changed through the API (and kept across restarts), in the API's order. */
  overridden(): LimitName[] {
    return limitNames.filter((name) => this.overrides[name] !== undefined);
  }

  /** What the limits API answers: the limits in force, and which of them are overrides. */
  view(): AgentLimitsView {
    return { ...this.current(), overridden: this.overridden() };
  }

  /**
   * Overrides the configured limits with the given ones (merged with earlier overrides) and keeps them
   * for the next start, then applies them. If they cannot be saved, nothing changes.
   */
  async change(change: Partial<AgentLimits>): Promise<AgentLimitsView> {
    return this.serially(async () => {
      if (Object.keys(change).length === 0) return this.view();
      const merged = { ...this.overrides, ...change };
      await this.persist(() => this.saved.save(merged));
      this.overrides = merged;
      await this.apply(change);
      return this.view();
    });
  }

  /** Drops every override, saved ones included, and applies the configured limits again. */
  async reset(): Promise<AgentLimitsView> {
    return this.serially(async () => {
      await this.persist(() => this.saved.clear());
      this.overrides = {};
      await this.apply(this.configured);
      return this.view();
    });
  }

  private serially<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async persist(write: () => Promise<void>): Promise<void> {
    try {
      await write();
    } catch (err) {
      throw new ShoalError(
        'SHOAL_ERR_CACHE',
        `could not save the limits overrides in ${this.saved.where} (${errorText(err)}); nothing changed`,
        { cause: err },
      );
    }
  }

  /**
   * Applies the given limits at once: waiting transfers are re-timed at the new rates, a smaller memory
   * tier drops chunks at once, and a smaller cache is swept (the returned promise resolves when the
   * evicted blobs are gone).
   */
  private async apply(change: Partial<AgentLimits>): Promise<void> {
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
  }
}

/**
 * Reads the saved overrides and builds the limiters with them over the configured limits, logging once
 * which configured values they replace.
 */
export async function openAgentLimiters(
  configured: AgentLimits,
  hooks: LimitsHooks,
  saved: LimitsOverrideStore,
  log: Logger,
): Promise<AgentLimiters> {
  const overrides = await saved.load();
  const replaced = Object.fromEntries(
    limitNames
      .filter((name) => overrides[name] !== undefined)
      .map((name) => [name, { configured: configured[name], override: overrides[name] }]),
  );
  if (Object.keys(replaced).length > 0) {
    log.info(
      { file: saved.where, overridden: replaced },
      `limits changed through the limits API override the configuration: ${Object.keys(replaced).join(', ')} (DELETE /shoal/v1/limits, or shoalctl limits --reset, returns to the configured values)`,
    );
  }
  return new AgentLimiters(configured, hooks, saved, overrides);
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
    if (field.endsWith('Burst') && value < LIMIT_MIN_BURST)
      throw invalid(field, `expected at least ${LIMIT_MIN_BURST} bytes`);
    out[field] = value;
  }
  const slots = input.uploadsPerPeer;
  if (slots !== undefined) {
    if (
      typeof slots !== 'number' ||
      !Number.isSafeInteger(slots) ||
      slots < 0 ||
      slots > LIMIT_MAX_UPLOADS_PER_PEER
    )
      throw invalid('uploadsPerPeer', `expected a whole number from 0 to ${LIMIT_MAX_UPLOADS_PER_PEER}`);
    out.uploadsPerPeer = slots;
  }
  const share = input.share;
  if (share !== undefined) {
    if (typeof share !== 'boolean') throw invalid('share', 'expected true or false');
    out.share = share;
  }
  return out;
}
