/**
 * How fast this download's parents have been, so that a parent much slower than the others is dropped
 * rather than waited for. A chunk from a parent gets a deadline of `factor` times what the median rate of
 * the download's recent transfers from *other* parents says it should take; a parent that misses it is
 * avoided for the rest of the download and the chunk goes to the next parent. Until a few transfers from
 * other parents are known there is nothing to compare with, and only the peer client's absolute floor
 * applies.
 *
 * A transfer much shorter than a whole chunk (a blob's last chunk) takes mostly the request's round trip,
 * which a rate does not describe: at a busy parent a few KiB can take a second. It is no sample, and its
 * deadline is that of a whole chunk.
 */
export interface PeerSpeedOptions {
  /** A parent slower than the others' median by this factor is dropped (0: never, by comparison). */
  factor: number;
  /** No relative deadline is shorter than this, so that scheduling noise never counts as slowness. */
  minMs: number;
  /** How many recent transfers the median is taken over. */
  window?: number;
  /** Transfers from other parents needed before a parent is compared with them. */
  minSamples?: number;
}

/** A transfer of less than this share of a chunk is not a rate sample (see the top of this file). */
const MIN_SAMPLE_SHARE = 0.25;

export class PeerSpeeds {
  private readonly samples: { peer: string; rate: number }[] = [];
  private readonly window: number;
  private readonly minSamples: number;

  constructor(private readonly options: PeerSpeedOptions) {
    this.window = options.window ?? 32;
    this.minSamples = options.minSamples ?? 3;
  }

  /**
   * Records a finished transfer of `bytes` from `peer` that took `ms`; `chunkBytes` is the download's chunk
   * size, and a transfer of less than a quarter of it is not recorded.
   */
  record(peer: string, bytes: number, ms: number, chunkBytes = bytes): void {
    if (bytes <= 0 || bytes < chunkBytes * MIN_SAMPLE_SHARE) return;
    this.samples.push({ peer, rate: (bytes / Math.max(ms, 1)) * 1000 });
    if (this.samples.length > this.window) this.samples.shift();
  }

  /** The median rate, in bytes per second, of recent transfers from parents other than `peer`. */
  medianOfOthers(peer: string): number | undefined {
    const rates = this.samples
      .filter((s) => s.peer !== peer)
      .map((s) => s.rate)
      .sort((a, b) => a - b);
    if (rates.length < this.minSamples) return undefined;
    const mid = rates.length >> 1;
    return rates.length % 2 ? rates[mid] : ((rates[mid - 1] ?? 0) + (rates[mid] ?? 0)) / 2;
  }

  /**
   * How long a transfer of `bytes` from `peer` may take, in milliseconds; undefined when unbounded. No
   * transfer gets less than a whole chunk (`chunkBytes`) would.
   */
  deadlineMs(peer: string, bytes: number, chunkBytes = bytes): number | undefined {
    if (this.options.factor <= 0) return undefined;
    const median = this.medianOfOthers(peer);
    if (median === undefined) return undefined;
    const judged = Math.max(bytes, chunkBytes);
    return Math.max(this.options.minMs, Math.ceil((judged / median) * 1000 * this.options.factor));
  }
}
