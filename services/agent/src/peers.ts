/** Fetching chunks from other agents over HTTP, with keep-alive connections per peer. */
import { ShoalError } from '@shoal/mesh';
import { PeerHttp, PeerHttpError } from './peer-http.js';

export const peerChunkPath = (hex: string, index: number) => `/peer/v1/blobs/sha256/${hex}/chunks/${index}`;

export class PeerClient {
  private readonly http: PeerHttp;
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
    const check = () => {
      const allowed = this.timeoutMs + ((length * share.most) / this.minRate) * 1000;
      const left = allowed - (performance.now() - began);
      if (left <= 0) expired.abort(new Error(`chunk not in within ${Math.round(allowed)} ms`));
      else timer = setTimeout(check, left);
    };
    check();
    try {
      return await this.fetchWithin(url, into, expired.signal, slow);
    } finally {
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
