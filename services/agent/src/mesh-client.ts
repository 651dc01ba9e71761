/**
 * The agent's side of the control plane: asking the scheduler for plans, announcing chunks in batches,
 * and heartbeating to discovery. Every call checks that NATS is usable first, so a dead control plane
 * costs nothing but a fallback to the registry.
 */
import { jetstream } from '@nats-io/jetstream';
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import {
  type Assignment,
  decode,
  encode,
  isShoalError,
  type Logger,
  type MeshConnection,
  type NodeRecord,
  type ScheduleRequest,
  scheduleReply,
  ShoalError,
  subjects,
} from '@shoal/mesh';
import type { AgentMetrics } from './metrics.js';
import { afterPendingReads } from './pending-reads.js';
import type { ChunkStore } from './store.js';

export interface Plan {
  chunkSize: number;
  assignments: Assignment[];
}

export interface MeshClientOptions {
  nodeId: string;
  schedulerTimeoutMs: number;
  announceIntervalMs: number;
  heartbeatIntervalMs: number;
  self: () => Omit<NodeRecord, 'seenAt' | 'sentAt'>;
  /**
   * Whether this node serves peers (peer.share); read at every announcement, since it can change at run
   * time. While false, nothing is announced (heartbeats still go out), so no scheduler plans this node as
   * a parent. Unset: true.
   */
  share?: () => boolean;
}

/**
 * What is owed to the mesh for one blob: a withdrawal (sent first) and/or a fresh snapshot. A snapshot
 * queued after a withdrawal never cancels it, so an invalid manifest is always dropped before this
 * node's corrected holdings are announced.
 */
interface PendingAnnounce {
  hashes: Record<string, string>;
  withdraw: boolean;
  invalid: boolean;
  snapshot: boolean;
}

export class MeshClient {
  private seq = Date.now() * 1000;
  private readonly pending = new Map<string, PendingAnnounce>();
  private announceTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private flushing = false;
  /** A flush was asked for while one was running: it runs again once that one is over. */
  private flushAgain = false;

