/**
 * Pulls as a Chrome/Perfetto trace (the JSON object format, `{ traceEvents: [...] }`), to open in
 * ui.perfetto.dev or chrome://tracing: one process track per node, named by metadata events; each pull
 * an enclosing slice on the node's "pulls" threads, each chunk fetch a slice (ending when the fetch was
 * reported, lasting what it took) on the node's "fetches" threads, categorised and coloured by source;
 * fallbacks, dropped parents, failed fetches and invalid blobs as instant events.
 *
 * Slices on one thread must nest, and fetches overlap, so they are laid out on as many threads ("lanes")
 * as the most fetches in flight at once.
 */
import type { ShoalEvent } from '@shoal/mesh';
import { byTime } from './timeline.js';

export interface TraceEvent {
  name: string;
  /** X: a complete slice; i: an instant; M: metadata naming a process or thread. */
  ph: 'X' | 'i' | 'M';
  pid: number;
  tid: number;
  /** Microseconds since the trace's first moment. */
  ts?: number;
  dur?: number;
  cat?: string;
  /** An instant's scope: the thread. */
  s?: 't';
  /** One of the trace viewer's reserved colour names. */
  cname?: string;
  args?: Record<string, unknown>;
}

export interface Trace {
  traceEvents: TraceEvent[];
  displayTimeUnit: 'ms';
  otherData: { generator: string; startedAt: string; nodes: number; fetches: number };
}

/** Threads of a node's track: pull lanes first, fetch lanes after. */
const PULL_TID = 1;
const FETCH_TID = 1001;

/** The trace viewer's reserved colours: green for chunks from peers, orange for the registry's. */
const sourceColour = { peer: 'thread_state_running', origin: 'thread_state_iowait' } as const;

interface Span {
  node: string;
  start: number;
  end: number;
  make: (tid: number) => TraceEvent;
}

const shortBlob = (blob: string) => `${blob.slice(0, 19)}…`;

