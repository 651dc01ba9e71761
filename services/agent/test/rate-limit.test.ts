import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ByteBudget, ConcurrencyLimiter, TokenBucket } from '../src/rate-limit.js';

const KiB = 1024;

describe('token bucket', () => {
  it('holds its rate within 5% with real timers and several callers', async () => {
    const rate = 20_000_000;
    const piece = 64 * KiB;
    const bucket = new TokenBucket(rate, 256 * KiB);
    const warmupMs = 300;
    const windowMs = 2_000;
    const began = performance.now();
    const windowStart = began + warmupMs;
    const windowEnd = windowStart + windowMs;
    let inWindow = 0;
    const perCaller = [0, 0, 0, 0];
    // Each caller takes pieces back to back until the window is over; bytes are counted when let through.
    const caller = async (id: number) => {
      while (performance.now() < windowEnd) {
        await bucket.take(piece);
        const at = performance.now();
        if (at >= windowStart && at < windowEnd) {
          inWindow += piece;
          perCaller[id]! += piece;
        }
      }
    };
    await Promise.all(perCaller.map((_, id) => caller(id)));
    const measured = inWindow / (windowMs / 1000);
    const label = `${(measured / 1e6).toFixed(3)} MB/s measured at ${rate / 1e6} MB/s`;
    expect(measured, label).toBeGreaterThan(rate * 0.95);
    expect(measured, label).toBeLessThan(rate * 1.05);
    // Served in turn, the callers get equal shares.
    const mean = inWindow / perCaller.length;
    for (const bytes of perCaller) expect(Math.abs(bytes - mean)).toBeLessThan(mean * 0.05);
    expect(bucket.stats().throttledBytes).toBeGreaterThan(0);
  });

  describe('with a fake clock', () => {
    beforeEach(() => {
      vi.useFakeTimers();
    });
    afterEach(() => {
      vi.useRealTimers();
    });

    const bucketOf = (rate: number, burst: number) => new TokenBucket(rate, burst, { now: () => Date.now() });

    /** Collects when each promise resolved, in ms since the start. */
    const timeline = () => {
      const start = Date.now();
      const done: Record<string, number> = {};
      const track = (name: string, promise: Promise<void>) =>
        void promise.then(() => {
          done[name] = Date.now() - start;
        });
      return { done, track };
    };

    it('lets a burst through at once, then the rate', async () => {
      const bucket = bucketOf(1000, 500);
      const { done, track } = timeline();
      track('a', bucket.take(500));
      track('b', bucket.take(100));
      track('c', bucket.take(100));
      await vi.advanceTimersByTimeAsync(1000);
      expect(done).toEqual({ a: 0, b: 100, c: 200 });
      expect(bucket.stats()).toEqual({
        passedBytes: 700,
        throttledBytes: 200,
        waitMs: 300,
        waiting: 0,
        waitingBytes: 0,
      });
    });

    it('makes a request larger than the burst wait in proportion, without starving it', async () => {
      const bucket = bucketOf(1000, 100);
      const { done, track } = timeline();
      track('small1', bucket.take(100));
      track('big', bucket.take(1000));
      // Small requests keep coming after the big one: they queue behind it.
      for (let i = 0; i < 10; i++) track(`later${i}`, bucket.take(10));
      await vi.advanceTimersByTimeAsync(3000);
      expect(done.small1).toBe(0);
      // 1000 bytes at 1000 bytes/s, from an empty bucket.
      expect(done.big).toBe(1000);
      for (let i = 0; i < 10; i++) expect(done[`later${i}`]).toBe(1000 + 10 * (i + 1));
    });

    it('serves waiters in order of arrival, in equal shares', async () => {
      const bucket = bucketOf(100 * KiB, 64 * KiB);
      const shares = [0, 0, 0];
      let running = true;
      const caller = async (id: number) => {
        while (running) {
          await bucket.take(4 * KiB);
          shares[id]! += 4 * KiB;
        }
      };
      const callers = shares.map((_, id) => caller(id));
      await vi.advanceTimersByTimeAsync(10_000);
      running = false;
      await vi.advanceTimersByTimeAsync(1_000);
      await Promise.all(callers);
      const total = shares.reduce((x, y) => x + y, 0);
      for (const share of shares) expect(Math.abs(share - total / 3)).toBeLessThanOrEqual(4 * KiB);
    });

    it('re-times waiters at once when the rate changes', async () => {
      const bucket = bucketOf(1000, 100);
      const { done, track } = timeline();
      track('drain', bucket.take(100));
      track('a', bucket.take(1000));
      await vi.advanceTimersByTimeAsync(500);
      // Half of it has accrued; the other 500 bytes come at 10 000 bytes/s.
      bucket.setRate(10_000, 100);
      track('b', bucket.take(100));
      await vi.advanceTimersByTimeAsync(1000);
      expect(done.a).toBe(550);
      expect(done.b).toBe(560);
      // Slower again: a full bucket of 100 bytes, then 100 bytes/s.
      bucket.setRate(100, 100);
      await vi.advanceTimersByTimeAsync(5000);
      track('c', bucket.take(100));
      track('d', bucket.take(100));
      await vi.advanceTimersByTimeAsync(5000);
      expect(done.c).toBe(6500);
      expect(done.d).toBe(7500);
      expect(bucket.limit).toEqual({ rate: 100, burst: 100 });
    });

    it('lets everything through when the rate is 0, including those waiting', async () => {
      const bucket = bucketOf(0, 0);
      const { done, track } = timeline();
      track('a', bucket.take(10_000_000));
      await vi.advanceTimersByTimeAsync(0);
      expect(done.a).toBe(0);
      bucket.setRate(100, 100);
      track('b', bucket.take(100));
      track('c', bucket.take(1000));
      await vi.advanceTimersByTimeAsync(1);
      bucket.setRate(0, 0);
      await vi.advanceTimersByTimeAsync(0);
      expect(done).toEqual({ a: 0, b: 0, c: 1 });
      expect(bucket.stats().passedBytes).toBe(10_001_100);
    });

    it('gives up a waiting request when its signal aborts, and moves the next one up', async () => {
      const bucket = bucketOf(1000, 100);
      const { done, track } = timeline();
      track('drain', bucket.take(100));
      const controller = new AbortController();
      const aborted = bucket.take(1000, controller.signal);
      track('next', bucket.take(100));
      await vi.advanceTimersByTimeAsync(200);
      controller.abort();
      await expect(aborted).rejects.toThrow(/abort/i);
      await vi.advanceTimersByTimeAsync(1000);
      // The tokens accrued while the aborted one waited go to the next, up to the burst.
      expect(done.next).toBe(200);
      expect(bucket.stats()).toMatchObject({ passedBytes: 200, waiting: 0 });
      await expect(bucket.take(1, AbortSignal.abort())).rejects.toThrow(/abort/i);
      await expect(bucket.take(-1)).rejects.toThrow(RangeError);
    });
  });
});

