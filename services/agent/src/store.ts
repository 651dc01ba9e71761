/**
 * The disk cache. Each blob has a directory named by its digest holding one file per verified chunk.
 * A chunk file is written under a temporary name and renamed into place only after its sha256 matched,
 * so a chunk file that exists is always a verified chunk, including after a crash. `complete` marks a blob
 * whose whole digest was verified.
 *
 * Capacity. With `maxBytes` set, whole blobs are evicted least recently used first: once the chunks
 * held (plus those being written) exceed `highWatermark` × maxBytes, blobs go until no more than
 * `lowWatermark` × maxBytes remain, so eviction runs in batches rather than at every chunk. A blob idle
 * for longer than `ttlMs` goes too. An access is a chunk written or read through the store, a `touch`,
 * or a pin taken or released. A pinned blob (being downloaded, read or served) is never evicted; when
 * everything evictable is gone and the pinned blobs alone exceed maxBytes, writes still succeed (a
 * download is never failed for want of room) and `canStore` tells callers that would rather not add to
 * the overshoot.
 *
 * The disk may be full before maxBytes is reached: a disk smaller than maxBytes, or other files on it.
 * A write that fails for want of room (ENOSPC, EDQUOT) leaves nothing behind (its temporary file is
 * removed, a sha256sums line cut short is taken back), and makes room as the watermarks would, as if
 * the cache's size were what it holds now: least recently used unpinned blobs go (reason `disk_full`)
 * down to `lowWatermark` of that, and the write is tried once more. When nothing can be evicted, or the
 * disk is still full, the write fails with the disk's error (`isDiskFull` tells it apart), and for
 * `diskFullRetryMs` afterwards writes fail at once without touching the disk and `canStore` says no,
 * so callers serve without caching; the first eviction or removal ends that early. A chunk the caller
 * keeps in memory instead can be recorded as parked (`markParked`): `has` answers for it and the mesh
 * hears of it like any other, but it takes no room and has no file, until `unpark` forgets it.
 *
 * Eviction is atomic with respect to readers: the index entry is removed first (in the same tick as the
 * choice of victims, so `get`/`has` stop answering for it at once), then the blob's directory is
 * renamed out of `blobs/` in one step and deleted. A reader that opened a chunk file before that keeps
 * reading it to the end (on Linux an unlinked file lives until its last descriptor is closed); one that
 * looked the blob up but had not yet opened the file gets ENOENT, which is why readers pin.
 *
 * Recency survives a restart approximately: the time of a blob's last access is kept as the mtime of its
 * directory, written at most once per `accessPersistMs` per blob (and for every blob by `close`). Chunk
 * writes move it too, since renaming a file into a directory updates the directory's mtime.
 */
import { mkdir, open, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Bitmap, chunkCount } from '@shoal/mesh';
import { replaceFile } from './atomic-file.js';

export interface BlobMeta {
  digest: string;
  size: number;
  chunkSize: number;
}

export interface StoredBlob {
  meta: BlobMeta;
  have: Bitmap;
  /** The sha256 of each stored chunk, so the manifest can be rebuilt if the mesh loses it. */
  hashes: Map<number, string>;
  complete: boolean;
}

/** Why a blob left the cache without being asked to: over maxBytes, idle too long, or the disk full. */
export type EvictReason = 'capacity' | 'ttl' | 'disk_full';

