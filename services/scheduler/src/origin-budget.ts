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
