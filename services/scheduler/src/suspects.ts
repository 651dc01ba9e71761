/**
 * Nodes the mesh has lost before discovery has: a node whose agent was killed or whose host went down
 * sends no more heartbeats, but discovery removes it only after `node.ttl` (15 s), and its registry leases
 * hold for `origin.lease` (10 s). Agents that could not even open a connection to a peer say so in their
 * schedule requests (`unreachable`). From the first such report, and until the node is heard from again,
 * its leases are free for others to take: the worst a wrong report costs is a second registry fetch of
 * the chunks it was fetching. Once `quorum` different nodes have reported it, the node is also
 * **suspected**: offered to nobody as a parent, so that each node does not have to find out for itself
 * (a dead host can take a connect timeout to find). A heartbeat clears both; reports start over from
 * there.
 *
 * A node whose record was deleted (it left, or discovery timed it out) is gone too, until it comes back.
 */
import type { NodeRecord } from '@shoal/mesh';

export interface SuspectsOptions {
  /** Distinct reporters needed to suspect a node. */
  quorum: number;
  /** How long reports are kept without reaching the quorum, and how long a deletion is remembered. */
  forgetMs: number;
  /** The node's current record, as the scheduler's index has it. */
  record: (node: string) => NodeRecord | undefined;
  /** Called once when a node becomes suspected. */
  onSuspected?: (node: string, reporters: string[]) => void;
}

interface Reports {
  /** The node's last heartbeat (discovery's receipt time) when the first report came: none since. */
  seenAt: number | undefined;
  reporters: Set<string>;
  firstAt: number;
}

/** Bound on the nodes tracked at once, against a flood of made-up reports. */
const MAX_TRACKED = 10_000;
/** Bound on the reporters kept per node: the quorum is small. */
const MAX_REPORTERS = 16;

export class Suspects {
  private readonly reports = new Map<string, Reports>();
  /** Nodes whose record was deleted, and when. */
  private readonly deleted = new Map<string, number>();
  /** When the maps were last pruned: at most once a second, so a flood costs no scan per report. */
  private prunedAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly options: SuspectsOptions) {}

  /** `reporter` could not connect to any of `nodes`. */
  report(reporter: string, nodes: readonly string[], now: number): void {
    for (const node of nodes) {
      if (node === reporter) continue;
      const seenAt = this.options.record(node)?.seenAt;
      let entry = this.reports.get(node);
      if (entry && (entry.seenAt !== seenAt || now - entry.firstAt > this.options.forgetMs)) {
        // Heard from since the reports began, or they are old: start over.
        this.reports.delete(node);
        entry = undefined;
      }
      if (!entry) {
        if (this.reports.size >= MAX_TRACKED) this.prune(now);
        if (this.reports.size >= MAX_TRACKED) continue;
        entry = { seenAt, reporters: new Set(), firstAt: now };
        this.reports.set(node, entry);
      }
      if (entry.reporters.has(reporter) || entry.reporters.size >= MAX_REPORTERS) continue;
      entry.reporters.add(reporter);
      if (entry.reporters.size === this.options.quorum)
        this.options.onSuspected?.(node, [...entry.reporters]);
    }
  }

  /** Whether `node` is suspected now: reported by the quorum and not heard from since. */
  suspected(node: string): boolean {
    const entry = this.reports.get(node);
    return (
      entry !== undefined &&
      entry.reporters.size >= this.options.quorum &&
      entry.seenAt === this.options.record(node)?.seenAt
    );
  }

  /**
   * Whether the leases `node` holds can no longer be counted on: some node could not connect to it since
   * its last heartbeat, or its record was deleted and has not come back.
   */
  gone(node: string): boolean {
    const entry = this.reports.get(node);
    if (entry !== undefined && entry.seenAt === this.options.record(node)?.seenAt) return true;
    return this.deleted.has(node) && this.options.record(node) === undefined;
  }

  /** The node's record was deleted from the node registry. */
  nodeDeleted(node: string, now: number): void {
    if (this.deleted.size >= MAX_TRACKED) this.prune(now);
    if (this.deleted.size < MAX_TRACKED) this.deleted.set(node, now);
  }

  /** Nodes suspected now. */
  count(): number {
    let n = 0;
    for (const node of this.reports.keys()) if (this.suspected(node)) n++;
    return n;
  }

  private prune(now: number): void {
    if (now - this.prunedAt < 1_000) return;
    this.prunedAt = now;
    for (const [node, entry] of this.reports)
      if (now - entry.firstAt > this.options.forgetMs && !this.suspected(node)) this.reports.delete(node);
    for (const [node, at] of this.deleted)
      if (now - at > this.options.forgetMs || this.options.record(node) !== undefined)
        this.deleted.delete(node);
  }
}