/** Whether an error from the store means its disk has no room left (ENOSPC, or a quota: EDQUOT). */
export function isDiskFull(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

export interface ChunkStoreOptions {
  /** Bytes of chunks the cache may hold; 0: unlimited. */
  maxBytes?: number;
  /** Eviction starts once the cache holds more than this fraction of maxBytes (default 0.9). */
  highWatermark?: number;
  /** Eviction stops once the cache holds no more than this fraction of maxBytes (default 0.8). */
  lowWatermark?: number;
  /** A blob not accessed for this long is evicted by `sweep`; 0: never. */
  ttlMs?: number;
  /** The clock, in milliseconds since the epoch: access times are kept as file mtimes. */
  now?: () => number;
  /** The shortest interval between two writes of one blob's access time to disk (default 60 s). */
  accessPersistMs?: number;
  /**
   * After a write found the disk full (and no room could be made), how long writes fail at once and
   * `canStore` says no before the disk is tried again (default 5 s).
   */
  diskFullRetryMs?: number;
  /**
   * Called once the blob is out of the index, before its files are gone, so the agent can withdraw it
   * from the mesh at once. It must not throw.
   */
  onEvict?: (hex: string, reason: EvictReason, bytes: number) => void;
}

export interface EvictedBlob {
  hex: string;
  reason: EvictReason;
  bytes: number;
}

export interface SweepResult {
  evicted: EvictedBlob[];
  /** Bytes held once the sweep is over. */
  totalBytes: number;
  /** Blobs whose directory could not be deleted (they are out of the index all the same). */
  errors: { hex: string; message: string }[];
}

/** Why `open` threw away a file it found. */
export type DiscardReason =
  /** A blob directory whose meta.json is missing or invalid (the whole directory goes). */
  | 'bad_meta'
  /** A temporary file left by a write that never finished. */
  | 'temporary'
  /** A chunk file whose length is not the chunk's. */
  | 'wrong_size'
  /** A chunk file past the end of the blob. */
  | 'out_of_range'
  /** A chunk file whose hash is not in sha256sums: it cannot be announced, nor checked. */
  | 'no_hash'
  /** A `complete` marker on a blob with chunks missing. */
  | 'incomplete';

export interface DiscardedFile {
  hex: string;
  /** The file's name in the blob's directory; empty for a whole directory. */
  name: string;
  reason: DiscardReason;
}

/** What `open` found on disk: what it kept, and what it threw away and why. */
export interface OpenReport {
  blobs: number;
  completeBlobs: number;
  chunks: number;
  bytes: number;
  discarded: DiscardedFile[];
  discardedByReason: Record<DiscardReason, number>;
  /** Lines of sha256sums files that did not parse (a torn append); the files are rewritten without them. */
  corruptSumsLines: number;
}

export interface ChunkStoreStats {
  totalBytes: number;
  blobs: number;
  pinnedBlobs: number;
  pinnedBytes: number;
  /** Blobs evicted (by capacity, TTL or a full disk) since the store was created, and their bytes. */
  evictions: number;
  evictedBytes: number;
  /** Whether writes are refused now because the disk was found full. */
  diskFull: boolean;
  /** Writes (chunks, or a new blob's meta.json) that failed, or were refused, because the disk was full. */
  diskFullWrites: number;
}

interface Entry {
  blob: StoredBlob;
  bytes: number;
  /** Chunks in `have` that are kept in memory by the caller, not on disk (see `markParked`). */
  parked?: Set<number>;
  lastAccess: number;
  /** The access time last written to disk. */
  persistedAccess: number;
}

const HASHES_FILE = 'sha256sums';
const COMPLETE_FILE = 'complete';
const META_FILE = 'meta.json';
const MiB = 1024 * 1024;

function validMeta(value: unknown, hex: string): value is BlobMeta {
  const meta = value as Partial<BlobMeta> | null;
  return (
    typeof meta === 'object' &&
    meta !== null &&
    meta.digest === `sha256:${hex}` &&
    Number.isSafeInteger(meta.size) &&
    (meta.size ?? -1) >= 0 &&
    Number.isSafeInteger(meta.chunkSize) &&
    (meta.chunkSize ?? 0) >= 1 &&
    (meta.chunkSize ?? 0) <= 1024 * MiB
  );
}

const hexPattern = /^[a-f0-9]{64}$/;
const sumsLine = /^(\d{1,9}) ([a-f0-9]{64})$/;

function chunkLength(meta: BlobMeta, index: number): number {
  return Math.min(meta.chunkSize, meta.size - index * meta.chunkSize);
}

/** The error of a write refused without trying, while the disk is known to be full. */
function diskFullError(message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`ENOSPC: ${message}`), { code: 'ENOSPC' });
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class ChunkStore {
  /** The index, least recently accessed first: an access moves a blob to the end. */
  private readonly entries = new Map<string, Entry>();
  /** Pin counts by blob; a blob may be pinned before it is registered. */
  private readonly pins = new Map<string, number>();
  /** Directory removals under way, so that a blob registered again waits for its old directory to go. */
  private readonly removing = new Map<string, Promise<void>>();
  private readonly persisting = new Set<Promise<void>>();
  /** The sha256sums append under way for each blob: appends to one file run one at a time. */
  private readonly appending = new Map<string, Promise<void>>();
  /** Blobs whose sha256sums may end in a torn line (not rewritten at open): the next append starts afresh. */
  private readonly unterminated = new Set<string>();
  /** Callbacks waiting for a blob's last pin to go. */
  private readonly unpinWaiters = new Map<string, (() => void)[]>();
  /** Until when writes are refused because the disk was found full (ms, this.now()). */
  private diskFullUntil = 0;
  private diskFullWrites = 0;
  /** Counts the sweeps that evicted something, so writes that failed together make room once. */
  private roomMade = 0;
  private tempCounter = 0;
  private bytes = 0;
  /** Bytes of chunk writes under way, counted against the watermarks before they land. */
  private reserved = 0;
  private sweepTail: Promise<unknown> = Promise.resolve();
  private evictions = 0;
  private evictedBytes = 0;
  private maxBytes: number;
  private highBytes: number;
  private lowBytes: number;
  private readonly high: number;
  private readonly low: number;
  private readonly ttlMs: number;
  private readonly accessPersistMs: number;
  private readonly diskFullRetryMs: number;
  private readonly now: () => number;
  private readonly onEvict: ((hex: string, reason: EvictReason, bytes: number) => void) | undefined;

  constructor(
    private readonly dir: string,
    options: ChunkStoreOptions = {},
  ) {
    const maxBytes = options.maxBytes ?? 0;
    const high = options.highWatermark ?? 0.9;
    const low = options.lowWatermark ?? 0.8;
    const ttlMs = options.ttlMs ?? 0;
    const accessPersistMs = options.accessPersistMs ?? 60_000;
    const diskFullRetryMs = options.diskFullRetryMs ?? 5_000;
    if (!(maxBytes >= 0) || !Number.isFinite(maxBytes)) throw new RangeError('maxBytes must be 0 or more');
    if (!(low > 0 && low <= high && high <= 1)) {
      throw new RangeError('watermarks must satisfy 0 < lowWatermark <= highWatermark <= 1');
    }
    if (!(ttlMs >= 0) || !(accessPersistMs >= 0) || !(diskFullRetryMs >= 0))
      throw new RangeError('durations must be 0 or more');
    this.high = high;
    this.low = low;
    this.maxBytes = maxBytes;
    this.highBytes = maxBytes * high;
    this.lowBytes = maxBytes * low;
    this.ttlMs = ttlMs;
    this.accessPersistMs = accessPersistMs;
    this.diskFullRetryMs = diskFullRetryMs;
    this.now = options.now ?? (() => Date.now());
    this.onEvict = options.onEvict;
  }

  private get root(): string {
    return join(this.dir, 'blobs', 'sha256');
  }

  private get trash(): string {
    return join(this.dir, 'trash');
  }

  /**
   * Loads the index from disk, keeping only what can be trusted: a chunk file of the right length whose
   * hash is in sha256sums (a chunk without one cannot be checked against anything, so it goes), and the
   * `complete` marker only when every chunk is there. Temporary files left by a crash are removed, torn
   * sha256sums lines ignored (and the file rewritten without them, so the next append starts on a line of
   * its own). Does not evict: call `sweep` once the caller is ready to hear about evictions.
   */
  async open(): Promise<OpenReport> {
    const report: OpenReport = {
      blobs: 0,
      completeBlobs: 0,
      chunks: 0,
      bytes: 0,
      discarded: [],
      discardedByReason: {
        bad_meta: 0,
        temporary: 0,
        wrong_size: 0,
        out_of_range: 0,
        no_hash: 0,
        incomplete: 0,
      },
      corruptSumsLines: 0,
    };
    const discard = (hex: string, name: string, reason: DiscardReason) => {
      report.discarded.push({ hex, name, reason });
      report.discardedByReason[reason]++;
    };
    // Directories of blobs evicted or removed when the agent stopped.
    await rm(this.trash, { recursive: true, force: true });
    await mkdir(this.root, { recursive: true });
    const loaded: [string, Entry][] = [];
    for (const hex of await readdir(this.root)) {
      if (!hexPattern.test(hex)) continue;
      const blobDir = join(this.root, hex);
      let meta: unknown;
      let lastAccess: number;
      try {
        meta = JSON.parse(await readFile(join(blobDir, META_FILE), 'utf8'));
        lastAccess = (await stat(blobDir)).mtimeMs;
      } catch {
        meta = undefined;
        lastAccess = 0;
      }
      if (!validMeta(meta, hex)) {
        await rm(blobDir, { recursive: true, force: true });
        discard(hex, '', 'bad_meta');
        continue;
      }
      const count = chunkCount(meta.size, meta.chunkSize);
      const sums = await readFile(join(blobDir, HASHES_FILE), 'utf8').catch(() => '');
      const known = new Map<number, string>();
      let corrupt = 0;
      for (const line of sums.split('\n')) {
        if (line === '') continue;
        const match = sumsLine.exec(line);
        const index = Number(match?.[1]);
        if (match?.[2] && index < count) known.set(index, match[2]);
        else corrupt++;
      }
      report.corruptSumsLines += corrupt;

      const have = new Bitmap(count);
      const hashes = new Map<number, string>();
      let bytes = 0;
      let marker = false;
      let changed = false;
      for (const name of await readdir(blobDir)) {
        const path = join(blobDir, name);
        if (name.endsWith('.tmp')) {
          await rm(path, { force: true });
          discard(hex, name, 'temporary');
          changed = true;
        } else if (name === COMPLETE_FILE) {
          marker = true;
        } else if (/^\d+$/.test(name)) {
          const index = Number(name);
          const hash = known.get(index);
          const reason: DiscardReason | undefined =
            index >= count
              ? 'out_of_range'
              : (await stat(path)).size !== chunkLength(meta, index)
                ? 'wrong_size'
                : undefined;
          if (reason === undefined && hash !== undefined) {
            have.set(index);
            hashes.set(index, hash);
            bytes += chunkLength(meta, index);
          } else {
            await rm(path, { force: true });
            discard(hex, name, reason ?? 'no_hash');
            changed = true;
          }
        }
      }
      if (marker && !have.isFull()) {
        // A marker that outlived some of its chunks would let a refetched blob skip the whole-digest check.
        await rm(join(blobDir, COMPLETE_FILE), { force: true });
        discard(hex, COMPLETE_FILE, 'incomplete');
        marker = false;
        changed = true;
      }
      if (corrupt > 0 || (sums !== '' && !sums.endsWith('\n'))) {
        const text = [...hashes].map(([index, hash]) => `${index} ${hash}\n`).join('');
        const temp = join(blobDir, `${HASHES_FILE}.${process.pid}.${this.tempCounter++}.tmp`);
        try {
          await writeFile(temp, text);
          await rename(temp, join(blobDir, HASHES_FILE));
        } catch {
          // No room to rewrite it (a full disk): the old file stays, its torn lines are skipped when read,
          // and the next append starts a line of its own.
          await rm(temp, { force: true });
          this.unterminated.add(hex);
        }
        changed = true;
      }
      // Cleaning up moved the directory's mtime, which stands for the blob's last access.
      if (changed && lastAccess > 0) await utimes(blobDir, lastAccess / 1000, lastAccess / 1000);
      const blob: StoredBlob = { meta, have, hashes, complete: marker };
      loaded.push([hex, { blob, bytes, lastAccess, persistedAccess: lastAccess }]);
      report.blobs++;
      if (marker) report.completeBlobs++;
      report.chunks += hashes.size;
      report.bytes += bytes;
    }
    loaded.sort(([, a], [, b]) => a.lastAccess - b.lastAccess);
    for (const [hex, entry] of loaded) {
      this.entries.set(hex, entry);
      this.bytes += entry.bytes;
    }
    return report;
  }

  /** The bytes the cache may hold (0: unlimited). */
  get capacity(): number {
    return this.maxBytes;
  }

  /**
   * Changes maxBytes at run time; the watermarks keep their fractions. Nothing is evicted until the
   * next `sweep`, which the caller runs when it wants a smaller cache to take effect at once.
   */
  setMaxBytes(maxBytes: number): void {
    if (!(maxBytes >= 0) || !Number.isFinite(maxBytes)) throw new RangeError('maxBytes must be 0 or more');
    this.maxBytes = maxBytes;
    this.highBytes = maxBytes * this.high;
    this.lowBytes = maxBytes * this.low;
  }

  get totalBytes(): number {
    return this.bytes;
  }

  get(hex: string): StoredBlob | undefined {
    return this.entries.get(hex)?.blob;
  }

  *all(): IterableIterator<[string, StoredBlob]> {
    for (const [hex, entry] of this.entries) yield [hex, entry.blob];
  }

  private blobDir(hex: string): string {
    if (!hexPattern.test(hex)) throw new Error(`refusing a non-hex blob name`);
    return join(this.root, hex);
  }

  chunkPath(hex: string, index: number): string {
    return join(this.blobDir(hex), String(index));
  }

  /** Registers a blob before its first chunk is written; an existing entry with the same layout is kept. */
  async ensure(meta: BlobMeta): Promise<StoredBlob> {
    const hex = meta.digest.slice('sha256:'.length);
    const existing = this.entries.get(hex);
    if (
      existing &&
      existing.blob.meta.size === meta.size &&
      existing.blob.meta.chunkSize === meta.chunkSize
    ) {
      this.touch(hex);
      return existing.blob;
    }
    if (existing) await this.remove(hex);
    // An eviction of this blob may still be moving its old directory out of the way.
    await this.removing.get(hex);
    try {
      await mkdir(this.blobDir(hex), { recursive: true });
      await writeFile(join(this.blobDir(hex), META_FILE), JSON.stringify(meta));
    } catch (err) {
      // A meta.json cut short (the disk full) would only be thrown away by the next open: it goes now,
      // with its directory.
      await rm(this.blobDir(hex), { recursive: true, force: true });
      if (isDiskFull(err)) this.noteDiskFull();
      throw err;
    }
    this.unterminated.delete(hex);
    const blob: StoredBlob = {
      meta,
      have: new Bitmap(chunkCount(meta.size, meta.chunkSize)),
      hashes: new Map(),
      complete: false,
    };
    const now = this.now();
    this.entries.delete(hex);
    this.entries.set(hex, { blob, bytes: 0, lastAccess: now, persistedAccess: now });
    return blob;
  }

  has(hex: string, index: number): boolean {
    return this.entries.get(hex)?.blob.have.has(index) ?? false;
  }

  /**
   * Stores a chunk that has already been verified. Its hash is recorded first and the data is synced
   * before the rename, so a chunk file that exists after a crash or power loss is whole and verified.
   * If the chunk would take the cache over its high watermark, least recently used blobs are evicted
   * first. maxBytes never fails a write: when only pinned blobs are left the chunk is written over it
   * (check `canStore` beforehand to avoid that). A full disk does, once no room can be made (see the
   * top of this file); the error then satisfies `isDiskFull`, and nothing of the chunk is left on disk.
   */
  async writeChunk(hex: string, index: number, data: Buffer, sha256: string): Promise<void> {
    const entry = this.entries.get(hex);
    if (!entry) throw new Error(`blob ${hex} is not registered`);
    if (entry.blob.have.has(index) && !entry.parked?.has(index)) {
      this.touch(hex);
      return;
    }
    if (this.diskFull) {
      this.diskFullWrites++;
      throw diskFullError(`the cache disk was full less than ${this.diskFullRetryMs} ms ago`);
    }
    // Held while the chunk is written, so an eviction cannot move the directory from under the rename.
    const release = this.pin(hex);
    this.reserved += data.length;
    try {
      if (this.maxBytes > 0 && this.bytes + this.reserved > this.highBytes) await this.sweep();
      const roomMade = this.roomMade;
      try {
        await this.writeChunkFiles(hex, index, data, sha256);
      } catch (err) {
        if (!isDiskFull(err)) throw err;
        // Room made by another write that failed meanwhile counts for this one too.
        if (this.roomMade === roomMade && (await this.makeRoom()).evicted.length === 0) {
          this.noteDiskFull();
          throw err;
        }
        try {
          await this.writeChunkFiles(hex, index, data, sha256);
        } catch (again) {
          if (isDiskFull(again)) this.noteDiskFull();
          throw again;
        }
      }
      // Two writes of one chunk may race; the second rename replaces identical bytes. A parked chunk
      // written now is on disk from now on.
      if ((entry.parked?.delete(index) ?? false) || !entry.blob.have.has(index)) {
        entry.blob.have.set(index);
        entry.blob.hashes.set(index, sha256);
        entry.bytes += data.length;
        this.bytes += data.length;
      }
    } finally {
      this.reserved -= data.length;
      release();
    }
  }

  /**
   * The files of one chunk: its hash appended to sha256sums, then its bytes under a temporary name,
   * synced and renamed into place. Whatever fails, nothing of it stays: the temporary file is removed and
   * a sha256sums line cut short is taken back.
   */
  private async writeChunkFiles(hex: string, index: number, data: Buffer, sha256: string): Promise<void> {
    const final = this.chunkPath(hex, index);
    await this.appendHash(hex, `${index} ${sha256}\n`);
    await replaceFile(final, `${final}.${process.pid}.${this.tempCounter++}.tmp`, data);
  }

  /**
   * Appends a line to the blob's sha256sums. Appends to one file run one at a time, so the length before
   * this one is known and a line cut short (a full disk) is truncated away: the file holds whole lines.
   */
  private appendHash(hex: string, line: string): Promise<void> {
    const path = join(this.blobDir(hex), HASHES_FILE);
    const previous = this.appending.get(hex) ?? Promise.resolve();
    const run = previous.then(async () => {
      const handle = await open(path, 'a');
      try {
        const { size } = await handle.stat();
        const text = this.unterminated.has(hex) ? `\n${line}` : line;
        try {
          await handle.appendFile(text);
        } catch (err) {
          await handle.truncate(size).catch(() => this.unterminated.add(hex));
          throw err;
        }
        this.unterminated.delete(hex);
      } finally {
        await handle.close();
      }
    });
    const settled = run.catch(() => undefined);
    this.appending.set(hex, settled);
    void settled.then(() => {
      if (this.appending.get(hex) === settled) this.appending.delete(hex);
    });
    return run;
  }

  /**
   * Records a verified chunk the disk had no room for, kept in memory by the caller: `has` answers for
   * it and announcements include it (so a lease taken for it is released and peers may fetch it), but it
   * counts for no bytes and has no file. The caller serves it from memory until `unpark`.
   */
  markParked(hex: string, index: number, sha256: string): void {
    const entry = this.entries.get(hex);
    if (!entry || entry.blob.have.has(index)) return;
    entry.blob.have.set(index);
    entry.blob.hashes.set(index, sha256);
    (entry.parked ??= new Set()).add(index);
  }

  /** Forgets a blob's parked chunks (`has` no longer answers for them); returns how many there were. */
  unpark(hex: string): number {
    const entry = this.entries.get(hex);
    const parked = entry?.parked;
    if (!entry || !parked) return 0;
    for (const index of parked) {
      entry.blob.have.clear(index);
      entry.blob.hashes.delete(index);
    }
    entry.parked = undefined;
    return parked.size;
  }

  /** How many of a blob's chunks are parked in memory rather than on disk. */
  parkedChunks(hex: string): number {
    return this.entries.get(hex)?.parked?.size ?? 0;
  }

  /** Whether writes are refused now because the disk was found full (see `diskFullRetryMs`). */
  get diskFull(): boolean {
    return this.diskFullUntil > 0 && this.now() < this.diskFullUntil;
  }

  private noteDiskFull(): void {
    this.diskFullWrites++;
    this.diskFullUntil = this.now() + this.diskFullRetryMs;
  }

  async readChunk(hex: string, index: number): Promise<Buffer> {
    this.touch(hex);
    return readFile(this.chunkPath(hex, index));
  }

  /** Reads [start, end) of a chunk without loading the rest. */
  async readChunkRange(hex: string, index: number, start: number, end: number): Promise<Buffer> {
    this.touch(hex);
    const handle = await open(this.chunkPath(hex, index), 'r');
    try {
      const out = Buffer.allocUnsafe(end - start);
      const { bytesRead } = await handle.read(out, 0, out.length, start);
      return out.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  }

  chunkPaths(hex: string): string[] {
    const blob = this.entries.get(hex)?.blob;
    if (!blob) return [];
    return Array.from({ length: blob.have.length }, (_, i) => this.chunkPath(hex, i));
  }

  async markComplete(hex: string): Promise<void> {
    const entry = this.entries.get(hex);
    if (!entry) return;
    await writeFile(join(this.blobDir(hex), COMPLETE_FILE), '');
    entry.blob.complete = true;
  }

  /** Removes a blob at once, pinned or not (a blob that failed verification); `onEvict` is not called. */
  async remove(hex: string): Promise<void> {
    if (this.detach(hex) > 0) this.diskFullUntil = 0;
    await this.removeDir(hex);
  }

  /**
   * Records an access to a blob (a chunk served from its files, say), making it the most recently used.
   * The time reaches the disk at most once per `accessPersistMs`.
   */
  touch(hex: string): void {
    const entry = this.entries.get(hex);
    if (!entry) return;
    const now = this.now();
    entry.lastAccess = now;
    this.entries.delete(hex);
    this.entries.set(hex, entry);
    if (now - entry.persistedAccess >= this.accessPersistMs) this.persistAccess(hex, entry, now);
  }

  /** When the blob was last accessed (ms since the epoch), as far as the store knows. */
  accessedAt(hex: string): number | undefined {
    return this.entries.get(hex)?.lastAccess;
  }

  /**
   * Keeps a blob from being evicted until the returned function is called (more than once is harmless).
   * Pins nest; a blob may be pinned before `ensure` registers it. Taking and releasing a pin count as
   * accesses.
   */
  pin(hex: string): () => void {
    this.pins.set(hex, (this.pins.get(hex) ?? 0) + 1);
    this.touch(hex);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.pins.get(hex) ?? 1) - 1;
      if (left > 0) this.pins.set(hex, left);
      else this.pins.delete(hex);
      this.touch(hex);
      if (left > 0) return;
      const waiters = this.unpinWaiters.get(hex);
      this.unpinWaiters.delete(hex);
      for (const wake of waiters ?? []) wake();
    };
  }

  isPinned(hex: string): boolean {
    return this.pins.has(hex);
  }

  /**
   * Calls `callback` once the blob is pinned by no one: at once if it is not pinned now, else in the same
   * tick as its last pin is released, before anyone can pin it again.
   */
  afterUnpinned(hex: string, callback: () => void): void {
    if (!this.pins.has(hex)) {
      callback();
      return;
    }
    const waiters = this.unpinWaiters.get(hex) ?? [];
    waiters.push(callback);
    this.unpinWaiters.set(hex, waiters);
  }

  /**
   * Whether `bytes` more can be cached without going over maxBytes, once every blob that is not pinned
   * has been evicted. False means the cache is full of blobs in use: a caller that gets it should serve
   * the bytes without caching them (or pass the request through to the registry) rather than write.
   * Also false while the disk is full (see `diskFullRetryMs`).
   */
  canStore(bytes: number): boolean {
    if (this.diskFull) return false;
    if (this.maxBytes === 0) return true;
    const held = this.bytes + this.reserved;
    if (held + bytes <= this.maxBytes) return true;
    let pinned = 0;
    for (const [hex, entry] of this.entries) if (this.pins.has(hex)) pinned += entry.bytes;
    return pinned + this.reserved + bytes <= this.maxBytes;
  }

  /**
   * Evicts blobs idle for longer than the TTL, then, if the cache (with the writes under way) is over its
   * high watermark, the least recently used unpinned blobs until it is down to its low watermark. Runs
   * after every write that would cross the high watermark; the agent also calls it on a timer (for the
   * TTL). Sweeps run one at a time; the promise resolves once the evicted directories are deleted.
   */
  sweep(): Promise<SweepResult> {
    const run = this.sweepTail.then(() => this.sweepOnce());
    this.sweepTail = run.catch(() => undefined);
    return run;
  }

  /**
   * Makes room on a disk found full: a sweep as if maxBytes were what the cache holds now, so the least
   * recently used unpinned blobs go down to `lowWatermark` of it.
   */
  private makeRoom(): Promise<SweepResult> {
    const run = this.sweepTail.then(() => this.sweepOnce(this.bytes));
    this.sweepTail = run.catch(() => undefined);
    return run;
  }

  private async sweepOnce(fullAt?: number): Promise<SweepResult> {
    const evicted: EvictedBlob[] = [];
    const evict = (hex: string, reason: EvictReason) => {
      const bytes = this.detach(hex);
      this.evictions++;
      this.evictedBytes += bytes;
      evicted.push({ hex, reason, bytes });
      this.onEvict?.(hex, reason, bytes);
    };
    if (this.ttlMs > 0) {
      const now = this.now();
      // Every entry is looked at (not only up to the first fresh one): a clock stepped back could leave
      // the index slightly out of order.
      for (const [hex, entry] of [...this.entries]) {
        if (now - entry.lastAccess > this.ttlMs && !this.pins.has(hex)) evict(hex, 'ttl');
      }
    }
    if (this.maxBytes > 0 && this.bytes + this.reserved > this.highBytes) {
      // A snapshot of the order, in case onEvict touches another blob (which moves it to the end).
      for (const hex of [...this.entries.keys()]) {
        if (this.bytes + this.reserved <= this.lowBytes) break;
        if (this.entries.has(hex) && !this.pins.has(hex)) evict(hex, 'capacity');
      }
    }
    if (fullAt !== undefined) {
      // The disk holds no more than this: down to the low watermark of it, without the writes under way
      // (they are what found the disk full).
      for (const hex of [...this.entries.keys()]) {
        if (this.bytes <= fullAt * this.low) break;
        if (this.entries.has(hex) && !this.pins.has(hex)) evict(hex, 'disk_full');
      }
    }
    if (evicted.length > 0) {
      this.roomMade++;
      this.diskFullUntil = 0;
    }
    const errors: SweepResult['errors'] = [];
    await Promise.all(
      evicted.map(({ hex }) =>
        this.removeDir(hex).catch((err: unknown) => {
          errors.push({ hex, message: errorMessage(err) });
        }),
      ),
    );
    return { evicted, totalBytes: this.bytes, errors };
  }

  stats(): ChunkStoreStats {
    let pinnedBlobs = 0;
    let pinnedBytes = 0;
    for (const [hex, entry] of this.entries) {
      if (!this.pins.has(hex)) continue;
      pinnedBlobs++;
      pinnedBytes += entry.bytes;
    }
    return {
      totalBytes: this.bytes,
      blobs: this.entries.size,
      pinnedBlobs,
      pinnedBytes,
      evictions: this.evictions,
      evictedBytes: this.evictedBytes,
      diskFull: this.diskFull,
      diskFullWrites: this.diskFullWrites,
    };
  }

  /** Writes every access time not yet on disk and waits for the writes under way; for shutdown. */
  async close(): Promise<void> {
    for (const [hex, entry] of this.entries) {
      if (entry.lastAccess > entry.persistedAccess) this.persistAccess(hex, entry, entry.lastAccess);
    }
    await Promise.all([...this.persisting, ...this.removing.values()]);
  }

  /** Takes a blob out of the index, returning the bytes it held. */
  private detach(hex: string): number {
    const entry = this.entries.get(hex);
    if (!entry) return 0;
    this.entries.delete(hex);
    this.bytes -= entry.bytes;
    return entry.bytes;
  }

  /**
   * Moves the blob's directory out of `blobs/` in one rename, then deletes it: a blob registered again
   * meanwhile gets a fresh directory that the deletion cannot touch.
   */
  private removeDir(hex: string): Promise<void> {
    const blobDir = this.blobDir(hex);
    const previous = this.removing.get(hex) ?? Promise.resolve();
    const run = previous.then(async () => {
      const doomed = join(this.trash, `${hex}.${process.pid}.${this.tempCounter++}`);
      await mkdir(this.trash, { recursive: true });
      try {
        await rename(blobDir, doomed);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
        await rm(blobDir, { recursive: true, force: true });
        return;
      }
      await rm(doomed, { recursive: true, force: true });
    });
    const settled = run.catch(() => undefined);
    this.removing.set(hex, settled);
    void settled.then(() => {
      if (this.removing.get(hex) === settled) this.removing.delete(hex);
    });
    return run;
  }

  private persistAccess(hex: string, entry: Entry, at: number): void {
    entry.persistedAccess = at;
    const seconds = at / 1000;
    // A blob evicted meanwhile has no directory any more: nothing to record.
    const write = utimes(this.blobDir(hex), seconds, seconds).catch(() => undefined);
    this.persisting.add(write);
    void write.then(() => this.persisting.delete(write));
  }
}
