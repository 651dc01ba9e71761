/**
 * What a preheat shows: on a terminal, one bar per layer redrawn in place; otherwise a line per layer as
 * it settles on every node; at the end a table per layer and the reason each failed node gave. With
 * `--output json`, one JSON object per layer instead.
 */
import { formatBytes, formatDuration } from '@shoal/mesh';
import { renderTable } from '../report.js';
import type { LayerProgress, PreheatReport } from './run.js';

export const shortDigest = (digest: string) => `${digest.slice(0, 'sha256:'.length + 12)}…`;

const BAR_WIDTH = 24;

export function progressBar(fraction: number, width = BAR_WIDTH): string {
  const clamped = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0));
  const filled = Math.round(clamped * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

function fractionOf(layer: LayerProgress): number {
  const total = layer.size * layer.nodes;
  return total === 0 ? (layer.done === layer.nodes ? 1 : 0) : layer.bytes / total;
}

/** One layer's live line: bar, share, bytes over all nodes, nodes done (and failed). */
export function formatProgressLine(layer: LayerProgress): string {
  const percent = `${Math.floor(fractionOf(layer) * 100)}%`.padStart(4);
  const bytes = `${formatBytes(layer.bytes)} / ${formatBytes(layer.size * layer.nodes)}`;
  const failed = layer.failed > 0 ? `, ${layer.failed} failed` : '';
  return `${shortDigest(layer.digest)} ${layer.kind.padEnd(6)} ${progressBar(fractionOf(layer))} ${percent}  ${bytes}  ${layer.done}/${layer.nodes} nodes${failed}`;
}

/** The line printed when a layer has settled on every node (when not drawing bars). */
export function formatSettledLine(layer: LayerProgress): string {
  const head = `${shortDigest(layer.digest)} ${layer.kind.padEnd(6)} ${formatBytes(layer.size).padStart(10)}`;
  const time = formatDuration(layer.ms ?? 0);
  if (layer.failed === 0) return `${head}  done on ${layer.nodes}/${layer.nodes} nodes in ${time}`;
  const nodes = layer.failures.map((f) => f.node).join(', ');
  return `${head}  done on ${layer.done}/${layer.nodes} nodes, failed on ${nodes} (${time})`;
}

/** A layer's result as a JSON line. */
export function layerJson(layer: LayerProgress): string {
  return JSON.stringify({
    digest: layer.digest,
    kind: layer.kind,
    size: layer.size,
    nodes: layer.nodes,
    done: layer.done,
    failed: layer.failed,
    ms: layer.ms ?? null,
    failures: layer.failures,
  });
}

/**
 * Bars redrawn in place: the cursor goes back up over the previous drawing and each line is cleared
 * before it is written again.
 */
export class LiveProgress {
  private drawn = 0;

  constructor(private readonly print: (text: string) => void) {}

  draw(layers: LayerProgress[]): void {
    const lines = layers.map(formatProgressLine);
    const up = this.drawn > 0 ? `\x1b[${this.drawn}A` : '';
    this.print(lines.map((line, i) => `${i === 0 ? up : ''}\x1b[2K${line}`).join('\n'));
    this.drawn = lines.length;
  }
}

/** Per node, the distinct reasons its copies failed, most common first. */
export function failureReasons(report: PreheatReport): [node: string, reason: string][] {
  const out: [string, string][] = [];
  const byNode = new Map<string, Map<string, number>>();
  for (const layer of report.layers) {
    for (const { node, error } of layer.failures) {
      const reasons = byNode.get(node) ?? new Map<string, number>();
      reasons.set(error, (reasons.get(error) ?? 0) + 1);
      byNode.set(node, reasons);
    }
  }
  for (const [node, reasons] of [...byNode].sort(([a], [b]) => a.localeCompare(b))) {
    const whole = report.nodeFailures.get(node);
    if (whole !== undefined) {
      out.push([node, whole]);
      continue;
    }
    for (const [reason, count] of [...reasons].sort((a, b) => b[1] - a[1])) {
      out.push([node, count > 1 ? `${reason} (${count} layers)` : reason]);
    }
  }
  return out;
}

export function formatSummary(image: string, report: PreheatReport): string {
  const rows = report.layers.map((l) => [
    shortDigest(l.digest),
    l.kind,
    formatBytes(l.size),
    `${l.done}/${l.nodes}`,
    String(l.failed),
    l.ms === undefined ? '-' : formatDuration(l.ms),
  ]);
  const table = renderTable(['LAYER', 'KIND', 'SIZE', 'DONE', 'FAILED', 'TIME'], rows);
  const nodes = report.layers[0]?.nodes ?? 0;
  const total = report.layers.reduce((sum, l) => sum + l.size, 0);
  const complete = report.layers.every((l) => l.done === l.nodes);
  const what = `${image}: ${report.layers.length} blobs (${formatBytes(total)}) on ${nodes} node${nodes === 1 ? '' : 's'}`;
  const verdict = complete
    ? `${what}, every node holds every blob (${formatDuration(report.ms)})`
    : `${what}${report.cancelled ? ', cancelled' : ''}; failed copies:`;
  const reasons = complete ? [] : failureReasons(report).map(([node, reason]) => `  ${node}: ${reason}`);
  return [table, '', verdict, ...reasons].join('\n');
}
