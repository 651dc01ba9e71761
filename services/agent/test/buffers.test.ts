import { describe, expect, it, vi } from 'vitest';
import { BufferPool } from '../src/buffers.js';

const MiB = 1024 * 1024;

describe('BufferPool', () => {
  it('hands back the memory of a returned buffer for the next chunk of its size class', () => {
    const pool = new BufferPool(4 * MiB);
    const first = pool.take(MiB);
    const memory = first.buffer;
    pool.give(first);
    const second = pool.take(MiB - 100);
    expect(second.buffer).toBe(memory);
    expect(second.length).toBe(MiB - 100);
    expect(second.byteOffset).toBe(0);
    // A buffer of another class is new memory.
    expect(pool.take(3 * MiB).buffer).not.toBe(memory);
  });

  it('gives each buffer taken its own memory, so chunks in flight never share', () => {
    const pool = new BufferPool(4 * MiB);
    const a = pool.take(MiB);
    const b = pool.take(MiB);
    expect(a.buffer).not.toBe(b.buffer);
    pool.give(a);
    pool.give(a);
    expect(pool.idleBytes).toBe(MiB);
    expect(pool.take(MiB).buffer).toBe(a.buffer);
    expect(pool.take(MiB).buffer).not.toBe(a.buffer);
  });

  it('keeps no more idle bytes than its budget', () => {
    const pool = new BufferPool(2 * MiB);
    const taken = [pool.take(MiB), pool.take(MiB), pool.take(MiB)];
    for (const buffer of taken) pool.give(buffer);
    expect(pool.idleBytes).toBe(2 * MiB);
  });

  it('ignores buffers it cannot reuse: moved to another thread, or views into shared memory', () => {
    const pool = new BufferPool(4 * MiB);
    const moved = pool.take(MiB);
    structuredClone(moved.buffer, { transfer: [moved.buffer as ArrayBuffer] });
    pool.give(moved);
    pool.give(Buffer.from('a slice of the shared pool'));
    pool.give(Buffer.from(new ArrayBuffer(MiB), 4096, 1000));
    expect(pool.idleBytes).toBe(0);
  });

  it('lets go of idle buffers after a quiet spell', () => {
    vi.useFakeTimers();
    try {
      const pool = new BufferPool(4 * MiB);
      pool.give(pool.take(MiB));
      vi.advanceTimersByTime(5_000);
      pool.give(pool.take(MiB));
      vi.advanceTimersByTime(9_000);
      expect(pool.idleBytes).toBe(MiB);
      vi.advanceTimersByTime(2_000);
      expect(pool.idleBytes).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});
