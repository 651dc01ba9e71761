/**
 * Limiters for the agent's transfers: a token bucket for bytes per second (uploads to peers, downloads)
 * and a concurrency limit per key (uploads per peer).
 */

export interface TokenBucketStats {
  /** Bytes let through since the bucket was created. */
  passedBytes: number;
  /** Of those, the bytes of requests that had to wait. */
  throttledBytes: number;
  /** Total time requests waited, in milliseconds. */
  waitMs: number;
  /** Requests waiting now, and their bytes. */
  waiting: number;
  waitingBytes: number;
}

export interface TokenBucketOptions {
  /** A monotonic clock in milliseconds. */
  now?: () => number;
}

interface Waiter {
  bytes: number;
  since: number;
  resolve: () => void;
  reject: (reason: Error) => void;
  cleanup: (() => void) | undefined;
}

/** The reason an aborted signal gives, as an Error (signal.abort() gives an AbortError DOMException). */
function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  return reason instanceof Error ? reason : new Error('aborted', { cause: reason });
}

function checkRate(rate: number, burst: number): void {
  if (!(rate >= 0) || !Number.isFinite(rate)) throw new RangeError('the rate must be 0 or more bytes/s');
  if (rate > 0 && (!(burst > 0) || !Number.isFinite(burst))) {
    throw new RangeError('the burst must be more than 0 bytes');
  }
}

/**
 * Lets `rate` bytes per second through, with up to `burst` bytes at once after a quiet spell. Requests
 * are served strictly in order of arrival, so a stream of small requests cannot starve a large one. A
 * request larger than the burst waits for the bucket to fill to its size: while it is first in line the
 * bucket may hold more than `burst`, so it waits (size − tokens) / rate, in proportion to its size.
 * Rate 0 lets everything through at once.
 *
 * Timers fire late by a millisecond or so; the tokens that accrue meanwhile are kept (up to the burst),
 * so lateness does not lower the rate as long as the burst is a few requests' worth.
 */
export class TokenBucket {
  private rate: number;
  private burst: number;
  private tokens: number;
  /** When `tokens` was last brought up to date. */
  private last: number;
  private readonly queue: Waiter[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;
  private passedBytes = 0;
  private throttledBytes = 0;
  private waitMs = 0;

  /**
   * @param rate bytes per second; 0: unlimited.
   * @param burst the most bytes let through at once after a quiet spell (the bucket's size).
   */
  constructor(rate: number, burst: number, options: TokenBucketOptions = {}) {
    checkRate(rate, burst);
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst;
    this.now = options.now ?? (() => performance.now());
    this.last = this.now();
  }

  /**
   * Resolves when `bytes` may pass. Rejects with the signal's reason if it is aborted first; the bytes
   * are then not counted, and the requests behind move up.
   */
  take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (!(bytes >= 0) || !Number.isFinite(bytes)) {
      return Promise.reject(new RangeError('a request must be 0 or more bytes'));
    }
    if (signal?.aborted) return Promise.reject(abortError(signal));
    if (this.rate === 0) {
      this.passedBytes += bytes;
      return Promise.resolve();
    }
    const now = this.now();
    this.refill(now);
    if (this.queue.length === 0 && this.tokens >= bytes) {
      this.tokens -= bytes;
      this.passedBytes += bytes;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { bytes, since: now, resolve, reject, cleanup: undefined };
      if (signal) {
        const onAbort = () => this.abandon(waiter, abortError(signal));
        signal.addEventListener('abort', onAbort, { once: true });
        waiter.cleanup = () => signal.removeEventListener('abort', onAbort);
      }
      this.queue.push(waiter);
      if (this.queue.length === 1) this.pump();
    });
  }

  /**
   * Changes the rate and burst at run time. Waiting requests are re-timed at once: tokens accrued so far
   * are kept (up to the new burst), and the next request's wait is computed at the new rate. Rate 0 lets
   * every waiting request through.
   */
  setRate(rate: number, burst: number): void {
    checkRate(rate, burst);
    const now = this.now();
    if (this.rate > 0) this.refill(now);
    else this.tokens = burst;
    this.rate = rate;
    this.burst = burst;
    this.last = now;
    this.tokens = Math.min(this.tokens, this.cap());
    this.pump();
  }

  get limit(): { rate: number; burst: number } {
    return { rate: this.rate, burst: this.burst };
  }

  stats(): TokenBucketStats {
    let waitingBytes = 0;
    for (const waiter of this.queue) waitingBytes += waiter.bytes;
    return {
      passedBytes: this.passedBytes,
      throttledBytes: this.throttledBytes,
      waitMs: this.waitMs,
      waiting: this.queue.length,
      waitingBytes,
    };
  }

  /** The most the bucket holds now: more than the burst only for a larger request first in line. */
  private cap(): number {
    return Math.max(this.burst, this.queue[0]?.bytes ?? 0);
  }

  private refill(now: number): void {
    if (now > this.last) {
      this.tokens = Math.min(this.cap(), this.tokens + ((now - this.last) * this.rate) / 1000);
      this.last = now;
    } else {
      this.tokens = Math.min(this.cap(), this.tokens);
    }
  }

  /** Lets through every request whose tokens are there, then sleeps until the next one's are. */
  private pump(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const now = this.now();
    if (this.rate > 0) this.refill(now);
    for (;;) {
      const head = this.queue[0];
      if (!head) return;
      if (this.rate > 0 && this.tokens < head.bytes) {
        const ms = ((head.bytes - this.tokens) * 1000) / this.rate;
        this.timer = setTimeout(() => this.pump(), Math.max(1, Math.ceil(ms)));
        return;
      }
      this.queue.shift();
      if (this.rate > 0) this.tokens -= head.bytes;
      head.cleanup?.();
      this.passedBytes += head.bytes;
      this.throttledBytes += head.bytes;
      this.waitMs += now - head.since;
      head.resolve();
    }
  }

  private abandon(waiter: Waiter, reason: Error): void {
    const at = this.queue.indexOf(waiter);
    if (at === -1) return;
    // Tokens accrued while it was first in line count at its cap; after it leaves, the next one's.
    if (this.rate > 0) this.refill(this.now());
    this.queue.splice(at, 1);
    waiter.cleanup?.();
    waiter.reject(reason);
    if (at === 0) this.pump();
  }
}

