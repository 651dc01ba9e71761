import { mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseRange } from '../src/ranges.js';
import { ChunkStore } from '../src/store.js';

const hex = 'b'.repeat(64);
const digest = `sha256:${hex}`;

describe('chunk store', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-store-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('keeps verified chunks across a restart and drops partial ones', async () => {
    const store = new ChunkStore(dir);
    await store.open();
    await store.ensure({ digest, size: 2500, chunkSize: 1000 });
    await store.writeChunk(hex, 0, Buffer.alloc(1000, 1), 'a'.repeat(64));
    await store.writeChunk(hex, 2, Buffer.alloc(500, 3), 'c'.repeat(64));
    expect(store.totalBytes).toBe(1500);
    // A crash mid-write leaves a temporary file; a truncated chunk cannot be trusted either.
    await writeFile(join(store.chunkPath(hex, 1) + '.99.tmp'), 'partial');
    await truncate(store.chunkPath(hex, 2), 100);

    const reopened = new ChunkStore(dir);
    await reopened.open();
    expect(reopened.get(hex)?.have.indices()).toEqual([0]);
    expect([...(reopened.get(hex)?.hashes ?? [])]).toEqual([[0, 'a'.repeat(64)]]);
    expect(reopened.totalBytes).toBe(1000);
    expect((await readdir(join(dir, 'blobs', 'sha256', hex))).sort()).toEqual([
      '0',
      'meta.json',
      'sha256sums',
    ]);
    expect((await reopened.readChunkRange(hex, 0, 10, 20)).equals(Buffer.alloc(10, 1))).toBe(true);
  });

  it('drops a blob whose metadata cannot be trusted', async () => {
    const store = new ChunkStore(dir);
    await store.open();
    await store.ensure({ digest, size: 2500, chunkSize: 1000 });
    await writeFile(
      join(dir, 'blobs', 'sha256', hex, 'meta.json'),
      JSON.stringify({ digest, size: 2500, chunkSize: 0 }),
    );
    const reopened = new ChunkStore(dir);
    await reopened.open();
    expect(reopened.get(hex)).toBeUndefined();
  });

  it('removes a blob entirely', async () => {
    const store = new ChunkStore(dir);
    await store.open();
    await store.ensure({ digest, size: 10, chunkSize: 65536 });
    await store.writeChunk(hex, 0, Buffer.alloc(10), 'd'.repeat(64));
    await store.remove(hex);
    expect(store.get(hex)).toBeUndefined();
    expect(store.totalBytes).toBe(0);
    expect(await readdir(join(dir, 'blobs', 'sha256'))).toEqual([]);
  });

  it('refuses a blob name that is not a hex digest', async () => {
    const store = new ChunkStore(dir);
    expect(() => store.chunkPath('../../etc', 0)).toThrow(/non-hex/);
  });
});

describe('ranges', () => {
  it('parses single byte ranges', () => {
    expect(parseRange(undefined, 100)).toBeUndefined();
    expect(parseRange('bytes=0-9', 100)).toEqual({ start: 0, end: 10 });
    expect(parseRange('bytes=90-', 100)).toEqual({ start: 90, end: 100 });
    expect(parseRange('bytes=-5', 100)).toEqual({ start: 95, end: 100 });
    expect(parseRange('bytes=50-1000', 100)).toEqual({ start: 50, end: 100 });
  });

  it('refuses malformed and unsatisfiable ranges', () => {
    for (const bad of ['bytes=100-', 'bytes=5-1', 'bytes=-', 'items=0-1', 'bytes=0-1,3-4']) {
      expect(() => parseRange(bad, 100)).toThrow();
    }
  });
});
