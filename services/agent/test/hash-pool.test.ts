import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createHashPool } from '../src/hash-pool.js';
import hash from '../src/hash-worker.js';

/** Writes each part to a file of its own in `dir`, in order; returns their paths. */
function writeParts(dir: string, parts: Buffer[]): Promise<string[]> {
  return Promise.all(
    parts.map(async (part, i) => {
      const path = join(dir, String(i));
      await writeFile(path, part);
      return path;
    }),
  );
}

describe('hash pool', () => {
  const pool = createHashPool(2);
  afterAll(() => pool.close());

  it('hashes a chunk in a worker and hands the bytes back intact', async () => {
    const data = randomBytes(3 * 1024 * 1024);
    const expected = createHash('sha256').update(data).digest('hex');
    const copy = Buffer.from(data);
    const { sha256, chunk } = await pool.hashChunk(copy);
    expect(sha256).toBe(expected);
    expect(chunk.equals(data)).toBe(true);
  });

  it('copies a chunk that is a slice of a shared buffer instead of detaching the shared memory', async () => {
    const small = Buffer.from('a small chunk that lives in the shared buffer pool');
    const neighbour = Buffer.from('neighbour');
    const { sha256, chunk } = await pool.hashChunk(small);
    expect(sha256).toBe(
      createHash('sha256').update('a small chunk that lives in the shared buffer pool').digest('hex'),
    );
    expect(chunk.toString()).toBe('a small chunk that lives in the shared buffer pool');
    expect(small.toString()).toBe('a small chunk that lives in the shared buffer pool');
    expect(neighbour.toString()).toBe('neighbour');
  });

  it('moves a whole pooled buffer, shorter chunk and all, and hands the same memory back', async () => {
    const memory = new ArrayBuffer(2 * 1024 * 1024);
    const chunk = Buffer.from(memory, 0, 1_500_000);
    const data = randomBytes(chunk.length);
    data.copy(chunk);
    const { sha256, chunk: back } = await pool.hashChunk(chunk, true);
    expect(sha256).toBe(createHash('sha256').update(data).digest('hex'));
    expect(memory.byteLength).toBe(0); // moved, not copied
    expect(back.buffer.byteLength).toBe(2 * 1024 * 1024);
    expect(back.byteOffset).toBe(0);
    expect(back.equals(data)).toBe(true);
  });

  it('hashes the concatenation of files', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'shoal-hash-'));
    try {
      const parts = [randomBytes(1000), randomBytes(2_000_000), randomBytes(5)];
      const paths = await writeParts(dir, parts);
      const expected = createHash('sha256').update(Buffer.concat(parts)).digest('hex');
      expect(await pool.hashFiles(paths)).toBe(expected);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('reads the files through one buffer, whatever their size or number', async () => {
    // A worker thread's garbage collector runs rarely; a buffer per read stayed in memory for long.
    const dir = await mkdtemp(join(tmpdir(), 'shoal-hash-'));
    const slow = vi.spyOn(Buffer, 'allocUnsafeSlow');
    const unsafe = vi.spyOn(Buffer, 'allocUnsafe');
    try {
      const parts = [randomBytes(3 * 1024 * 1024 + 7), Buffer.alloc(0), randomBytes(2 * 1024 * 1024)];
      const paths = await writeParts(dir, parts);
      const expected = createHash('sha256').update(Buffer.concat(parts)).digest('hex');
      slow.mockClear();
      unsafe.mockClear();
      for (let round = 0; round < 3; round++)
        expect(await hash({ kind: 'files', paths })).toEqual({ kind: 'files', sha256: expected });
      const bytes = [...slow.mock.calls, ...unsafe.mock.calls].reduce((sum, [size]) => sum + size, 0);
      expect(bytes).toBeLessThanOrEqual(1024 * 1024);
      await expect(hash({ kind: 'files', paths: [join(dir, 'absent')] })).rejects.toThrow(/ENOENT/);
    } finally {
      slow.mockRestore();
      unsafe.mockRestore();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