  constructor(
    private readonly mesh: MeshConnection,
    private readonly store: ChunkStore,
    private readonly options: MeshClientOptions,
    private readonly metrics: AgentMetrics,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.announceTimer = setInterval(() => void this.flush(), this.options.announceIntervalMs);
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.options.heartbeatIntervalMs);
    // After every (re)connect, tell the mesh who we are and everything we hold: the index may have been
    // rebuilt or may have dropped us while we were away.
    this.mesh.onConnect(() => {
      this.heartbeat();
      this.announceAll();
      void this.flush();
    });
  }

  private get sharing(): boolean {
    return this.options.share?.() ?? true;
  }

  /** Queues a snapshot of every blob held, with every chunk's hash. */
  private announceAll(): void {
    for (const [hex, stored] of this.store.all()) {
      this.markDirty(`sha256:${hex}`, Object.fromEntries([...stored.hashes].map(([i, h]) => [String(i), h])));
    }
  }

  /**
   * Follows a change of peer.share at run time: when this node stops sharing, every blob it holds is
   * withdrawn at once (the scheduler stops planning it as a parent); when it starts again, everything it
   * holds is announced.
   */
  shareChanged(share: boolean): void {
    if (share) {
      this.announceAll();
    } else {
      this.pending.clear();
      for (const [hex] of this.store.all()) this.queueWithdraw(`sha256:${hex}`, false);
    }
    this.flushNow();
  }

  get usable(): boolean {
    return this.mesh.connection() !== undefined;
  }

  /**
   * Asks the scheduler for sources of `need`; throws SHOAL_ERR_MESH_UNAVAILABLE when it cannot answer
   * (see isScheduleTimeout).
   */
  async plan(request: Omit<ScheduleRequest, 'v' | 'node'>): Promise<Plan> {
    const nc = this.mesh.connection();
    if (!nc) throw new ShoalError('SHOAL_ERR_MESH_UNAVAILABLE', 'nats is not connected');
    const timer = this.metrics.scheduleDuration.startTimer();
    let msg;
    try {
      msg = await requestWithin(
        nc,
        subjects.schedule,
        encode({ v: 1, node: this.options.nodeId, ...request }),
        this.options.schedulerTimeoutMs,
      );
    } catch (cause) {
      const text = cause instanceof Error ? cause.message : String(cause);
      const [outcome, reason] = /no responders/i.test(text)
        ? ['no_scheduler', 'no scheduler']
        : /timeout/i.test(text)
          ? ['timeout', 'scheduler timeout']
          : ['error', text];
      timer({ outcome });
      throw new ShoalError('SHOAL_ERR_MESH_UNAVAILABLE', reason, { cause, details: { outcome } });
    }
    const reply = decode(scheduleReply, msg.data, 'schedule reply');
    timer({ outcome: reply.ok ? 'ok' : 'refused' });
    if (!reply.ok)
      throw new ShoalError('SHOAL_ERR_MESH_UNAVAILABLE', `scheduler refused: ${reply.error.message}`);
    return { chunkSize: reply.chunkSize, assignments: reply.assignments };
  }

  /** Queues an announcement of the blob's current chunks; `hashes` are origin-fetched chunk hashes. */
  markDirty(blob: string, hashes?: Record<string, string>): void {
    if (!this.sharing) return;
    const entry = this.pending.get(blob) ?? { hashes: {}, withdraw: false, invalid: false, snapshot: false };
    entry.snapshot = true;
    if (hashes) Object.assign(entry.hashes, hashes);
    this.pending.set(blob, entry);
  }

  /**
   * Withdraws this node's copy of a blob from the mesh. `now`: published at once rather than with the
   * next batch (an evicted blob must stop being planned before a peer asks for it).
   */
  withdraw(blob: string, invalid: boolean, options: { now?: boolean } = {}): void {
    // A node that does not share announced nothing (and withdrew everything when it stopped sharing).
    if (!this.sharing) return;
    this.queueWithdraw(blob, invalid);
    if (options.now) this.flushNow();
  }

  /** Starts a flush now, or right after the one running. */
  private flushNow(): void {
    if (this.flushing) this.flushAgain = true;
    else void this.flush();
  }

  private queueWithdraw(blob: string, invalid: boolean): void {
    const entry = this.pending.get(blob);
    this.pending.set(blob, {
      hashes: {},
      withdraw: true,
      invalid: invalid || (entry?.invalid ?? false),
      snapshot: false,
    });
  }

  /** Publishes every pending announcement; on failure they stay pending for the next tick. */
  async flush(): Promise<void> {
    if (this.flushing || this.pending.size === 0) return;
    const nc = this.mesh.connection();
    if (!nc) return;
    this.flushing = true;
    const js = jetstream(nc, { timeout: 2_000 });
    try {
      for (const [blob, entry] of [...this.pending]) {
        this.pending.delete(blob);
        const hex = blob.slice('sha256:'.length);
        const messages: unknown[] = [];
        if (entry.withdraw) {
          messages.push({
            type: 'withdraw',
            node: this.options.nodeId,
            blob,
            seq: ++this.seq,
            invalid: entry.invalid,
          });
        }
        const stored = this.store.get(hex);
        if (entry.snapshot && stored) {
          messages.push({
            type: 'chunks',
            node: this.options.nodeId,
            blob,
            size: stored.meta.size,
            chunkSize: stored.meta.chunkSize,
            seq: ++this.seq,
            have: stored.have.toBase64(),
            ...(Object.keys(entry.hashes).length ? { hashes: entry.hashes } : {}),
            complete: stored.complete,
          });
        } else if (entry.snapshot && !entry.withdraw) {
          messages.push({ type: 'withdraw', node: this.options.nodeId, blob, seq: ++this.seq });
        }
        let sent = 0;
        try {
          for (const message of messages) {
            await js.publish(subjects.announce(this.options.nodeId), encode(message));
            sent++;
            this.metrics.announcements.inc({ outcome: 'published' });
          }
        } catch (err) {
          this.metrics.announcements.inc({ outcome: 'failed' });
          // What was not sent is owed again, merged with anything newer queued meanwhile.
          const owed: PendingAnnounce =
            sent > 0 && entry.withdraw ? { ...entry, withdraw: false, invalid: false } : { ...entry };
          const newer = this.pending.get(blob);
          if (newer) {
            if (newer.withdraw) owed.snapshot = false;
            this.pending.set(blob, {
              hashes: { ...owed.hashes, ...newer.hashes },
              withdraw: owed.withdraw || newer.withdraw,
              invalid: owed.invalid || newer.invalid,
              snapshot: newer.snapshot || owed.snapshot,
            });
          } else {
            this.pending.set(blob, owed);
          }
          this.log.debug(
            { err: isShoalError(err) ? err.message : String(err) },
            'announce failed; will retry',
          );
          break;
        }
      }
    } finally {
      this.flushing = false;
    }
    if (this.flushAgain) {
      this.flushAgain = false;
      await this.flush();
    }
  }

  heartbeat(): void {
    const nc = this.mesh.connection();
    if (!nc) return;
    const now = Date.now();
    nc.publish(
      subjects.heartbeat(this.options.nodeId),
      encode({
        ...this.options.self(),
        sentAt: now,
        seenAt: now,
        heartbeatMs: this.options.heartbeatIntervalMs,
      }),
    );
  }

  async leave(): Promise<void> {
    const nc = this.mesh.connection();
    if (!nc) return;
    nc.publish(subjects.leave(this.options.nodeId), encode({ node: this.options.nodeId, at: Date.now() }));
    await nc.flush().catch(() => undefined);
  }

  async stop(): Promise<void> {
    clearInterval(this.announceTimer);
    clearInterval(this.heartbeatTimer);
    await this.flush();
    await this.leave();
  }
}

