/**
 * A pull rebuilt from the event stream: per node and blob, every step (pull started and finished, each
 * chunk's assignment, fetch or failure, parents dropped, fallbacks) in order, and a summary that says
 * whether every chunk of the blob was fetched exactly once. Built one event at a time, so that a
 * followed stream prints each step as it arrives.
 */
import { chooseChunkSize, chunkCount, type ShoalEvent } from '@shoal/mesh';

export const EntryKinds = {
  started: 'started',
  finished: 'finished',
  assigned: 'assigned',
  fetched: 'fetched',
  failed: 'failed',
  dropped: 'dropped',
  fallback: 'fallback',
  invalid: 'invalid',
} as const;
export type EntryKind = (typeof EntryKinds)[keyof typeof EntryKinds];

/** One step of a pull. */
export interface TimelineEntry {
  kind: EntryKind;
  node: string;
  blob: string;
  /** Milliseconds since the epoch, on the publisher's clock. */
  at: number;
  /** Milliseconds since the pull's first event. */
  t: number;
  index?: number;
  source?: 'peer' | 'origin' | 'wait';
  peer?: string;
  /** The scheduler replica that made an assignment. */
  scheduler?: string;
  /** An assignment's AssignmentReason; a failure's, a dropped parent's or a fallback's reason in words. */
  reason?: string;
  bytes?: number;
  ms?: number;
  /** Anything else worth a glance: the registry and repository of a pull, a finished pull's outcome. */
  detail?: string;
}

export const PullStatuses = {
  /** Every chunk of the blob was fetched exactly once. */
  consistent: 'consistent',
  /** Some chunk was fetched twice, or the pull finished with chunks never fetched. */
  inconsistent: 'inconsistent',
  /** Served from the node's cache: nothing was fetched in the window. */
  cached: 'cached',
  /** Not finished (in the window) and chunks are still to come. */
  in_progress: 'in_progress',
  /** The blob's size is not in the window, so its chunks cannot be counted. */
  unknown: 'unknown',
} as const;
export type PullStatus = (typeof PullStatuses)[keyof typeof PullStatuses];

interface Tally {
  chunks: number;
  bytes: number;
}

/** What one node's pull of one blob came to. */
export interface PullReplay {
  node: string;
  blob: string;
  size?: number;
  chunkSize?: number;
  /** Chunks in the blob, when its size is known. */
  chunks?: number;
  /** When the pull's first event in the window was published. */
  firstAt: number;
  /** From the first event to pull_finished (the agent's own measure when it reported one). */
  ms: number;
  /** pull_finished's verdict; undefined while not finished in the window. */
  ok?: boolean;
  error?: string;
  /** Client requests for the blob that started and finished (one download serves them all). */
  requests: { started: number; finished: number };
  fetched: { peer: Tally; origin: Tally };
  /** Peer chunks and bytes by parent. */
  byPeer: Record<string, Tally>;
  /** Chunks served from the cache, as pull_finished reported them. */
  cached: number;
  failures: number;
  parentsDropped: string[];
  fallbacks: number;
  /** Chunks given to a peer or the origin that were never fetched at all. */
  assignedNotFetched: number[];
  fetchedTwice: number[];
  /** Chunks of the blob never fetched (with its size known). */
  missing: number[];
  status: PullStatus;
}

interface PullState {
  node: string;
  blob: string;
  firstAt: number;
  lastAt: number;
  size?: number;
  chunkSize?: number;
  started: number;
  finished: number;
  finishedMs?: number;
  ok?: boolean;
  error?: string;
  cached: number;
  /** The latest peer or origin assignment of each chunk. */
  assigned: Map<number, 'peer' | 'origin'>;
  /** The last recorded wait reason of each chunk, so that repeated identical waits are shown once. */
  waiting: Map<number, string>;
  fetches: Map<number, { source: 'peer' | 'origin'; peer?: string; bytes: number }[]>;
  failures: number;
  dropped: string[];
  fallbacks: number;
}

export interface Timeline {
  /** Takes one event, returning the steps it adds (none for events that are not part of a pull). */
  add(event: ShoalEvent): TimelineEntry[];
  /** Every pull seen so far, in the order their first event was seen. */
  pulls(): PullReplay[];
  /** The pull of one node and blob, if seen. */
  pull(node: string, blob: string): PullReplay | undefined;
}

