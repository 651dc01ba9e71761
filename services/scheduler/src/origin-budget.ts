import type { OriginLeases } from './grants.js';

/**
 * How many origin leases the mesh may hold at once, following what the registry delivers. Every origin
 * lease is a chunk being fetched from the registry; when more are in flight than its link carries, each
 * takes longer than the nodes waiting for it will wait, they fetch it themselves, and the registry's link
 * drowns in range requests. The budget grows by one for each origin chunk that arrives within the target
 * time, and shrinks by a third when one takes longer, at most once per target time, since the chunks
 * that report it were granted under the larger budget.
 */
export interface OriginBudgetOptions {
  /** The budget never falls below this. */
  min: number;
  /** Nor rises above this (and starts at the smaller of it and `start`). */
  max: number;
  /** An origin chunk that takes longer than this, from grant to announcement, shrinks the budget. */
  targetMs: number;
  start?: number;
}

export class OriginBudget {
  private current: number;
  private lastCut = Number.NEGATIVE_INFINITY;

  constructor(private readonly options: OriginBudgetOptions) {
    this.current = Math.max(options.min, Math.min(options.max, options.start ?? 32));
  }

  get limit(): number {
    return this.current;
  }

  /** An origin chunk granted `ms` ago has arrived. */
  arrived(ms: number, now: number): void {
    if (ms <= this.options.targetMs) {
      this.current = Math.min(this.options.max, this.current + 1);
      return;
    }
    if (now - this.lastCut < this.options.targetMs) return;
    this.lastCut = now;
    this.current = Math.max(this.options.min, Math.floor((this.current * 2) / 3));
  }
}

export interface OriginSharesOptions {
  /** The origin leases a node may hold at first; its own limit never falls below this. */
  start: number;
  /** The mesh's budget now: a node's limit never rises above it. */
  budget: () => number;
  /** An origin chunk of the node that takes longer than this shrinks its limit (see OriginBudget). */
  targetMs: number;
  /** How long a node told to wait for the origin still counts as waiting for it. */
  waitingMs: number;
}

/**
 * How many origin leases one node may hold at once: the smaller of its own limit and its fair share of
 * the budget. The own limit starts at `start` and follows the node's registry fetches as the budget
 * follows the mesh's (one more for each of its origin chunks that arrives within the target time, a third
 * less, not below `start`, when one takes longer), so that a lone node soon fetches as wide as the budget
 * allows, and the first node of a rollout does not take the whole budget before the others have asked.
 * The fair share is the budget divided among the nodes holding origin leases and those recently told to
 * wait for one: a chunk fetched by a node that fetches many at once arrives late, since they share its
 * link, and only that node can then pass it on; spread over the waiting nodes, first copies arrive sooner
 * and from more places.
 */
export class OriginShares {
  private readonly limits = new Map<string, { limit: number; lastCut: number; at: number }>();
  /** Nodes told to wait for the origin, oldest first, with when they last were. */
  private readonly waiting = new Map<string, number>();

  constructor(private readonly options: OriginSharesOptions) {}

  /** The nodes the budget was last shared among, `node` included. */
  contenders = 0;

  /**
   * The most origin leases `node` may hold now, given the origin leases held (`live`: over the mesh, by
   * `node`, and who holds any). The fair share is rounded up, so that the budget is used whole; but while
   * nodes holding none wait for the origin and the budget has no room left for each of them, a node that
   * holds some gets no more: freed room goes to the empty-handed first, who ask less often.
   */
  share(node: string, live: OriginLeases, now: number): number {
    this.forgetWaiting(now);
    this.forgetLimits(now);
    const { holders } = live;
    // Counted over the holders (at most the budget), not the waiting nodes (at most the whole mesh).
    let emptyHanded = this.waiting.size;
    for (const holder of holders) if (this.waiting.has(holder)) emptyHanded--;
    if (this.waiting.has(node) && !holders.has(node)) emptyHanded--;
    const contenders = holders.size + emptyHanded + (holders.has(node) ? 0 : 1);
    this.contenders = contenders;
    const budget = this.options.budget();
    const fair = Math.max(1, Math.ceil(budget / contenders));
    const own = this.limits.get(node)?.limit ?? this.options.start;
    const share = Math.min(fair, own);
    return live.held > 0 && emptyHanded > 0 && live.total + emptyHanded >= budget
      ? Math.min(share, live.held)
      : share;
  }

  /** `node` was told to wait for the origin (the budget or its share was spent). */
  waited(node: string, now: number): void {
    // Re-inserted, so that the map stays in order of the last wait.
    this.waiting.delete(node);
    this.waiting.set(node, now);
  }

  /** An origin chunk granted to `node` `ms` ago has arrived. */
  arrived(node: string, ms: number, now: number): void {
    const { start, targetMs } = this.options;
    const entry = this.limits.get(node) ?? { limit: start, lastCut: Number.NEGATIVE_INFINITY, at: now };
    entry.at = now;
    if (ms <= targetMs) {
      entry.limit = Math.min(Math.max(start, this.options.budget()), entry.limit + 1);
    } else if (now - entry.lastCut >= targetMs) {
      entry.lastCut = now;
      entry.limit = Math.max(start, Math.floor((entry.limit * 2) / 3));
    }
    // A node's limit is kept while it keeps fetching; one idle for a while starts afresh.
    this.limits.delete(node);
    if (entry.limit > start) this.limits.set(node, entry);
    this.forgetLimits(now);
  }

  /** Nodes with a limit of their own (above `start`), and nodes counted as waiting for the origin. */
  get size(): { limits: number; waiting: number } {
    return { limits: this.limits.size, waiting: this.waiting.size };
  }

  private forgetWaiting(now: number): void {
    for (const [node, at] of this.waiting) {
      if (now - at <= this.options.waitingMs) break;
      this.waiting.delete(node);
    }
  }

  private forgetLimits(now: number): void {
    const idleMs = LIMIT_IDLE_TARGETS * this.options.targetMs;
    for (const [node, entry] of this.limits) {
      if (now - entry.at <= idleMs) break;
      this.limits.delete(node);
    }
  }
}

/** A node whose origin chunks stopped arriving this many target times ago starts from `start` again. */
const LIMIT_IDLE_TARGETS = 12;
