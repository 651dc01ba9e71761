/**
 * Sending byte ranges of files to an HTTP response through a few buffers reused for the whole response.
 * Reading each chunk into a fresh buffer made the agent allocate its serving rate in large buffers
 * outside the V8 heap, and full garbage collections to free them took more CPU than the copying itself.
 * A buffer goes back to the pool only once the socket has taken its bytes (the write callback), so at
 * most POOL × PIECE bytes per response are held, and a slow client simply slows the reads. The buffers
 * are borrowed from the agent's buffer pool, and returned to it when the response is over, so a
 * response allocates nothing either.
 *
 * Chunks held in memory (the memory tier) are written straight from their buffer, in pieces of the same
 * size, with at most as many pieces queued on the socket as the file path has buffers. With a rate limiter,
 * every piece waits for its bytes before it is written; a client that leaves stops the wait.
 */
import { open } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import type { BufferPool } from './buffers.js';
import type { TokenBucket } from './rate-limit.js';

/**
 * Two 1 MiB buffers per response: one being read while the other drains. Measured on loopback, 256 KiB
 * pieces reached 0.7 of docker-registry's rate to one client; 1 MiB pieces match it, and a pool of two
 * does as well as four at half the memory (2 MiB per client).
 */
const PIECE = 1024 * 1024;
const POOL = 2;

export interface FileRange {
  path: string;
  /** Byte offsets within the file: [from, to). */
  from: number;
  to: number;
}

export class FileSender {
  private readonly free: Buffer[] = [];
  /** Buffers borrowed from the pool so far: free, being read into, or queued on the socket. */
  private borrowed = 0;
  private waiting: { resolve: (buffer: Buffer) => void; reject: (err: Error) => void } | undefined;
  private allFree: (() => void) | undefined;
  private failure: Error | undefined;
  private over = false;
  /** Pieces of in-memory chunks queued on the socket. */
  private queued = 0;
  private queueFreed: (() => void) | undefined;
  /** Aborted when the client leaves, so a wait for the rate limiter ends with it. */
  private readonly gone = new AbortController();

  constructor(
    private readonly res: ServerResponse,
    private readonly pool: BufferPool,
    private readonly limiter?: TokenBucket,
  ) {
    res.once('close', () => {
      if (!res.writableFinished) {
        this.failure ??= new Error('the client went away');
        const waiting = this.waiting;
        this.waiting = undefined;
        waiting?.reject(this.failure);
        this.gone.abort(this.failure);
        this.queueFreed?.();
        this.allFree?.();
      }
      this.release();
    });
  }

  /** Writes [from, to) of an in-memory chunk, which must not change; resolves once it is queued. */
  async sendBuffer(chunk: Buffer, from: number, to: number, onBytes: (count: number) => void): Promise<void> {
    for (let at = from; at < to;) {
      const piece = Math.min(PIECE, to - at);
      await this.limit(piece);
      while (this.queued >= POOL && !this.failure)
        await new Promise<void>((resolve) => (this.queueFreed = resolve));
      if (this.failure) throw this.failure;
      this.queued++;
      this.res.write(chunk.subarray(at, at + piece), (err) => {
        if (err) this.failure ??= err;
        this.queued--;
        const freed = this.queueFreed;
        this.queueFreed = undefined;
        freed?.();
        this.checkAllFree();
      });
      at += piece;
      onBytes(piece);
    }
  }

  private async limit(bytes: number): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.limiter) await this.limiter.take(bytes, this.gone.signal);
  }

  /** Writes [from, to) of the file; resolves once every byte is queued on the socket. */
  async send(range: FileRange, onBytes: (count: number) => void): Promise<void> {
    const handle = await open(range.path, 'r');
    try {
      for (let at = range.from; at < range.to;) {
        await this.limit(Math.min(PIECE, range.to - at));
        const buffer = await this.take();
        let bytesRead: number;
        try {
          ({ bytesRead } = await handle.read(buffer, 0, Math.min(PIECE, range.to - at), at));
          if (bytesRead === 0) throw new Error(`${range.path} ended at ${at}, before ${range.to}`);
        } catch (err) {
          this.give(buffer);
          throw err;
        }
        at += bytesRead;
        this.res.write(buffer.subarray(0, bytesRead), (err) => {
          if (err) this.failure ??= err;
          this.give(buffer);
        });
        onBytes(bytesRead);
      }
    } finally {
      await handle.close();
    }
  }

  /** Waits until the socket has taken everything written (every buffer is back), or the client left. */
  async flushed(): Promise<void> {
    if ((this.free.length < this.borrowed || this.queued > 0) && !this.failure)
      await new Promise<void>((resolve) => (this.allFree = resolve));
    if (this.failure) throw this.failure;
  }

  /**
   * Returns the buffers to the agent's pool once the response is over (the socket closed); one still
   * queued on the socket goes back when its write callback runs.
   */
  private release(): void {
    this.over = true;
    for (const buffer of this.free.splice(0)) this.pool.give(buffer);
  }

  private take(): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    const buffer = this.free.pop();
    if (buffer) return Promise.resolve(buffer);
    if (this.borrowed < POOL) {
      this.borrowed++;
      return Promise.resolve(this.pool.take(PIECE));
    }
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  private give(buffer: Buffer): void {
    if (this.over) {
      this.pool.give(buffer);
      return;
    }
    const waiting = this.waiting;
    if (waiting && !this.failure) {
      this.waiting = undefined;
      waiting.resolve(buffer);
      return;
    }
    this.free.push(buffer);
    this.checkAllFree();
  }

  private checkAllFree(): void {
    if (this.free.length === this.borrowed && this.queued === 0 && this.allFree) {
      const done = this.allFree;
      this.allFree = undefined;
      done();
    }
  }
}