const keyOf = (node: string, blob: string) => `${node}\n${blob}`;

/** The events that are steps of a node's pull of a blob. */
const pullEventTypes: ReadonlySet<ShoalEvent['type']> = new Set<ShoalEvent['type']>([
  'pull_started',
  'pull_finished',
  'chunks_assigned',
  'chunk_fetched',
  'chunk_failed',
  'parent_dropped',
  'fallback',
  'blob_invalid',
]);

export function createTimeline(): Timeline {
  const states = new Map<string, PullState>();

  const stateOf = (node: string, blob: string, at: number): PullState => {
    const key = keyOf(node, blob);
    let state = states.get(key);
    if (!state) {
      state = {
        node,
        blob,
        firstAt: at,
        lastAt: at,
        started: 0,
        finished: 0,
        cached: 0,
        assigned: new Map(),
        waiting: new Map(),
        fetches: new Map(),
        failures: 0,
        dropped: [],
        fallbacks: 0,
      };
      states.set(key, state);
    }
    state.lastAt = Math.max(state.lastAt, at);
    return state;
  };

  function add(event: ShoalEvent): TimelineEntry[] {
    if (!pullEventTypes.has(event.type) || !('blob' in event) || !event.blob || !('node' in event)) return [];
    const state = stateOf(event.node, event.blob, event.at);
    const entry = (kind: EntryKind, fields: Partial<TimelineEntry> = {}): TimelineEntry => ({
      kind,
      node: state.node,
      blob: state.blob,
      at: event.at,
      t: event.at - state.firstAt,
      ...fields,
    });
    switch (event.type) {
      case 'pull_started':
        state.started++;
        state.size = event.size;
        return [entry('started', { detail: `${event.registry} ${event.repository}` })];
      case 'pull_finished':
        state.finished++;
        state.finishedMs = event.ms;
        state.ok = event.ok;
        state.cached += event.chunks.cache;
        if (event.error) state.error = event.error;
        return [
          entry('finished', {
            ms: event.ms,
            bytes: event.size,
            detail: event.ok ? 'ok' : `failed${event.error ? `: ${event.error}` : ''}`,
          }),
        ];
      case 'chunks_assigned': {
        state.size ??= event.size;
        state.chunkSize = event.chunkSize;
        const out: TimelineEntry[] = [];
        for (const record of event.assignments) {
          if (record.source === 'wait') {
            // An agent asks again every few hundred milliseconds while it waits: show a wait once until
            // its reason changes or the chunk is given somewhere.
            if (state.waiting.get(record.index) === record.reason) continue;
            state.waiting.set(record.index, record.reason);
          } else {
            state.waiting.delete(record.index);
            state.assigned.set(record.index, record.source);
          }
          out.push(
            entry('assigned', {
              index: record.index,
              source: record.source,
              ...(record.peer ? { peer: record.peer } : {}),
              scheduler: event.scheduler,
              reason: record.reason,
            }),
          );
        }
        return out;
      }
      case 'chunk_fetched': {
        const list = state.fetches.get(event.index) ?? [];
        list.push({ source: event.source, ...(event.peer ? { peer: event.peer } : {}), bytes: event.bytes });
        state.fetches.set(event.index, list);
        return [
          entry('fetched', {
            index: event.index,
            source: event.source,
            ...(event.peer ? { peer: event.peer } : {}),
            bytes: event.bytes,
            ms: event.ms,
          }),
        ];
      }
      case 'chunk_failed':
        state.failures++;
        return [
          entry('failed', {
            index: event.index,
            source: event.source,
            ...(event.peer ? { peer: event.peer } : {}),
            reason: event.reason,
          }),
        ];
      case 'parent_dropped':
        if (!state.dropped.includes(event.peer)) state.dropped.push(event.peer);
        return [entry('dropped', { peer: event.peer, reason: `${event.why}: ${event.reason}` })];
      case 'fallback':
        state.fallbacks++;
        return [entry('fallback', { reason: event.reason })];
      case 'blob_invalid':
        return [entry('invalid', { reason: event.reason })];
      default:
        return [];
    }
  }

  return {
    add,
    pulls: () => [...states.values()].map(summarise),
    pull(node, blob) {
      const state = states.get(keyOf(node, blob));
      return state ? summarise(state) : undefined;
    },
  };
}

