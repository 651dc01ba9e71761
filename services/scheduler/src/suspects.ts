/**
 * Nodes the mesh has lost before discovery has: a node whose agent was killed or whose host went down
 * sends no more heartbeats, but discovery removes it only after `node.ttl` (15 s), and its registry leases
 * hold for `origin.lease` (10 s). Agents that could not even open a connection to a peer say so in their
 * schedule requests (`unreachable`, for a few seconds after the failure). A node so reported that has
 * also gone quiet (this replica has received neither a heartbeat nor a schedule request from it for
 * SILENCE × its heartbeat interval, on this replica's own clock) is taken for **dead**: its leases are
 * free for others to take, and it is offered to nobody as a parent. Both signals are needed, so one agent
 * with broken networking cannot have live nodes taken for dead, nor can a node that is merely slow to
 * heartbeat. Hearing from the node ends it; reports start over from there.
 *
 * A node whose record was deleted (it left, or discovery timed it out) is gone too, until it comes back.
 */
import type { NodeRecord } from '@shoal/mesh';

export interface SuspectsOptions {
  /** How long reports are kept, and how long a deletion is remembered. */
  forgetMs: number;
  /** The node's current record, as the scheduler's index has it. */
  record: (node: string) => NodeRecord | undefined;
  /** Called once when a node is first taken for dead, with the nodes that reported it. */
  onDead?: (node: string, reporters: string[]) => void;
}

interface Reports {
  /** When this replica had last heard from the node when the first report came. */
  heardAt: number;
  reporters: Set<string>;
  firstAt: number;
  /** Whether onDead was called for this round of reports. */
  told: boolean;
}

/** Heartbeat intervals without a heartbeat that count as missed heartbeats. */
const SILENCE = 1.5;
/** The agents' default heartbeat interval, for records that do not say theirs. */
const DEFAULT_HEARTBEAT_MS = 3_000;
/** Entries of one request that are looked at. */
const MAX_PER_REPORT = 8;
/** Bound on the nodes tracked at once. */
const MAX_TRACKED = 10_000;
/** Bound on the reporters kept per node. */
const MAX_REPORTERS = 16;

export class Suspects {
  private readonly reports = new Map<string, Reports>();
  /** When this replica last heard from each registered node: a heartbeat's record, or a request. */
  private readonly heard = new Map<string, number>();
  /** Nodes whose record was deleted, and when: remembered until they come back (or the map is pruned). */
  private readonly deleted = new Map<string, number>();
  /** When the maps were last pruned: at most once a second, so a flood costs no scan per report. */
  private prunedAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly options: SuspectsOptions) {}

  /**
   * `reporter` could not connect to any of `nodes`. Only nodes it also asked to avoid count, and only
   * nodes and reporters the node registry knows.
   */
  report(reporter: string, nodes: readonly string[], avoid: readonly string[], now: number): void {
    if (this.options.record(reporter) === undefined) return;
    for (const node of nodes.slice(0, MAX_PER_REPORT)) {
      if (node === reporter || !avoid.includes(node)) continue;
      const heardAt = this.heard.get(node);
      if (heardAt === undefined || this.options.record(node) === undefined) continue;
      let entry = this.reports.get(node);
      if (entry && (entry.heardAt !== heardAt || now - entry.firstAt > this.options.forgetMs)) {
        // Heard from since the reports began, or they are old: start over.
        this.reports.delete(node);
        entry = undefined;
      }
      if (!entry) {
        if (this.reports.size >= MAX_TRACKED) this.prune(now);
        if (this.reports.size >= MAX_TRACKED) continue;
        entry = { heardAt, reporters: new Set(), firstAt: now, told: false };
        this.reports.set(node, entry);
      }
      if (entry.reporters.size < MAX_REPORTERS) entry.reporters.add(reporter);
    }
  }

  /**
   * This replica heard from `node`: a heartbeat's record arrived, or a request from it. Ends a suspicion.
   * Only registered nodes are tracked.
   */
  heardFrom(node: string, now: number): void {
    if (this.options.record(node) === undefined) return;
    this.heard.set(node, now);
  }

  /**
   * Whether `node` is taken for dead now: reported unreachable since this replica last heard from it, and
   * not heard from for SILENCE heartbeat intervals; or its record was deleted and has not come back.
   */
  gone(node: string, now: number): boolean {
    const record = this.options.record(node);
    if (record === undefined) return this.deleted.has(node);
    const entry = this.reports.get(node);
    const heardAt = this.heard.get(node);
    if (entry === undefined || heardAt === undefined || entry.heardAt !== heardAt) return false;
    if (now - heardAt <= SILENCE * (record.heartbeatMs ?? DEFAULT_HEARTBEAT_MS)) return false;
    if (!entry.told) {
      entry.told = true;
      this.options.onDead?.(node, [...entry.reporters]);
    }
    return true;
  }

  /** The node's record was deleted from the node registry. */
  nodeDeleted(node: string, now: number): void {
    this.reports.delete(node);
    this.heard.delete(node);
    if (this.deleted.size >= MAX_TRACKED) this.prune(now);
    if (this.deleted.size < MAX_TRACKED) this.deleted.set(node, now);
  }

  /** Nodes with a record that are taken for dead now. */
  count(now: number): number {
    let n = 0;
    for (const node of this.reports.keys()) if (this.gone(node, now)) n++;
    return n;
  }

  private prune(now: number): void {
    if (now - this.prunedAt < 1_000) return;
    this.prunedAt = now;
    for (const [node, entry] of this.reports)
      if (now - entry.firstAt > this.options.forgetMs) this.reports.delete(node);
    for (const [node, at] of this.deleted)
      if (now - at > this.options.forgetMs || this.options.record(node) !== undefined)
        this.deleted.delete(node);
  }
}
