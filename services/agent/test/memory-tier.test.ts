import { describe, expect, it } from 'vitest';
import { BufferPool } from '../src/buffers.js';
import { MemoryTier } from '../src/memory-tier.js';

const a = 'a'.repeat(64);
const b = 'b'.repeat(64);

describe('memory tier', () => {
  it('keeps chunks within its budget, least recently used out first', () => {
    const tier = new MemoryTier(300);
    expect(tier.put(a, 0, Buffer.alloc(100, 1))).toBe(true);
    expect(tier.put(a, 1, Buffer.alloc(100, 2))).toBe(true);
    expect(tier.put(b, 0, Buffer.alloc(100, 3))).toBe(true);
    // a/0 is used again, so a/1 is the least recently used when room is needed.
    expect(tier.get(a, 0)?.[0]).toBe(1);
    expect(tier.put(b, 1, Buffer.alloc(100, 4))).toBe(true);
    expect(tier.has(a, 1)).toBe(false);
    expect([tier.has(a, 0), tier.has(b, 0), tier.has(b, 1)]).toEqual([true, true, true]);
    // A larger chunk pushes out as many as it needs.
    expect(tier.put(b, 2, Buffer.alloc(250, 5))).toBe(true);
    expect(tier.stats()).toEqual({ hits: 1, misses: 0, bytes: 250, entries: 1, evictions: 4, budget: 300 });
  });

  it('counts hits and misses', () => {
    const tier = new MemoryTier(1000);
    tier.put(a, 0, Buffer.alloc(10));
    expect(tier.get(a, 0)).toBeDefined();
    expect(tier.get(a, 0)).toBeDefined();
    expect(tier.get(a, 1)).toBeUndefined();
    expect(tier.get(b, 0)).toBeUndefined();
    expect(tier.stats()).toMatchObject({ hits: 2, misses: 2, bytes: 10, entries: 1 });
  });

  it('refuses a chunk larger than its budget without dropping the others', () => {
    const tier = new MemoryTier(100);
    tier.put(a, 0, Buffer.alloc(60));
    expect(tier.put(a, 1, Buffer.alloc(101))).toBe(false);
    expect(tier.has(a, 0)).toBe(true);
    expect(tier.stats()).toMatchObject({ bytes: 60, entries: 1, evictions: 0 });
  });

  it('drops every chunk of a blob', () => {
    const tier = new MemoryTier(1000);
    for (let i = 0; i < 3; i++) tier.put(a, i, Buffer.alloc(100));
    tier.put(b, 0, Buffer.alloc(100));
    expect(tier.drop(a)).toBe(3);
    expect(tier.drop(a)).toBe(0);
    expect([0, 1, 2].some((i) => tier.has(a, i))).toBe(false);
    expect(tier.has(b, 0)).toBe(true);
    expect(tier.stats()).toMatchObject({ bytes: 100, entries: 1, evictions: 0 });
    // A blob whose chunks were all evicted for room has nothing left to drop.
    tier.setBudget(0);
    expect(tier.drop(b)).toBe(0);
  });

  it('does nothing with a budget of 0', () => {
    const tier = new MemoryTier(0);
    expect(tier.put(a, 0, Buffer.alloc(1))).toBe(false);
    expect(tier.put(a, 1, Buffer.alloc(0))).toBe(false);
    expect(tier.get(a, 0)).toBeUndefined();
    expect(tier.stats()).toEqual({ hits: 0, misses: 0, bytes: 0, entries: 0, evictions: 0, budget: 0 });
  });

  it('shrinks at once to a smaller budget', () => {
    const tier = new MemoryTier(1000);
    for (let i = 0; i < 5; i++) tier.put(a, i, Buffer.alloc(100));
    tier.setBudget(250);
    expect(tier.stats()).toMatchObject({ bytes: 200, entries: 2, evictions: 3, budget: 250 });
    expect([3, 4].every((i) => tier.has(a, i))).toBe(true);
  });

  it('copies what it is given, so a pooled buffer can be reused at once', () => {
    const pool = new BufferPool(1024 * 1024);
    const tier = new MemoryTier(1024 * 1024);
    const held = pool.take(64 * 1024).fill(7);
    tier.put(a, 0, held);
    pool.give(held);
    // The pool hands the same memory to the next fetch, which overwrites it.
    const next = pool.take(64 * 1024).fill(9);
    expect(next.buffer).toBe(held.buffer);
    const cached = tier.get(a, 0);
    expect(cached?.length).toBe(64 * 1024);
    expect(cached?.every((byte) => byte === 7)).toBe(true);
    // A second put of the same chunk keeps the first copy.
    tier.put(a, 0, next);
    expect(tier.get(a, 0)?.[0]).toBe(7);
  });

  it('parks chunks a full disk had no room for, outside the budget, until let go', () => {
    // The budget is 0 (the tier is off): parked chunks are served all the same.
    const tier = new MemoryTier(0, 250);
    const pooled = Buffer.alloc(100, 1);
    expect(tier.park(a, 0, pooled)).toBe(true);
    pooled.fill(9);
    expect(tier.park(a, 1, Buffer.alloc(100, 2))).toBe(true);
    expect(tier.park(a, 1, Buffer.alloc(100, 3))).toBe(true);
    // A copy was kept, once per chunk; the limit counts every blob's parked chunks.
    expect(tier.get(a, 0)?.[0]).toBe(1);
    expect(tier.get(a, 1)?.[0]).toBe(2);
    expect(tier.has(a, 1)).toBe(true);
    expect(tier.parkedChunk(a, 2)).toBeUndefined();
    expect(tier.park(b, 0, Buffer.alloc(100))).toBe(false);
    expect(tier.parking()).toEqual({ chunks: 2, bytes: 200, limit: 250 });
    expect(tier.stats()).toMatchObject({ hits: 2, bytes: 0, entries: 0 });

    expect(tier.unpark(a)).toBe(2);
    expect(tier.get(a, 0)).toBeUndefined();
    expect(tier.park(b, 0, Buffer.alloc(100))).toBe(true);
    // Dropping a blob (evicted, or found invalid) lets its parked chunks go too.
    expect(tier.drop(b)).toBe(1);
    expect(tier.parking()).toEqual({ chunks: 0, bytes: 0, limit: 250 });
  });

  it('never evicts a parked chunk to make room for hot ones', () => {
    const tier = new MemoryTier(200);
    tier.park(a, 0, Buffer.alloc(150, 1));
    for (let i = 0; i < 4; i++) tier.put(b, i, Buffer.alloc(100, 2));
    expect(tier.parkedChunk(a, 0)?.[0]).toBe(1);
    expect(tier.stats()).toMatchObject({ bytes: 200, entries: 2 });
  });
});