/** Builds a timeline from a list of events, in the order of their timestamps. */
export function buildTimeline(events: Iterable<ShoalEvent>): {
  entries: TimelineEntry[];
  pulls: PullReplay[];
} {
  const timeline = createTimeline();
  const entries = byTime([...events]).flatMap((event) => timeline.add(event));
  return { entries, pulls: timeline.pulls() };
}

/** Events sorted by their timestamps; events published in the same millisecond keep stream order. */
export function byTime(events: ShoalEvent[]): ShoalEvent[] {
  return events
    .map((event, i) => ({ event, i }))
    .sort((a, b) => a.event.at - b.event.at || a.i - b.i)
    .map((x) => x.event);
}

/**
 * The chunk size a pull used: the scheduler's (recorded with each decision), else that of a fetched
 * chunk known not to be the last, else what a node would choose by default for the size.
 */
function chunkSizeOf(state: PullState): number | undefined {
  if (state.chunkSize) return state.chunkSize;
  const indices = [...state.fetches.keys()].sort((a, b) => a - b);
  const last = indices.at(-1);
  for (const index of indices) {
    if (index === last) break;
    const bytes = state.fetches.get(index)?.[0]?.bytes;
    if (bytes) return bytes;
  }
  return state.size !== undefined ? chooseChunkSize(state.size) : undefined;
}

function summarise(state: PullState): PullReplay {
  const fetched = { peer: { chunks: 0, bytes: 0 }, origin: { chunks: 0, bytes: 0 } };
  const byPeer: Record<string, Tally> = {};
  const fetchedTwice: number[] = [];
  for (const [index, list] of state.fetches) {
    if (list.length > 1) fetchedTwice.push(index);
    for (const fetch of list) {
      fetched[fetch.source].chunks++;
      fetched[fetch.source].bytes += fetch.bytes;
      if (fetch.source === 'peer') {
        const tally = (byPeer[fetch.peer ?? 'peer'] ??= { chunks: 0, bytes: 0 });
        tally.chunks++;
        tally.bytes += fetch.bytes;
      }
    }
  }
  const assignedNotFetched = [...state.assigned.keys()].filter((index) => !state.fetches.has(index));
  const chunkSize = chunkSizeOf(state);
  const chunks = state.size !== undefined && chunkSize ? chunkCount(state.size, chunkSize) : undefined;
  const missing: number[] = [];
  if (chunks !== undefined) for (let i = 0; i < chunks; i++) if (!state.fetches.has(i)) missing.push(i);
  const done = state.finished > 0 && state.finished >= state.started;

  let status: PullStatus;
  if (fetchedTwice.length > 0) status = 'inconsistent';
  else if (state.fetches.size === 0 && state.cached > 0) status = 'cached';
  else if (chunks === undefined) status = 'unknown';
  else if (missing.length === 0 && [...state.fetches.keys()].every((i) => i < chunks)) status = 'consistent';
  else status = done ? 'inconsistent' : 'in_progress';

  return {
    node: state.node,
    blob: state.blob,
    ...(state.size !== undefined ? { size: state.size } : {}),
    ...(chunkSize !== undefined ? { chunkSize } : {}),
    ...(chunks !== undefined ? { chunks } : {}),
    firstAt: state.firstAt,
    ms: state.finishedMs ?? state.lastAt - state.firstAt,
    ...(state.ok !== undefined ? { ok: state.ok } : {}),
    ...(state.error ? { error: state.error } : {}),
    requests: { started: state.started, finished: state.finished },
    fetched,
    byPeer,
    cached: state.cached,
    failures: state.failures,
    parentsDropped: [...state.dropped],
    fallbacks: state.fallbacks,
    assignedNotFetched: assignedNotFetched.sort((a, b) => a - b),
    fetchedTwice: fetchedTwice.sort((a, b) => a - b),
    missing,
    status,
  };
}
