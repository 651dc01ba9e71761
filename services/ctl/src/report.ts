/** Turning events into what a person wants to read: a pull summary per node and blob, or a timeline. */
import { formatBytes, formatDuration, type ShoalEvent } from '@shoal/mesh';

export interface PullSummary {
  node: string;
  blob: string;
  size: number;
  ms: number;
  ok: boolean;
  /** Chunks by where they came from: a peer's node ID, "origin" or "cache". */
  chunksBySource: Record<string, number>;
  bytesBySource: Record<string, number>;
}

/** Folds events into one summary per (node, blob) pull, in the order the pulls finished. */
export function summarisePulls(events: Iterable<ShoalEvent>): PullSummary[] {
  const fetched = new Map<string, Map<number, { source: string; bytes: number }>>();
  const out: PullSummary[] = [];
  for (const event of events) {
    if (event.type === 'chunk_fetched') {
      const key = `${event.node}\n${event.blob}`;
      const chunks = fetched.get(key) ?? new Map<number, { source: string; bytes: number }>();
      chunks.set(event.index, {
        source: event.source === 'peer' ? (event.peer ?? 'peer') : 'origin',
        bytes: event.bytes,
      });
      fetched.set(key, chunks);
    } else if (event.type === 'pull_finished') {
      const key = `${event.node}\n${event.blob}`;
      const chunks = fetched.get(key);
      const chunksBySource: Record<string, number> = {};
      const bytesBySource: Record<string, number> = {};
      let attributed = 0;
      for (const { source, bytes } of chunks?.values() ?? []) {
        chunksBySource[source] = (chunksBySource[source] ?? 0) + 1;
        bytesBySource[source] = (bytesBySource[source] ?? 0) + bytes;
        attributed += bytes;
      }
      if (event.bytes.cache > 0 || attributed === 0) {
        chunksBySource.cache = (chunksBySource.cache ?? 0) + event.chunks.cache;
        bytesBySource.cache = (bytesBySource.cache ?? 0) + event.bytes.cache;
      }
      fetched.delete(key);
      out.push({
        node: event.node,
        blob: event.blob,
        size: event.size,
        ms: event.ms,
        ok: event.ok,
        chunksBySource,
        bytesBySource,
      });
    }
  }
  return out;
}

export function formatPulls(pulls: PullSummary[]): string {
  if (pulls.length === 0) return 'no pulls found';
  const rows = pulls.map((p) => {
    const sources = Object.entries(p.chunksBySource)
      .sort((a, b) => b[1] - a[1])
      .map(([source, n]) => `${n} from ${source}`)
      .join(', ');
    return [
      p.node,
      `${p.blob.slice(0, 19)}…`,
      formatBytes(p.size),
      formatDuration(p.ms),
      p.ok ? 'ok' : 'FAILED',
      sources,
    ];
  });
  return renderTable(['NODE', 'LAYER', 'SIZE', 'TIME', 'RESULT', 'CHUNKS'], rows);
}

/** Columns padded to their widest cell, two spaces apart. */
export function renderTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

export function formatEvent(event: ShoalEvent): string {
  const { at, origin, type, ...rest } = event;
  const time = new Date(at).toISOString().slice(11, 23);
  const fields = Object.entries(rest)
    .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join(' ');
  return `${time} ${origin.padEnd(16)} ${type.padEnd(17)} ${fields}`;
}