/**
 * How much longer than the caller's timeout NATS keeps a request open. Its own timeout fires as early as
 * ours after a hold-up and forgets the request before the reply is read, so it comes well after: it only
 * ends the bookkeeping of a request nobody answered.
 */
const NATS_BACKSTOP_MS = 30_000;

/**
 * A NATS request that times out after `timeoutMs`, judged after this turn's reads (see
 * afterPendingReads): a reply that came while this process was held up is taken, not counted as a
 * scheduler that did not answer. A timeout rejects with an error whose message says TIMEOUT, as NATS's
 * does.
 */
export function requestWithin(
  nc: NatsConnection,
  subject: string,
  data: Uint8Array,
  timeoutMs: number,
): Promise<Msg> {
  return new Promise<Msg>((resolve, reject) => {
    let over = false;
    const settle = (done: () => void) => {
      if (over) return;
      over = true;
      clearTimeout(timer);
      done();
    };
    const timer = setTimeout(
      () =>
        afterPendingReads(() =>
          settle(() => reject(new Error(`TIMEOUT: no reply on ${subject} within ${timeoutMs} ms`))),
        ),
      timeoutMs,
    );
    let reply: Promise<Msg>;
    try {
      reply = nc.request(subject, data, { timeout: timeoutMs + NATS_BACKSTOP_MS });
    } catch (err) {
      settle(() => reject(err instanceof Error ? err : new Error(String(err))));
      return;
    }
    reply.then(
      (msg) => settle(() => resolve(msg)),
      (err: unknown) => settle(() => reject(err instanceof Error ? err : new Error(String(err)))),
    );
  });
}

/** Whether `plan` failed because no scheduler answered within scheduler.timeout (rather than none being there). */
export function isScheduleTimeout(err: unknown): boolean {
  return isShoalError(err) && err.details?.outcome === 'timeout';
}