export function buildTrace(events: Iterable<ShoalEvent>): Trace {
  const sorted = byTime([...events]);
  const nodeEvents = sorted.filter(
    (e): e is Extract<ShoalEvent, { node: string }> =>
      'node' in e &&
      (e.type === 'pull_started' ||
        e.type === 'pull_finished' ||
        e.type === 'chunk_fetched' ||
        e.type === 'chunk_failed' ||
        e.type === 'parent_dropped' ||
        e.type === 'fallback' ||
        e.type === 'blob_invalid'),
  );
  let t0 = Infinity;
  for (const e of nodeEvents) {
    const lasted = e.type === 'chunk_fetched' || e.type === 'pull_finished' ? e.ms : 0;
    t0 = Math.min(t0, e.at - lasted);
  }
  if (!Number.isFinite(t0)) t0 = 0;
  const us = (ms: number) => Math.round((ms - t0) * 1000);

  const nodes = [...new Set(nodeEvents.map((e) => e.node))].sort();
  const pidOf = new Map(nodes.map((node, i) => [node, i + 1]));
  const pid = (node: string) => pidOf.get(node) ?? 0;

  const pulls: Span[] = [];
  const fetches: Span[] = [];
  const instants: TraceEvent[] = [];
  /** Pulls started and not yet finished, and the last event seen of each node's blob. */
  const open = new Map<string, number[]>();
  const lastAt = new Map<string, number>();
  const key = (node: string, blob: string) => `${node}\n${blob}`;

  const pullSpan = (node: string, blob: string, start: number, end: number, args: Record<string, unknown>) =>
    pulls.push({
      node,
      start,
      end,
      make: (tid) => ({
        name: `pull ${shortBlob(blob)}`,
        cat: 'pull',
        ph: 'X',
        pid: pid(node),
        tid,
        ts: us(start),
        dur: Math.max(1, Math.round((end - start) * 1000)),
        args: { blob, ...args },
      }),
    });
  const instant = (e: Extract<ShoalEvent, { node: string }>, name: string, args: Record<string, unknown>) =>
    instants.push({
      name,
      cat: e.type,
      ph: 'i',
      s: 't',
      pid: pid(e.node),
      tid: PULL_TID,
      ts: us(e.at),
      args,
    });

  for (const e of nodeEvents) {
    const blob = 'blob' in e ? e.blob : undefined;
    if (blob) lastAt.set(key(e.node, blob), e.at);
    switch (e.type) {
      case 'pull_started':
        open.set(key(e.node, e.blob), [...(open.get(key(e.node, e.blob)) ?? []), e.at]);
        break;
      case 'pull_finished': {
        open.get(key(e.node, e.blob))?.shift();
        pullSpan(e.node, e.blob, e.at - e.ms, e.at, {
          ok: e.ok,
          ms: e.ms,
          bytes: e.bytes,
          chunks: e.chunks,
          ...(e.error ? { error: e.error } : {}),
        });
        break;
      }
      case 'chunk_fetched': {
        const start = e.at - e.ms;
        fetches.push({
          node: e.node,
          start,
          end: e.at,
          make: (tid) => ({
            name: e.source === 'peer' ? `peer ${e.peer ?? '?'}` : 'origin',
            cat: `fetch,${e.source}`,
            ph: 'X',
            pid: pid(e.node),
            tid,
            ts: us(start),
            dur: Math.max(1, Math.round(e.ms * 1000)),
            cname: sourceColour[e.source],
            args: {
              blob: e.blob,
              index: e.index,
              source: e.source,
              ...(e.peer ? { peer: e.peer } : {}),
              bytes: e.bytes,
              ms: e.ms,
            },
          }),
        });
        break;
      }
      case 'chunk_failed':
        instant(e, `chunk ${e.index} failed`, {
          blob: e.blob,
          index: e.index,
          source: e.source,
          ...(e.peer ? { peer: e.peer } : {}),
          reason: e.reason,
        });
        break;
      case 'parent_dropped':
        instant(e, `dropped ${e.peer}`, { blob: e.blob, peer: e.peer, why: e.why, reason: e.reason });
        break;
      case 'fallback':
        instant(e, 'fallback', { ...(e.blob ? { blob: e.blob } : {}), reason: e.reason });
        break;
      case 'blob_invalid':
        instant(e, 'blob invalid', { blob: e.blob, reason: e.reason });
        break;
    }
  }
  // Pulls still running when the window ends reach as far as their last event.
  for (const [k, starts] of open) {
    const [node = '', blob = ''] = k.split('\n');
    for (const start of starts)
      pullSpan(node, blob, start, Math.max(start, lastAt.get(k) ?? start), { unfinished: true });
  }

  const traceEvents: TraceEvent[] = [];
  const threads = new Map<number, Map<number, string>>();
  const name = (node: string, tid: number, label: string) => {
    const list = threads.get(pid(node)) ?? new Map<number, string>();
    list.set(tid, label);
    threads.set(pid(node), list);
  };
  for (const [spans, base, label] of [
    [pulls, PULL_TID, 'pulls'],
    [fetches, FETCH_TID, 'fetches'],
  ] as const) {
    // Each span goes on the first lane of its node free by the time it starts, so slices never overlap.
    const lanes = new Map<string, number[]>();
    for (const span of [...spans].sort((a, b) => a.start - b.start || a.end - b.end)) {
      const ends = lanes.get(span.node) ?? [];
      let lane = ends.findIndex((end) => end <= span.start);
      if (lane < 0) lane = ends.push(span.end) - 1;
      else ends[lane] = span.end;
      lanes.set(span.node, ends);
      name(span.node, base + lane, lane === 0 ? label : `${label} (${lane + 1})`);
      traceEvents.push(span.make(base + lane));
    }
  }
  for (const e of instants) {
    const node = nodes[e.pid - 1] ?? '';
    if (!threads.get(e.pid)?.has(PULL_TID)) name(node, PULL_TID, 'pulls');
    traceEvents.push(e);
  }

  const metadata: TraceEvent[] = [];
  for (const node of nodes) {
    const p = pid(node);
    metadata.push({ name: 'process_name', ph: 'M', pid: p, tid: 0, args: { name: node } });
    metadata.push({ name: 'process_sort_index', ph: 'M', pid: p, tid: 0, args: { sort_index: p } });
    for (const [tid, label] of [...(threads.get(p) ?? [])].sort((a, b) => a[0] - b[0])) {
      metadata.push({ name: 'thread_name', ph: 'M', pid: p, tid, args: { name: label } });
      metadata.push({ name: 'thread_sort_index', ph: 'M', pid: p, tid, args: { sort_index: tid } });
    }
  }
  return {
    traceEvents: [...metadata, ...traceEvents.sort((a, b) => (a.ts ?? 0) - (b.ts ?? 0))],
    displayTimeUnit: 'ms',
    otherData: {
      generator: 'shoalctl trace',
      startedAt: new Date(t0).toISOString(),
      nodes: nodes.length,
      fetches: fetches.length,
    },
  };
}
