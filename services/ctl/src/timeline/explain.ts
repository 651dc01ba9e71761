/**
 * Why each chunk of a node's pull came from where it did, in words, from the scheduler's recorded
 * decisions (`chunks_assigned`); and a determinism check: the scheduler's own ranking function, re-run on
 * the candidates a peer decision recorded, must choose the same parent by the same rule.
 */
import {
  formatBytes,
  formatDuration,
  type AssignmentReason,
  type AssignmentRecord,
  type RankingRule,
  type ShoalEvent,
  type WaitReason,
  chooseParent,
} from '@shoal/mesh';
import { renderTable } from '../report.js';
import { byTime, createTimeline } from './timeline.js';

/** How a recorded peer decision compares with re-ranking its candidates. */
export const CheckResults = {
  /** The ranking chooses the recorded parent by the recorded rule. */
  same: 'same',
  differs: 'differs',
  /** The decision's candidates were not recorded (the event was truncated), so there is nothing to re-rank. */
  unchecked: 'unchecked',
} as const;
export type CheckResult = (typeof CheckResults)[keyof typeof CheckResults];

export interface ExplainedDecision {
  index: number;
  at: number;
  scheduler: string;
  source: 'peer' | 'origin' | 'wait';
  peer?: string;
  reason: AssignmentReason;
  /** The decision in words. */
  why: string;
  /** Consecutive identical decisions for this chunk (an agent asks again while it waits). */
  repeats: number;
  /** Set for peer decisions only: origin and wait decisions rank no candidates. */
  check?: CheckResult;
  /** What the ranking chooses instead, when it differs (null: no candidate at all). */
  reranked?: { peer: string; rule: RankingRule } | null;
  record: AssignmentRecord;
}

export interface ChunkStory {
  index: number;
  decisions: ExplainedDecision[];
  fetched: { at: number; source: 'peer' | 'origin'; peer?: string; bytes: number; ms: number }[];
}

export interface PullExplanation {
  node: string;
  blob: string;
  /** The time of the pull's first event, which row times are relative to. */
  firstAt: number;
  chunkSize?: number;
  /** Chunks in the blob, when its size is known. */
  chunks?: number;
  stories: ChunkStory[];
  decisions: number;
  /** Peer decisions re-ranked from their recorded candidates. */
  checked: number;
  differing: ExplainedDecision[];
}

const tierWords = ['same vSwitch', 'same zone', 'elsewhere'];
const tierWord = (tier: number) => tierWords[tier] ?? `tier ${tier}`;

const waitWords: Record<WaitReason, string> = {
  origin_budget: "the mesh's origin budget is spent; queued for the registry",
  origin_share: "the node holds its share of the mesh's origin budget; queued for the registry",
  origin_lease_held: 'origin lease held by another node',
  zone_lease_held: "zone lease held by another node of the zone; waiting for the zone's copy",
  no_holder_yet: 'no live holder with a known hash yet',
  parents_busy: 'every holder is busy',
  origin_limit: 'per-request origin limit reached',
  leases_refused: 'leases spoken for: too many refused in this decision',
  lease_error: 'the lease store failed',
  holder_appeared: 'a holder appeared while the lease was taken; asking again gets it',
};

