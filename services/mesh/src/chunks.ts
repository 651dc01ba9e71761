/**
 * Chunk layout of a blob. Every node must split a blob the same way, so the layout is a pure function of
 * the blob size and the chunk-size policy, and the chunk size recorded in the blob's manifest wins.
 */

export const MiB = 1024 * 1024;

export interface ChunkPolicy {
  /** A fixed chunk size in bytes, or 0 to derive it from the blob size. */
  fixedSize: number;
  minSize: number;
  maxSize: number;
  /** The number of chunks a blob should have at most, before maxSize caps the size. */
  targetCount: number;
}

export const defaultChunkPolicy: ChunkPolicy = {
  fixedSize: 0,
  minSize: MiB,
  maxSize: 64 * MiB,
  targetCount: 256,
};

/** Chooses the chunk size: a power of two between minSize and maxSize giving at most targetCount chunks. */
export function chooseChunkSize(blobSize: number, policy: ChunkPolicy = defaultChunkPolicy): number {
  if (policy.fixedSize > 0) return policy.fixedSize;
  let size = policy.minSize;
  while (size < policy.maxSize && Math.ceil(blobSize / size) > policy.targetCount) size *= 2;
  return Math.min(size, policy.maxSize);
}

export function chunkCount(blobSize: number, chunkSize: number): number {
  return blobSize === 0 ? 0 : Math.ceil(blobSize / chunkSize);
}

/** The byte range [start, end) of chunk `index`. */
export function chunkRange(
  blobSize: number,
  chunkSize: number,
  index: number,
): { start: number; end: number } {
  const start = index * chunkSize;
  return { start, end: Math.min(start + chunkSize, blobSize) };
}

/** A fixed-length bit set, sent as base64 so that a 5,000-chunk blob announces in under 1 KiB. */
export class Bitmap {
  private readonly bits: Uint8Array;

  constructor(
    readonly length: number,
    bits?: Uint8Array,
  ) {
    this.bits = bits ?? new Uint8Array(Math.ceil(length / 8));
  }

  static fromBase64(length: number, text: string): Bitmap {
    const bytes = Buffer.from(text, 'base64');
    const bits = new Uint8Array(Math.ceil(length / 8));
    bits.set(bytes.subarray(0, bits.length));
    return new Bitmap(length, bits);
  }

  static full(length: number): Bitmap {
    const map = new Bitmap(length);
    for (let i = 0; i < length; i++) map.set(i);
    return map;
  }

  has(index: number): boolean {
    if (index < 0 || index >= this.length) return false;
    return ((this.bits[index >> 3] ?? 0) & (1 << (index & 7))) !== 0;
  }

  set(index: number): void {
    if (index < 0 || index >= this.length)
      throw new RangeError(`chunk ${index} out of range 0..${this.length - 1}`);
    this.bits[index >> 3] = (this.bits[index >> 3] ?? 0) | (1 << (index & 7));
  }

  clear(index: number): void {
    if (index < 0 || index >= this.length) return;
    this.bits[index >> 3] = (this.bits[index >> 3] ?? 0) & ~(1 << (index & 7));
  }

  count(): number {
    let n = 0;
    for (let i = 0; i < this.length; i++) if (this.has(i)) n++;
    return n;
  }

  isFull(): boolean {
    return this.count() === this.length;
  }

  indices(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.length; i++) if (this.has(i)) out.push(i);
    return out;
  }

  toBase64(): string {
    return Buffer.from(this.bits).toString('base64');
  }
}