export interface ConcurrencyLimiterStats {
  /** Holders and waiters now, over every key. */
  active: number;
  waiting: number;
  /** Keys with a holder or a waiter. */
  keys: number;
  /** `tryAcquire` calls refused since the limiter was created. */
  refused: number;
}

interface KeyState {
  active: number;
  waiters: {
    resolve: (release: () => void) => void;
    reject: (reason: Error) => void;
    cleanup: (() => void) | undefined;
  }[];
}

/**
 * At most `max` holders per key at once (uploads per peer, say); 0: unlimited. Waiters are admitted in
 * order of arrival, and `tryAcquire` does not jump the queue.
 */
export class ConcurrencyLimiter {
  private readonly keys = new Map<string, KeyState>();
  private refused = 0;

  constructor(private max: number) {
    ConcurrencyLimiter.check(max);
  }

  private static check(max: number): void {
    if (!Number.isSafeInteger(max) || max < 0)
      throw new RangeError('the limit must be a whole number, 0 or more');
  }

  /** A release function if a slot of `key` is free now (and nobody is waiting for one); otherwise undefined. */
  tryAcquire(key: string): (() => void) | undefined {
    const state = this.keys.get(key);
    if (state && (state.waiters.length > 0 || !this.free(state))) {
      this.refused++;
      return undefined;
    }
    return this.grant(key, state);
  }

  /** Resolves with a release function once a slot of `key` is free; rejects if the signal aborts first. */
  acquire(key: string, signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const state = this.keys.get(key);
    if (!state || (state.waiters.length === 0 && this.free(state))) {
      return Promise.resolve(this.grant(key, state));
    }
    return new Promise((resolve, reject) => {
      const waiter: KeyState['waiters'][number] = { resolve, reject, cleanup: undefined };
      if (signal) {
        const onAbort = () => {
          const at = state.waiters.indexOf(waiter);
          if (at === -1) return;
          state.waiters.splice(at, 1);
          this.forgetIfIdle(key, state);
          reject(abortError(signal));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        waiter.cleanup = () => signal.removeEventListener('abort', onAbort);
      }
      state.waiters.push(waiter);
    });
  }

  /** Changes the limit at run time: a higher one admits waiters at once, a lower one lets holders finish. */
  setMax(max: number): void {
    ConcurrencyLimiter.check(max);
    this.max = max;
    for (const [key, state] of this.keys) this.admit(key, state);
  }

  get limit(): number {
    return this.max;
  }

  /** Holders of `key` now. */
  active(key: string): number {
    return this.keys.get(key)?.active ?? 0;
  }

  stats(): ConcurrencyLimiterStats {
    let active = 0;
    let waiting = 0;
    for (const state of this.keys.values()) {
      active += state.active;
      waiting += state.waiters.length;
    }
    return { active, waiting, keys: this.keys.size, refused: this.refused };
  }

  private free(state: KeyState): boolean {
    return this.max === 0 || state.active < this.max;
  }

  private grant(key: string, existing: KeyState | undefined): () => void {
    let state = existing;
    if (!state) this.keys.set(key, (state = { active: 0, waiters: [] }));
    state.active++;
    let released = false;
    const held = state;
    return () => {
      if (released) return;
      released = true;
      held.active--;
      this.admit(key, held);
    };
  }

  private admit(key: string, state: KeyState): void {
    while (state.waiters.length > 0 && this.free(state)) {
      const waiter = state.waiters.shift();
      waiter?.cleanup?.();
      waiter?.resolve(this.grant(key, state));
    }
    this.forgetIfIdle(key, state);
  }

  private forgetIfIdle(key: string, state: KeyState): void {
    if (state.active === 0 && state.waiters.length === 0 && this.keys.get(key) === state)
      this.keys.delete(key);
  }
}

/**
 * Bytes of chunk buffers all downloads may hold at once. A download asks how many of its chunks it may
 * start (`slots`), reserves each one's bytes as it starts it and releases them when it ends. A download
 * with nothing in flight may always start one chunk, even past the budget, so a chunk larger than the
 * budget, or a budget spent by other downloads, never stops a download for good.
 */
export class ByteBudget {
  private usedBytes = 0;

  constructor(private readonly maxBytes: number) {
    if (!(maxBytes > 0) || !Number.isFinite(maxBytes))
      throw new RangeError('the budget must be more than 0 bytes');
  }

  get used(): number {
    return this.usedBytes;
  }

  get max(): number {
    return this.maxBytes;
  }

  /** How many chunks of `size` bytes a download holding `inflight` chunks may start now. */
  slots(size: number, inflight: number): number {
    const fit = Math.floor(Math.max(0, this.maxBytes - this.usedBytes) / Math.max(1, size));
    return inflight === 0 ? Math.max(1, fit) : fit;
  }

  /** How many chunks of `size` bytes fit in the whole budget: one download's most at once. */
  capacity(size: number): number {
    return Math.max(1, Math.floor(this.maxBytes / Math.max(1, size)));
  }

  /** Takes `bytes` and returns the function that gives them back (once). */
  reserve(bytes: number): () => void {
    this.usedBytes += bytes;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.usedBytes -= bytes;
    };
  }
}