/** A load as ranked (two decimals), shown with one decimal unless it needs two. */
export function formatLoad(load: number): string {
  return Number.isInteger(Math.round(load * 100) / 10) ? load.toFixed(1) : load.toFixed(2);
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** One recorded assignment in words, e.g. "peer n3: same vSwitch, least loaded of 3 (loads 0.0, 1.0, 2.0)". */
export function describeAssignment(record: AssignmentRecord): string {
  if (record.source === 'origin') {
    const gate = record.zoneLease ? ", gated by the zone's lease" : '';
    return `origin: no live holder with a known hash; origin lease granted${gate}`;
  }
  if (record.source === 'wait') {
    const words = waitWords[record.reason as WaitReason] ?? record.reason;
    return `wait: ${words}`;
  }
  const candidates = record.candidates ?? [];
  const peer = record.peer ?? '?';
  const parent = candidates.find((c) => c.node === record.peer) ?? candidates[0];
  if (!parent) return `peer ${peer}: candidates not recorded`;
  const sameTier = candidates.filter((c) => c.tier === parent.tier);
  const loads = sameTier.map((c) => formatLoad(c.load)).join(', ');
  let why: string;
  switch (record.reason) {
    case 'only':
      why = 'the only candidate';
      break;
    case 'tier': {
      const others = candidates.filter((c) => c.tier !== parent.tier);
      const where = [...new Set(others.map((c) => tierWord(c.tier)))].join(', ');
      why = `nearer than the other ${plural(others.length, 'candidate')} (${where})`;
      break;
    }
    case 'load':
      why = `least loaded of ${sameTier.length} (loads ${loads})`;
      break;
    case 'tie': {
      const equal = sameTier.filter((c) => c.load === parent.load).length;
      why = `first in walk order of ${equal} at load ${formatLoad(parent.load)}`;
      if (equal < sameTier.length) why += ` (loads ${loads})`;
      break;
    }
    default:
      why = `chosen by ${record.reason}`;
  }
  const notes: string[] = [];
  if (record.busy) notes.push(`${plural(record.busy, 'busy holder')} passed over`);
  if (record.zoneLease) notes.push("through the zone's lease");
  return `peer ${peer}: ${tierWord(parent.tier)}, ${why}${notes.map((n) => `; ${n}`).join('')}`;
}

/** Re-runs the scheduler's ranking on a peer decision's recorded candidates. */
export function checkAssignment(
  record: AssignmentRecord,
): { check: CheckResult; reranked?: { peer: string; rule: RankingRule } | null } | undefined {
  if (record.source !== 'peer') return undefined;
  if (!record.candidates?.length) return { check: 'unchecked' };
  const chosen = chooseParent(record.candidates);
  if (!chosen) return { check: 'differs', reranked: null };
  if (chosen.parent.node !== record.peer || chosen.rule !== record.reason)
    return { check: 'differs', reranked: { peer: chosen.parent.node, rule: chosen.rule } };
  return { check: 'same' };
}

/** The decisions and fetches of one node's pull of one blob, chunk by chunk. */
export function explainPull(events: Iterable<ShoalEvent>, node: string, blob: string): PullExplanation {
  const mine = byTime(
    [...events].filter((e) => 'node' in e && e.node === node && 'blob' in e && e.blob === blob),
  );
  const timeline = createTimeline();
  for (const event of mine) timeline.add(event);
  const pull = timeline.pull(node, blob);
  const stories = new Map<number, ChunkStory>();
  const story = (index: number) => {
    let s = stories.get(index);
    if (!s) stories.set(index, (s = { index, decisions: [], fetched: [] }));
    return s;
  };
  for (let i = 0; i < (pull?.chunks ?? 0); i++) story(i);
  let decisions = 0;
  let checked = 0;
  const differing: ExplainedDecision[] = [];
  for (const event of mine) {
    if (event.type === 'chunk_fetched') {
      story(event.index).fetched.push({
        at: event.at,
        source: event.source,
        ...(event.peer ? { peer: event.peer } : {}),
        bytes: event.bytes,
        ms: event.ms,
      });
    }
    if (event.type !== 'chunks_assigned') continue;
    for (const record of event.assignments) {
      const s = story(record.index);
      const last = s.decisions.at(-1);
      // An agent asks again every few hundred milliseconds while it waits: one row per run of waits.
      if (last && record.source === 'wait' && last.source === 'wait' && last.reason === record.reason) {
        last.repeats++;
        continue;
      }
      decisions++;
      const result = checkAssignment(record);
      const decision: ExplainedDecision = {
        index: record.index,
        at: event.at,
        scheduler: event.scheduler,
        source: record.source,
        ...(record.peer ? { peer: record.peer } : {}),
        reason: record.reason,
        why: describeAssignment(record),
        repeats: 1,
        ...(result ?? {}),
        record,
      };
      if (result && result.check !== 'unchecked') checked++;
      if (result?.check === 'differs') differing.push(decision);
      s.decisions.push(decision);
    }
  }
  return {
    node,
    blob,
    firstAt: pull?.firstAt ?? mine[0]?.at ?? 0,
    ...(pull?.chunkSize !== undefined ? { chunkSize: pull.chunkSize } : {}),
    ...(pull?.chunks !== undefined ? { chunks: pull.chunks } : {}),
    stories: [...stories.values()].sort((a, b) => a.index - b.index),
    decisions,
    checked,
    differing,
  };
}

const relative = (at: number, from: number) => `+${((at - from) / 1000).toFixed(3)}s`;

function fetchedText(story: ChunkStory): string {
  if (story.fetched.length === 0) return 'not fetched';
  const each = story.fetched.map(
    (f) => `${f.source === 'peer' ? `peer ${f.peer ?? '?'}` : 'origin'}, ${formatDuration(f.ms)}`,
  );
  return story.fetched.length > 1 ? `${story.fetched.length} times: ${each.join('; ')}` : (each[0] ?? '');
}

/** The explanation as a table, one row per decision, and a verdict. */
export function formatExplanation(e: PullExplanation): string {
  const rows: string[][] = [];
  for (const story of e.stories) {
    if (story.decisions.length === 0) {
      rows.push([
        String(story.index),
        '-',
        'no decision recorded (fetched without the scheduler)',
        fetchedText(story),
        '-',
      ]);
      continue;
    }
    story.decisions.forEach((d, i) => {
      const last = i === story.decisions.length - 1;
      rows.push([
        String(story.index),
        relative(d.at, e.firstAt),
        d.repeats > 1 ? `${d.why} (×${d.repeats})` : d.why,
        last ? fetchedText(story) : '',
        d.check ?? '-',
      ]);
    });
  }
  const size = e.chunkSize !== undefined ? ` of ${formatBytes(e.chunkSize)}` : '';
  const head = `${e.node}  ${e.blob}  ${e.chunks !== undefined ? plural(e.chunks, 'chunk') : 'chunks'}${size}, ${plural(e.decisions, 'decision')}`;
  const table = renderTable(['CHUNK', 'TIME', 'DECISION', 'FETCHED', 'CHECK'], rows);
  return [head, '', table, '', verdict(e)].join('\n');
}

/** One line saying whether re-ranking agreed with every recorded peer decision. */
export function verdict(e: PullExplanation): string {
  if (e.decisions === 0) return `no decisions recorded for ${e.node} and ${e.blob} in this window`;
  if (e.differing.length === 0) {
    return e.checked === 0
      ? 'no peer decisions to re-rank'
      : `all ${plural(e.checked, 'peer decision')} re-rank to the same parent by the same rule`;
  }
  const lines = e.differing.map((d) => {
    const instead = d.reranked
      ? `the ranking chooses ${d.reranked.peer} (${d.reranked.rule})`
      : 'the ranking chooses no candidate';
    return `  chunk ${d.index} at ${relative(d.at, e.firstAt)}: recorded ${d.peer ?? '?'} (${d.reason}), ${instead}`;
  });
  return [
    `${e.differing.length} of ${plural(e.checked, 'peer decision')} differ from the ranking of their recorded candidates:`,
    ...lines,
  ].join('\n');
}
