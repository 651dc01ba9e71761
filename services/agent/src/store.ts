/**
 * The disk cache. Each blob has a directory named by its digest holding one file per verified chunk.
 * A chunk file is written under a temporary name and renamed into place only after its sha256 matched,
 * so a chunk file that exists is always a verified chunk, including after a crash. `complete` marks a blob
 * whose whole digest was verified.
 */
import { appendFile, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Bitmap, chunkCount } from '@shoal/mesh';

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

const HASHES_FILE = 'sha256sums';
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

export class ChunkStore {
  private readonly blobs = new Map<string, StoredBlob>();
  private tempCounter = 0;
  private bytes = 0;

  constructor(private readonly dir: string) {}

  /** Loads the index from disk; partial temporary files left by a crash are removed. */
  async open(): Promise<void> {
    const root = join(this.dir, 'blobs', 'sha256');
    await mkdir(root, { recursive: true });
    for (const hex of await readdir(root)) {
      if (!hexPattern.test(hex)) continue;
      const blobDir = join(root, hex);
      let meta: unknown;
      try {
        meta = JSON.parse(await readFile(join(blobDir, 'meta.json'), 'utf8'));
      } catch {
        meta = undefined;
      }
      if (!validMeta(meta, hex)) {
        await rm(blobDir, { recursive: true, force: true });
        continue;
      }
      const hashes = new Map<number, string>();
      const sums = await readFile(join(blobDir, HASHES_FILE), 'utf8').catch(() => '');
      for (const line of sums.split('\n')) {
        const match = /^(\d+) ([a-f0-9]{64})$/.exec(line);
        if (match?.[1] && match[2]) hashes.set(Number(match[1]), match[2]);
      }
      const count = chunkCount(meta.size, meta.chunkSize);
      const have = new Bitmap(count);
      let complete = false;
      for (const name of await readdir(blobDir)) {
        if (name.endsWith('.tmp')) {
          await rm(join(blobDir, name), { force: true });
        } else if (name === 'complete' || name === HASHES_FILE || name === 'meta.json') {
          if (name === 'complete') complete = true;
          complete = true;
        } else if (/^\d+$/.test(name)) {
          const index = Number(name);
          const expected = Math.min(meta.chunkSize, meta.size - index * meta.chunkSize);
          const info = await stat(join(blobDir, name));
          if (index < count && info.size === expected) {
            have.set(index);
            this.bytes += info.size;
          } else {
            await rm(join(blobDir, name), { force: true });
          }
        }
      }
      for (const index of hashes.keys()) if (!have.has(index)) hashes.delete(index);
      this.blobs.set(hex, { meta, have, hashes, complete: complete && have.isFull() });
    }
  }

  get totalBytes(): number {
    return this.bytes;
  }

  get(hex: string): StoredBlob | undefined {
    return this.blobs.get(hex);
  }

  all(): IterableIterator<[string, StoredBlob]> {
    return this.blobs.entries();
  }

  private blobDir(hex: string): string {
    if (!hexPattern.test(hex)) throw new Error(`refusing a non-hex blob name`);
    return join(this.dir, 'blobs', 'sha256', hex);
  }

  chunkPath(hex: string, index: number): string {
    return join(this.blobDir(hex), String(index));
  }

  /** Registers a blob before its first chunk is written; an existing entry with the same layout is kept. */
  async ensure(meta: BlobMeta): Promise<StoredBlob> {
    const hex = meta.digest.slice('sha256:'.length);
    const existing = this.blobs.get(hex);
    if (existing && existing.meta.size === meta.size && existing.meta.chunkSize === meta.chunkSize)
      return existing;
    if (existing) await this.remove(hex);
    await mkdir(this.blobDir(hex), { recursive: true });
    await writeFile(join(this.blobDir(hex), 'meta.json'), JSON.stringify(meta));
    const blob: StoredBlob = {
      meta,
      have: new Bitmap(chunkCount(meta.size, meta.chunkSize)),
      hashes: new Map(),
      complete: false,
    };
    this.blobs.set(hex, blob);
    return blob;
  }

  has(hex: string, index: number): boolean {
    return this.blobs.get(hex)?.have.has(index) ?? false;
  }

  /**
   * Stores a chunk that has already been verified. Its hash is recorded first and the data is synced
   * before the rename, so a chunk file that exists after a crash or power loss is whole and verified.
   */
  async writeChunk(hex: string, index: number, data: Buffer, sha256: string): Promise<void> {
    const blob = this.blobs.get(hex);
    if (!blob) throw new Error(`blob ${hex} is not registered`);
    if (blob.have.has(index)) return;
    const final = this.chunkPath(hex, index);
    const temp = `${final}.${process.pid}.${this.tempCounter++}.tmp`;
    await appendFile(join(this.blobDir(hex), HASHES_FILE), `${index} ${sha256}\n`);
    const handle = await open(temp, 'w');
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, final);
    blob.have.set(index);
    blob.hashes.set(index, sha256);
    this.bytes += data.length;
  }

  async readChunk(hex: string, index: number): Promise<Buffer> {
    return readFile(this.chunkPath(hex, index));
  }

  /** Reads [start, end) of a chunk without loading the rest. */
  async readChunkRange(hex: string, index: number, start: number, end: number): Promise<Buffer> {
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
    const blob = this.blobs.get(hex);
    if (!blob) return [];
    return Array.from({ length: blob.have.length }, (_, i) => this.chunkPath(hex, i));
  }

  async markComplete(hex: string): Promise<void> {
    const blob = this.blobs.get(hex);
    if (!blob) return;
    await writeFile(join(this.blobDir(hex), 'complete'), '');
    blob.complete = true;
  }

  async remove(hex: string): Promise<void> {
    const blob = this.blobs.get(hex);
    if (blob) {
      for (const i of blob.have.indices()) {
        this.bytes -= Math.min(blob.meta.chunkSize, blob.meta.size - i * blob.meta.chunkSize);
      }
    }
    this.blobs.delete(hex);
    await rm(this.blobDir(hex), { recursive: true, force: true });
  }
}
