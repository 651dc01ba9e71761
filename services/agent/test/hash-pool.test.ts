import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createHashPool } from '../src/hash-pool.js';

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
      const paths = await Promise.all(
        parts.map(async (part, i) => {
          const path = join(dir, String(i));
          await writeFile(path, part);
          return path;
        }),
      );
      const expected = createHash('sha256').update(Buffer.concat(parts)).digest('hex');
      expect(await pool.hashFiles(paths)).toBe(expected);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
