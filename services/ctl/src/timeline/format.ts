/** A replayed pull as a person reads it: one row per step, relative times, and a summary. */
import { formatBytes, formatDuration } from '@shoal/mesh';
import { renderTable } from '../report.js';
import type { PullReplay, TimelineEntry } from './timeline.js';

/** Short words for why a chunk was assigned as it was, for one table cell. */
const reasonWords: Record<string, string> = {
  tier: 'nearest tier',
  load: 'least loaded',
  tie: 'tie-break',
  only: 'only candidate',
  no_live_holder: 'no live holder',
  origin_budget: 'origin budget spent',
  origin_share: 'origin share held',
  origin_lease_held: 'origin lease held',
  zone_lease_held: 'zone lease held',
  no_holder_yet: 'no holder yet',
  parents_busy: 'holders busy',
  origin_limit: 'origin limit',
  leases_refused: 'leases refused',
  lease_error: 'lease store failed',
  holder_appeared: 'holder appeared',
};

export const relativeTime = (ms: number) => `+${(ms / 1000).toFixed(3)}s`;
const shortBlob = (blob: string) => `${blob.slice(0, 19)}…`;

function sourceCell(entry: TimelineEntry): string {
  if (entry.kind === 'dropped') return `peer ${entry.peer ?? '?'}`;
  if (entry.source === 'peer') return `peer ${entry.peer ?? '?'}`;
  return entry.source ?? '';
}

function detailCell(entry: TimelineEntry): string {
  switch (entry.kind) {
    case 'started':
      return entry.detail ?? '';
    case 'finished':
      return `${entry.detail ?? ''}, ${formatBytes(entry.bytes ?? 0)} in ${formatDuration(entry.ms ?? 0)}`;
    case 'assigned':
      return `${reasonWords[entry.reason ?? ''] ?? entry.reason ?? ''} (${entry.scheduler ?? '?'})`;
    case 'fetched':
      return `${formatBytes(entry.bytes ?? 0)} in ${formatDuration(entry.ms ?? 0)}`;
    default:
      return entry.reason ?? '';
  }
}

/** The cells of one step: time, what happened, chunk, source, detail. */
function cells(entry: TimelineEntry): string[] {
  return [
    relativeTime(entry.t),
    entry.kind,
    entry.index === undefined ? '' : String(entry.index),
    sourceCell(entry),
    detailCell(entry),
  ];
}

/** One step on one line, naming its node and blob: for a followed stream, where pulls interleave. */
export function formatEntryLine(entry: TimelineEntry): string {
  const [time = '', kind = '', index = '', source = '', detail = ''] = cells(entry);
  return [
    time.padStart(10),
    entry.node.padEnd(12),
    shortBlob(entry.blob),
    kind.padEnd(9),
    index.padStart(5),
    source.padEnd(14),
    detail,
  ]
    .join('  ')
    .trimEnd();
}

const plural = (n: number, word: string, many = `${word}s`) => `${n} ${n === 1 ? word : many}`;
const list = (indices: number[]) =>
  indices.length > 12 ? `${indices.slice(0, 12).join(', ')}, … (${indices.length})` : indices.join(', ');

/** What the pull came to, in a few lines. */
export function formatSummary(pull: PullReplay): string {
  const { peer, origin } = pull.fetched;
  const peers = Object.entries(pull.byPeer)
    .sort((a, b) => b[1].chunks - a[1].chunks)
    .map(([node, tally]) => `${node} ${tally.chunks}`)
    .join(', ');
  const fetched = peer.chunks + origin.chunks;
  const sources = [
    `${peer.chunks} from peers (${formatBytes(peer.bytes)}${peers ? `: ${peers}` : ''})`,
    `${origin.chunks} from the origin (${formatBytes(origin.bytes)})`,
    ...(pull.cached ? [`${pull.cached} from the cache`] : []),
  ].join(', ');
  const of = pull.chunks !== undefined ? ` of ${pull.chunks}` : '';
  const verdict: Record<PullReplay['status'], string> = {
    consistent: 'every chunk fetched exactly once',
    inconsistent: 'INCONSISTENT',
    cached: 'served from the cache',
    in_progress: 'in progress',
    unknown: 'blob size not in the window',
  };
  const outcome =
    pull.ok === undefined ? 'not finished' : pull.ok ? 'ok' : `failed${pull.error ? `: ${pull.error}` : ''}`;
  const lines = [
    `summary: ${fetched}${of} chunks fetched (${verdict[pull.status]}): ${sources}; ${formatDuration(pull.ms)}, ${outcome}`,
    `  ${plural(pull.failures, 'failed fetch', 'failed fetches')}, ${plural(pull.parentsDropped.length, 'parent')} dropped${pull.parentsDropped.length ? ` (${pull.parentsDropped.join(', ')})` : ''}, ${plural(pull.fallbacks, 'fallback')}`,
  ];
  if (pull.fetchedTwice.length) lines.push(`  fetched more than once: ${list(pull.fetchedTwice)}`);
  if (pull.assignedNotFetched.length)
    lines.push(`  assigned but never fetched: ${list(pull.assignedNotFetched)}`);
  if (pull.missing.length && pull.status !== 'cached') lines.push(`  never fetched: ${list(pull.missing)}`);
  return lines.join('\n');
}

/** One pull: a heading, its steps as a table, and its summary. */
export function formatPull(pull: PullReplay, entries: TimelineEntry[]): string {
  const size =
    pull.size !== undefined
      ? `  ${formatBytes(pull.size)}${pull.chunks !== undefined && pull.chunkSize ? ` in ${plural(pull.chunks, 'chunk')} of ${formatBytes(pull.chunkSize)}` : ''}`
      : '';
  const heading = `${pull.node}  ${pull.blob}${size}  from ${new Date(pull.firstAt).toISOString()}`;
  const table = renderTable(['TIME', 'EVENT', 'CHUNK', 'SOURCE', 'DETAIL'], entries.map(cells));
  return [heading, table, formatSummary(pull)].join('\n');
}

/** A step as a JSON line. */
export function entryJson(entry: TimelineEntry): string {
  return JSON.stringify({ type: 'step', ...entry });
}

/** A pull's summary as a JSON line. */
export function summaryJson(pull: PullReplay): string {
  return JSON.stringify({ type: 'summary', ...pull });
}
