/** Fetching chunks from other agents over HTTP, with keep-alive connections per peer. */
import { ShoalError } from '@shoal/mesh';
import { PeerHttp, PeerHttpError } from './peer-http.js';
import { afterPendingReads } from './pending-reads.js';

export const peerChunkPath = (hex: string, index: number) => `/peer/v1/blobs/sha256/${hex}/chunks/${index}`;

/** How long a cap learned from a parent's busy answers holds after the last one. */
const BUSY_MEMORY_MS = 30_000;

interface ParentSlots {
  /** Fetches from this parent running now, over every download. */
  inflight: number;
  /** The most this node runs at once from this parent, learned from its busy answers. */
  cap: number;
  /** When the last busy answer came (performance.now()). */
  busyAt: number;
  waiting: (() => void)[];
}

export class PeerClient {
  private readonly http: PeerHttp;
  /** Per parent URL origin: fetches in flight, and the cap its busy answers taught. */
  private readonly parents = new Map<string, ParentSlots>();
  /**
   * One entry per chunk fetch in flight from this node, over every download (they share its link): the
   * most fetches that were in flight while it ran.
   */
  private readonly shares = new Set<{ most: number }>();

  /**
   * `timeoutMs`: for a peer to start answering, and between body bytes. `minRate`: the slowest rate
   * (bytes per second) tolerated from this node's peer transfers together; each transfer's deadline is
   * its chunk at its share of that rate, so a node running many fetches at once on a slow link does not
   * give up on parents that are merely sharing it.
   */
  constructor(
    private readonly timeoutMs: number,
    private readonly authorization: (() => string) | undefined,
    private readonly minRate: number,
  ) {
    this.http = new PeerHttp({ timeoutMs, keepAliveMs: 30_000, maxIdlePerPeer: 16 });
  }

  /**
   * Waits until this node may start another fetch from the parent at `baseUrl`, and returns the function
   * that ends it. A parent serves each peer a few chunks at once (`peer.uploadsPerPeer`) and answers 429
   * beyond that; once it has, this node keeps to what it was serving (over all downloads) and queues the
   * rest here rather than asking again and again. The cap is forgotten 30 s after the last busy answer,
   * in case the parent's limit was raised. Call before starting any clock on the transfer.
   */
  async slot(baseUrl: string): Promise<() => void> {
    const key = new URL(baseUrl).origin;
    let parent = this.parents.get(key);
    if (!parent) this.parents.set(key, (parent = { inflight: 0, cap: Infinity, busyAt: 0, waiting: [] }));
    const state = parent;
    if (state.cap !== Infinity && performance.now() - state.busyAt > BUSY_MEMORY_MS) state.cap = Infinity;
    while (state.inflight >= state.cap) await new Promise<void>((resolve) => state.waiting.push(resolve));
    state.inflight++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      state.inflight--;
      state.waiting.shift()?.();
      if (state.inflight === 0 && state.waiting.length === 0 && state.cap === Infinity)
        this.parents.delete(key);
    };
  }

  /** Learns from a busy answer: no more fetches at once from that parent than the others running now. */
  private busy(origin: string): void {
    const state = this.parents.get(origin);
    if (!state) return;
    state.cap = Math.max(1, Math.min(state.cap, state.inflight - 1));
    state.busyAt = performance.now();
  }

  /**
   * Fetches one chunk into `into`, which is exactly the chunk's length, and returns it; the caller
   * verifies it. Throws SHOAL_ERR_CHUNK_UNAVAILABLE when the peer lacks it,
   * fails, or misses the deadline. The caller aborts `slow` when it finds the peer far slower than the
   * others; the error then has `details.slow` set.
   */
  async fetchChunk(
    baseUrl: string,
    hex: string,
    index: number,
    into: Buffer,
    slow?: AbortSignal,
  ): Promise<Buffer> {
    const url = new URL(peerChunkPath(hex, index), baseUrl);
    const length = into.length;
    // Idle timeouts do not catch a peer that trickles bytes; a deadline for the whole chunk does, at this
    // transfer's share of minRate (the most fetches in flight while it ran), so one slow parent cannot
    // hold up an in-order stream for long.
    const share = { most: 0 };
    this.shares.add(share);
    for (const other of this.shares) other.most = Math.max(other.most, this.shares.size);
    const began = performance.now();
    const expired = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    let over = false;
    const check = () => {
      const allowed = this.timeoutMs + ((length * share.most) / this.minRate) * 1000;
      const left = allowed - (performance.now() - began);
      if (left > 0) timer = setTimeout(check, left);
      else
        afterPendingReads(() => {
          if (!over) expired.abort(new Error(`chunk not in within ${Math.round(allowed)} ms`));
        });
    };
    check();
    try {
      return await this.fetchWithin(url, into, expired.signal, slow);
    } finally {
      over = true;
      clearTimeout(timer);
      this.shares.delete(share);
    }
  }

  private async fetchWithin(
    url: URL,
    out: Buffer,
    timeout: AbortSignal,
    slow?: AbortSignal,
  ): Promise<Buffer> {
    const signal = slow ? AbortSignal.any([timeout, slow]) : timeout;
    const failed = (cause: unknown) =>
      slow?.aborted && !timeout.aborted
        ? new ShoalError(
            'SHOAL_ERR_CHUNK_UNAVAILABLE',
            `peer ${url.origin} was slow: ${String(slow.reason instanceof Error ? slow.reason.message : slow.reason)}`,
            { cause, details: { slow: true } },
          )
        : new ShoalError('SHOAL_ERR_CHUNK_UNAVAILABLE', `peer ${url.origin}: ${(cause as Error).message}`, {
            cause,
            // Not even a connection: the scheduler is told, so that it stops counting on the peer for
            // every node (and frees the registry leases it holds), not only for this one.
            ...(cause instanceof PeerHttpError && cause.failure === 'connect'
              ? { details: { unreachable: true } }
              : // Connected, then nothing for peer.timeout: a peer held up by its own node looks the same.
                isSilence(cause)
                ? { details: { silent: true } }
                : {}),
          });
    let status: number;
    try {
      status = await this.http.get(
        url,
        url.pathname,
        this.authorization ? { authorization: this.authorization() } : {},
        out,
        signal,
      );
    } catch (cause) {
      if (cause instanceof PeerHttpError && cause.failure === 'length')
        throw new ShoalError('SHOAL_ERR_CHUNK_CORRUPT', `peer ${url.origin}: ${cause.message}`, { cause });
      throw failed(cause);
    }
    if (status === 429) this.busy(url.origin);
    if (status !== 200) {
      // 429: the peer is serving this node as many chunks as it allows one peer; it is fine, only busy.
      throw new ShoalError('SHOAL_ERR_CHUNK_UNAVAILABLE', `peer ${url.origin} answered ${status}`, {
        details: { status, ...(status === 429 ? { busy: true } : {}) },
      });
    }
    return out;
  }

  close(): Promise<void> {
    this.http.close();
    return Promise.resolve();
  }
}

/** Whether a peer fetch failed because the connected peer sent nothing for the idle timeout. */
function isSilence(cause: unknown): boolean {
  return cause instanceof PeerHttpError && cause.failure === 'transport' && cause.timedOut;
}