describe('concurrency limiter', () => {
  it('admits up to the limit per key and refuses the rest with tryAcquire', () => {
    const limiter = new ConcurrencyLimiter(2);
    const first = limiter.tryAcquire('peer-a');
    const second = limiter.tryAcquire('peer-a');
    expect(first && second).toBeTruthy();
    expect(limiter.tryAcquire('peer-a')).toBeUndefined();
    expect(limiter.tryAcquire('peer-b')).toBeDefined();
    first?.();
    first?.();
    expect(limiter.active('peer-a')).toBe(1);
    expect(limiter.tryAcquire('peer-a')).toBeDefined();
    expect(limiter.stats()).toEqual({ active: 3, waiting: 0, keys: 2, refused: 1 });
  });

  it('queues acquire in order of arrival, and tryAcquire does not jump the queue', async () => {
    const limiter = new ConcurrencyLimiter(1);
    const order: string[] = [];
    const release = await limiter.acquire('k');
    const waiting = ['x', 'y'].map((name) =>
      limiter.acquire('k').then((done) => {
        order.push(name);
        return done;
      }),
    );
    release();
    expect(limiter.tryAcquire('k')).toBeUndefined();
    const x = await waiting[0]!;
    expect(order).toEqual(['x']);
    x();
    (await waiting[1]!)();
    expect(order).toEqual(['x', 'y']);
    expect(limiter.stats()).toEqual({ active: 0, waiting: 0, keys: 0, refused: 1 });
  });

  it('changes its limit at run time', async () => {
    const limiter = new ConcurrencyLimiter(1);
    const held = await limiter.acquire('k');
    let admitted = 0;
    const waiters = [1, 2, 3].map(() => limiter.acquire('k').then((release) => (admitted++, release)));
    limiter.setMax(3);
    await Promise.resolve();
    expect(admitted).toBe(2);
    // Lowered, the holders keep their slots; the last waiter gets in only once every holder has left.
    limiter.setMax(1);
    held();
    const releases = await Promise.all(waiters.slice(0, 2));
    for (const release of releases) release();
    await waiters[2]!;
    expect(admitted).toBe(3);
    expect(limiter.active('k')).toBe(1);
    limiter.setMax(0);
    expect(limiter.tryAcquire('k')).toBeDefined();
  });

  it('gives up a waiter whose signal aborts', async () => {
    const limiter = new ConcurrencyLimiter(1);
    const release = limiter.tryAcquire('k');
    const controller = new AbortController();
    const waiting = limiter.acquire('k', controller.signal);
    controller.abort();
    await expect(waiting).rejects.toThrow(/abort/i);
    expect(limiter.stats()).toMatchObject({ waiting: 0, active: 1 });
    release?.();
    expect(limiter.stats()).toMatchObject({ waiting: 0, active: 0, keys: 0 });
  });
});

describe('byte budget', () => {
  const MiB = 1024 * 1024;

  it('fits as many chunks as the free bytes hold, and one for a download with none in flight', () => {
    const budget = new ByteBudget(128 * MiB);
    expect(budget.capacity(32 * MiB)).toBe(4);
    expect(budget.capacity(1 * MiB)).toBe(128);
    expect(budget.capacity(256 * MiB)).toBe(1);
    const held = [1, 2, 3].map(() => budget.reserve(32 * MiB));
    expect(budget.slots(32 * MiB, 3)).toBe(1);
    const fourth = budget.reserve(32 * MiB);
    expect(budget.slots(32 * MiB, 4)).toBe(0);
    // Another download, with nothing in flight, may still start one chunk.
    expect(budget.slots(32 * MiB, 0)).toBe(1);
    fourth();
    fourth();
    expect(budget.used).toBe(96 * MiB);
    for (const release of held) release();
    expect(budget.used).toBe(0);
  });

  it('refuses a budget of nothing', () => {
    expect(() => new ByteBudget(0)).toThrow(RangeError);
  });
});
