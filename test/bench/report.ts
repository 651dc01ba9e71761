/** Printing benchmark figures: quantiles and Markdown tables, shared by the benchmarks and the simulator. */

/** The q-quantile of the values that are numbers (NaN, a failed run, is left out). */
export function quantile(values: number[], q: number): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

/** A Markdown table of rows that share their keys, columns padded to width. */
export function table(rows: Record<string, string>[]): string {
  const keys = Object.keys(rows[0] ?? {});
  const widths = keys.map((k) => Math.max(k.length, ...rows.map((r) => (r[k] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [
    line(keys),
    line(widths.map((w) => '-'.repeat(w))),
    ...rows.map((r) => line(keys.map((k) => r[k] ?? ''))),
  ].join('\n');
}

/** A rollout's figures against the bound, as table columns: completion quantiles, registry and cross-zone bytes. */
export function rolloutColumns(rollout: {
  /** Seconds per node from its start to its last byte; NaN for a node that failed. */
  completions: number[];
  tMin: number;
  registryBytes: number;
  crossZoneBytesPerZone: number[];
  imageBytes: number;
}): Record<string, string> {
  const { completions, tMin, imageBytes } = rollout;
  const max = Math.max(...completions.filter((v) => !Number.isNaN(v)));
  return {
    'p50 s': quantile(completions, 0.5).toFixed(1),
    'p90 s': quantile(completions, 0.9).toFixed(1),
    'max s': max.toFixed(1),
    'max/T_min': (max / tMin).toFixed(2),
    'p50/T_min': (quantile(completions, 0.5) / tMin).toFixed(2),
    'registry (images)': (rollout.registryBytes / imageBytes).toFixed(2),
    'cross-zone (images/zone)': rollout.crossZoneBytesPerZone
      .map((b) => (b / imageBytes).toFixed(2))
      .join(' '),
  };
}

/**
 * The q-quantile of a Prometheus histogram from its `_bucket` series summed over every label set (and
 * every process, when the metrics were merged), interpolated within the bucket as Prometheus does.
 * NaN when nothing was observed; the highest finite bound when the quantile lies in the +Inf bucket.
 */
export function histogramQuantile(metrics: Map<string, number>, name: string, q: number): number {
  const byBound = new Map<number, number>();
  for (const [key, value] of metrics) {
    if (!key.startsWith(`${name}_bucket{`)) continue;
    const le = /le="([^"]+)"/.exec(key)?.[1];
    if (le === undefined) continue;
    const bound = le === '+Inf' ? Infinity : Number(le);
    byBound.set(bound, (byBound.get(bound) ?? 0) + value);
  }
  const buckets = [...byBound].sort((a, b) => a[0] - b[0]);
  const total = buckets.at(-1)?.[1] ?? 0;
  if (total === 0) return Number.NaN;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === Infinity) return lower;
      return lower + ((bound - lower) * (rank - below)) / Math.max(count - below, 1e-9);
    }
    lower = bound;
    below = count;
  }
  return lower;
}
