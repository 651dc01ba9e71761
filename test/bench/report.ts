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
