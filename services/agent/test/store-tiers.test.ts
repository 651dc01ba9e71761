import {
  open as openFile,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ChunkStore, type ChunkStoreOptions, type EvictReason } from '../src/store.js';

/** A blob name that sorts and reads as its number. */
const hexOf = (n: number) => n.toString(16).padStart(64, '0');
const hashOf = (hex: string, index: number) => `${hex.slice(0, 60)}${index.toString(16).padStart(4, '0')}`;

describe('chunk store tiers', () => {
  let dir: string;
  let clock: number;
  let evicted: { hex: string; reason: EvictReason }[];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'shoal-tiers-'));
    // An hour ago, so that the access times written as mtimes are clearly the test's.
    clock = Date.now() - 3_600_000;
    evicted = [];
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  const makeStore = async (options: ChunkStoreOptions = {}) => {
    const store = new ChunkStore(dir, {
      now: () => clock,
      onEvict: (hex, reason) => evicted.push({ hex, reason }),
      ...options,
    });
    await store.open();
    return store;
  };

  /** Registers blob `n` of `chunks` chunks of `chunkSize` bytes, writes them all, one clock tick later. */
  const fill = async (store: ChunkStore, n: number, chunks = 1, chunkSize = 100) => {
    clock += 1_000;
    const hex = hexOf(n);
    await store.ensure({ digest: `sha256:${hex}`, size: chunks * chunkSize, chunkSize });
    for (let i = 0; i < chunks; i++) {
      await store.writeChunk(hex, i, Buffer.alloc(chunkSize, n), hashOf(hex, i));
    }
    return hex;
  };

  const onDisk = async () => (await readdir(join(dir, 'blobs', 'sha256'))).sort();

  describe('eviction', () => {
    it('evicts least recently used blobs down to the low watermark, and nothing below the high one', async () => {
      const store = await makeStore({ maxBytes: 1000, highWatermark: 0.9, lowWatermark: 0.7 });
      const [a, b, c, d, e] = [
        await fill(store, 1),
        await fill(store, 2),
        await fill(store, 3),
        await fill(store, 4),
        await fill(store, 5),
      ];
      // Reads and touches are accesses: the order becomes c, d, e, b, a.
      clock += 1_000;
      await store.readChunk(b, 0);
      clock += 1_000;
      store.touch(a);
      for (const n of [6, 7, 8, 9]) await fill(store, n);
      // 900 bytes: at the high watermark, not over it.
      expect(store.totalBytes).toBe(900);
      expect(evicted).toEqual([]);

      const j = await fill(store, 10);
      expect(evicted).toEqual([
        { hex: c, reason: 'capacity' },
        { hex: d, reason: 'capacity' },
        { hex: e, reason: 'capacity' },
      ]);
      // Down to 700 with the new chunk in, and not a blob more.
      expect(store.totalBytes).toBe(700);
      for (const gone of [c, d, e]) {
        expect(store.get(gone)).toBeUndefined();
        expect(store.has(gone, 0)).toBe(false);
      }
      expect(await onDisk()).toEqual([a, b, hexOf(6), hexOf(7), hexOf(8), hexOf(9), j].sort());
      expect(store.stats()).toMatchObject({ totalBytes: 700, blobs: 7, evictions: 3, evictedBytes: 300 });
    });

    it('never evicts a pinned blob, and says when nothing more can be stored', async () => {
      const store = await makeStore({ maxBytes: 1000, highWatermark: 0.9, lowWatermark: 0.5 });
      const oldest = await fill(store, 1);
      const releaseOldest = store.pin(oldest);
      for (let n = 2; n <= 9; n++) await fill(store, n);
      await fill(store, 10);
      // The oldest is pinned: the next ones go instead, down to 500.
      expect(evicted.map((x) => x.hex)).toEqual([2, 3, 4, 5, 6].map(hexOf));
      expect(store.get(oldest)?.have.has(0)).toBe(true);

      // Pin everything left: the cache can only grow past its limit.
      const releases = [...store.all()].map(([hex]) => store.pin(hex));
      expect(store.canStore(500)).toBe(true);
      expect(store.canStore(501)).toBe(false);
      evicted.length = 0;
      const big = hexOf(11);
      const releaseBig = store.pin(big);
      await store.ensure({ digest: `sha256:${big}`, size: 800, chunkSize: 100 });
      // Writing over the limit does not fail: the download goes on, the cache overshoots.
      for (let i = 0; i < 8; i++) await store.writeChunk(big, i, Buffer.alloc(100, 11), hashOf(big, i));
      expect(store.totalBytes).toBe(1300);
      expect(evicted).toEqual([]);
      expect(store.canStore(1)).toBe(false);
      expect(store.stats()).toMatchObject({ pinnedBlobs: 6, pinnedBytes: 1300 });

      // Released pins make blobs evictable again; a pin taken twice holds until released twice.
      releaseBig();
      releaseBig();
      for (const release of releases) release();
      releaseOldest();
      expect(store.canStore(100)).toBe(true);
      const again = store.pin(oldest);
      const twice = store.pin(oldest);
      again();
      expect(store.isPinned(oldest)).toBe(true);
      twice();
      expect(store.isPinned(oldest)).toBe(false);
      await store.sweep();
      expect(store.totalBytes).toBeLessThanOrEqual(500);
    });

    it('evicts blobs idle for longer than the TTL, unless pinned', async () => {
      const store = await makeStore({ ttlMs: 10_000 });
      const idle = await fill(store, 1);
      const pinned = await fill(store, 2);
      const fresh = await fill(store, 3);
      const release = store.pin(pinned);
      clock += 8_000;
      store.touch(fresh);
      clock += 3_000;
      const result = await store.sweep();
      expect(result.evicted).toEqual([{ hex: idle, reason: 'ttl', bytes: 100 }]);
      expect(evicted).toEqual([{ hex: idle, reason: 'ttl' }]);
      expect(store.get(pinned)).toBeDefined();
      expect(store.get(fresh)).toBeDefined();
      // Released, the pinned blob is idle since the release.
      release();
      clock += 10_001;
      expect((await store.sweep()).evicted.map((x) => x.hex).sort()).toEqual([pinned, fresh].sort());
      expect(store.totalBytes).toBe(0);
      expect(await onDisk()).toEqual([]);
    });

    it('lets a reader that opened a chunk finish it after eviction', async () => {
      const store = await makeStore({ maxBytes: 250, highWatermark: 1, lowWatermark: 0.4 });
      const first = await fill(store, 1);
      await fill(store, 2);
      const reader = await openFile(store.chunkPath(first, 0), 'r');
      try {
        // The third blob takes the cache over its limit: the first goes while the reader holds it open.
        await fill(store, 3);
        expect(store.get(first)).toBeUndefined();
        const { bytesRead, buffer } = await reader.read(Buffer.alloc(100), 0, 100, 0);
        expect(bytesRead).toBe(100);
        expect(buffer.equals(Buffer.alloc(100, 1))).toBe(true);
      } finally {
        await reader.close();
      }
      const back = await fill(store, 1);
      await store.sweep();
      expect(await readFile(store.chunkPath(back, 0))).toEqual(Buffer.alloc(100, 1));
    });

    it('keeps a blob registered again during its eviction', async () => {
      const store = await makeStore({ maxBytes: 100, highWatermark: 1, lowWatermark: 1 });
      const hex = await fill(store, 1);
      const other = hexOf(2);
      await store.ensure({ digest: `sha256:${other}`, size: 100, chunkSize: 100 });
      const writing = store.writeChunk(other, 0, Buffer.alloc(100, 2), hashOf(other, 0));
      // Let the sweep choose its victim and start moving its directory, then register it again.
      await new Promise((resolve) => setImmediate(resolve));
      expect(store.get(hex)).toBeUndefined();
      const reRegistered = store.ensure({ digest: `sha256:${hex}`, size: 100, chunkSize: 100 });
      await writing;
      await reRegistered;
      await store.close();
      expect((await readdir(join(dir, 'blobs', 'sha256', hex))).sort()).toEqual(['meta.json']);
      expect(evicted).toEqual([{ hex, reason: 'capacity' }]);
    });

    it('refuses watermarks that make no sense', () => {
      expect(() => new ChunkStore(dir, { highWatermark: 0.5, lowWatermark: 0.6 })).toThrow(RangeError);
      expect(() => new ChunkStore(dir, { lowWatermark: 0 })).toThrow(RangeError);
      expect(() => new ChunkStore(dir, { maxBytes: -1 })).toThrow(RangeError);
    });
  });

  describe('restart', () => {
    it('keeps what can be trusted and reports what it discarded', async () => {
      const store = await makeStore();
      // A complete blob with every chunk: kept, complete.
      const whole = await fill(store, 1, 3);
      await store.markComplete(whole);
      // A complete blob whose last chunk was truncated: the chunk and the marker go.
      const truncated = await fill(store, 2, 3);
      await store.markComplete(truncated);
      await truncate(store.chunkPath(truncated, 2), 40);
      // A write killed before its rename.
      const withTemp = await fill(store, 3);
      await writeFile(`${store.chunkPath(withTemp, 0)}.4242.7.tmp`, 'half a chunk');
      // A chunk file with no line in sha256sums: nothing to check it against.
      await store.ensure({ digest: `sha256:${hexOf(4)}`, size: 200, chunkSize: 100 });
      const partial = hexOf(4);
      await store.writeChunk(partial, 0, Buffer.alloc(100, 4), hashOf(partial, 0));
      await writeFile(store.chunkPath(partial, 1), Buffer.alloc(100, 4));
      // A sha256sums file cut in the middle of its last line.
      const torn = await fill(store, 5, 3);
      const sumsPath = join(dir, 'blobs', 'sha256', torn, 'sha256sums');
      await truncate(sumsPath, (await stat(sumsPath)).size - 20);
      // A directory without valid metadata.
      const junk = hexOf(6);
      await store.ensure({ digest: `sha256:${junk}`, size: 100, chunkSize: 100 });
      await writeFile(join(dir, 'blobs', 'sha256', junk, 'meta.json'), '{"digest":');
      await store.close();

      const reopened = new ChunkStore(dir);
      const report = await reopened.open();
      expect(reopened.get(whole)?.complete).toBe(true);
      expect(reopened.get(whole)?.have.indices()).toEqual([0, 1, 2]);
      expect(reopened.get(truncated)?.complete).toBe(false);
      expect(reopened.get(truncated)?.have.indices()).toEqual([0, 1]);
      expect(reopened.get(withTemp)?.have.indices()).toEqual([0]);
      // Every chunk is there, but the whole digest was never verified: no marker, not complete.
      expect(reopened.get(withTemp)?.have.isFull()).toBe(true);
      expect(reopened.get(withTemp)?.complete).toBe(false);
      expect(reopened.get(partial)?.have.indices()).toEqual([0]);
      expect(reopened.get(torn)?.have.indices()).toEqual([0, 1]);
      expect([...(reopened.get(torn)?.hashes ?? [])]).toEqual([
        [0, hashOf(torn, 0)],
        [1, hashOf(torn, 1)],
      ]);
      expect(reopened.get(junk)).toBeUndefined();

      expect(report.discarded).toEqual(
        expect.arrayContaining([
          { hex: truncated, name: '2', reason: 'wrong_size' },
          { hex: truncated, name: 'complete', reason: 'incomplete' },
          { hex: partial, name: '1', reason: 'no_hash' },
          { hex: torn, name: '2', reason: 'no_hash' },
          { hex: withTemp, name: '0.4242.7.tmp', reason: 'temporary' },
          { hex: junk, name: '', reason: 'bad_meta' },
        ]),
      );
      expect(report).toMatchObject({
        blobs: 5,
        completeBlobs: 1,
        chunks: 3 + 2 + 1 + 1 + 2,
        bytes: 900,
        corruptSumsLines: 1,
        discardedByReason: {
          bad_meta: 1,
          temporary: 1,
          wrong_size: 1,
          out_of_range: 0,
          no_hash: 2,
          incomplete: 1,
        },
      });
      expect(reopened.totalBytes).toBe(900);
      expect(await readdir(join(dir, 'blobs', 'sha256', truncated))).not.toContain('complete');
      expect(await readdir(join(dir, 'blobs', 'sha256', withTemp))).not.toContain('0.4242.7.tmp');

      // The torn sha256sums was rewritten, so the next chunk's line starts on a line of its own.
      expect(await readFile(sumsPath, 'utf8')).toBe(`0 ${hashOf(torn, 0)}\n1 ${hashOf(torn, 1)}\n`);
      await reopened.writeChunk(torn, 2, Buffer.alloc(100, 5), hashOf(torn, 2));
      const third = new ChunkStore(dir);
      expect((await third.open()).discarded).toEqual([]);
      expect(third.get(torn)?.have.indices()).toEqual([0, 1, 2]);
    });

    it('restores the order of use from the access times on disk', async () => {
      const store = await makeStore({ accessPersistMs: 0 });
      const [a, b, c] = [await fill(store, 1), await fill(store, 2), await fill(store, 3)];
      clock += 10_000;
      store.touch(b);
      clock += 10_000;
      store.touch(a);
      clock += 10_000;
      store.touch(c);
      await store.close();

      const reopened = await makeStore({ maxBytes: 300, highWatermark: 1, lowWatermark: 1 });
      expect(Math.abs(reopened.accessedAt(c)! - clock)).toBeLessThan(2);
      expect([...reopened.all()].map(([hex]) => hex)).toEqual([b, a, c]);
      await fill(reopened, 4);
      await fill(reopened, 5);
      expect(evicted.map((x) => x.hex)).toEqual([b, a]);
    });

    it('writes a blob’s access time at most once per interval', async () => {
      const store = await makeStore({ accessPersistMs: 60_000 });
      const hex = await fill(store, 1);
      store.touch(hex);
      await store.close();
      const blobDir = join(dir, 'blobs', 'sha256', hex);
      const written = (await stat(blobDir)).mtimeMs;
      clock += 30_000;
      store.touch(hex);
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect((await stat(blobDir)).mtimeMs).toBe(written);
      clock += 30_000;
      store.touch(hex);
      await expect.poll(async () => Math.round((await stat(blobDir)).mtimeMs)).toBe(clock);
    });
  });
});
