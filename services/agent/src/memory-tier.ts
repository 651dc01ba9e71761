/**
 * Hot chunks kept in memory, in front of the disk cache: those being served to peers or streamed to the
 * runtime, which several readers want within seconds of each other. A byte-budgeted LRU of whole chunks.
 *
 * `put` copies the chunk into memory of the tier's own: callers hand in buffers from the BufferPool,
 * which go back to the pool (and are overwritten by the next fetch) or are moved to a hash worker as soon
 * as the caller is done, so holding on to them would serve someone else's bytes. The copy is one memcpy
 * per chunk admitted, paid only for chunks chosen as hot. Buffers returned by `get` are shared: callers
 * must not modify them nor give them to a BufferPool; they may keep them as long as they like (a socket
 * still writing one keeps it alive after the tier forgot it), since the tier never reuses its memory.
 *
 * Apart from the budget, the tier parks the chunks a download could not write to a full disk (`park`):
 * the clients of that download are served from them, as from hot chunks, so a pull goes on uncached
 * rather than fail. They are not evicted for room; their download lets them go (`unpark`) once no one
 * is reading the blob any more. Parked chunks are limited in all (`parkLimit`, `cache.parkedMemory`):
 * beyond it `park` refuses, and the download fails as it would without them.
 */

export interface MemoryTierStats {
  hits: number;
  misses: number;
  /** Bytes of chunks held, and how many. */
  bytes: number;
  entries: number;
  /** Chunks dropped to stay within the budget (not those dropped with their blob). */
  evictions: number;
  budget: number;
}

function keyOf(hex: string, index: number): string {
  return `${hex}/${index}`;
}

/** Bytes of chunks parked for full-disk downloads, in all, unless the constructor is told otherwise. */
export const DEFAULT_PARK_LIMIT = 256 * 1024 * 1024;

export class MemoryTier {
  /** Chunks by key, least recently used first: a hit or a put moves a chunk to the end. */
  private readonly chunks = new Map<string, Buffer>();
  /** The chunk indices held of each blob, so that a blob can be dropped without a scan. */
  private readonly byBlob = new Map<string, Set<number>>();
  private held = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  /** Chunks the disk had no room for, by blob and index, outside the budget (see `park`). */
  private readonly parked = new Map<string, Map<number, Buffer>>();
  private parkedBytes = 0;

  /**
   * @param budget bytes of hot chunks held at most; 0 turns the tier off (chunks may still be parked).
   * @param parkLimit bytes of chunks parked for full-disk downloads at most, over every blob.
   */
  constructor(
    private budget: number,
    private readonly parkLimit = DEFAULT_PARK_LIMIT,
  ) {
    if (!(budget >= 0)) throw new RangeError('the memory tier budget must be 0 or more');
    if (!(parkLimit >= 0)) throw new RangeError('the park limit must be 0 or more');
  }

  /**
   * The chunk if parked or held (and marks a held one recently used). Counts a hit, or a miss while the
   * tier is on.
   */
  get(hex: string, index: number): Buffer | undefined {
    const parked = this.parked.get(hex)?.get(index);
    if (parked) {
      this.hits++;
      return parked;
    }
    if (this.budget === 0) return undefined;
    const key = keyOf(hex, index);
    const chunk = this.chunks.get(key);
    if (!chunk) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.chunks.delete(key);
    this.chunks.set(key, chunk);
    return chunk;
  }

  has(hex: string, index: number): boolean {
    return this.parkedChunk(hex, index) !== undefined || this.chunks.has(keyOf(hex, index));
  }

  /** The chunk if parked here for a download whose disk was full (not counted as a hit). */
  parkedChunk(hex: string, index: number): Buffer | undefined {
    return this.parked.get(hex)?.get(index);
  }

  /**
   * Keeps a copy of a verified chunk that could not be written to the disk cache, outside the budget,
   * until `unpark(hex)`. Returns false, keeping nothing, when that would take the chunks parked over
   * `parkLimit`. A chunk already parked is kept once.
   */
  park(hex: string, index: number, chunk: Buffer): boolean {
    let chunks = this.parked.get(hex);
    if (chunks?.has(index)) return true;
    if (this.parkedBytes + chunk.length > this.parkLimit) return false;
    const copy = Buffer.allocUnsafeSlow(chunk.length);
    chunk.copy(copy);
    if (!chunks) this.parked.set(hex, (chunks = new Map<number, Buffer>()));
    chunks.set(index, copy);
    this.parkedBytes += copy.length;
    return true;
  }

  /** Lets go of the chunks parked for a blob; returns how many there were. */
  unpark(hex: string): number {
    const chunks = this.parked.get(hex);
    if (!chunks) return 0;
    for (const chunk of chunks.values()) this.parkedBytes -= chunk.length;
    this.parked.delete(hex);
    return chunks.size;
  }

  /** Chunks parked for full-disk downloads, their bytes, and the most that may be. */
  parking(): { chunks: number; bytes: number; limit: number } {
    let chunks = 0;
    for (const parked of this.parked.values()) chunks += parked.size;
    return { chunks, bytes: this.parkedBytes, limit: this.parkLimit };
  }

  /**
   * Keeps a copy of a verified chunk, evicting the least recently used chunks to make room. A chunk
   * already held is only marked recently used (chunks are content-addressed, so its bytes are the same).
   * Returns whether the chunk is held: not when the tier is off or the chunk alone exceeds the budget.
   */
  put(hex: string, index: number, chunk: Buffer): boolean {
    if (this.budget === 0 || chunk.length > this.budget) return false;
    const key = keyOf(hex, index);
    const existing = this.chunks.get(key);
    if (existing) {
      this.chunks.delete(key);
      this.chunks.set(key, existing);
      return true;
    }
    this.shrinkTo(this.budget - chunk.length);
    const copy = Buffer.allocUnsafeSlow(chunk.length);
    chunk.copy(copy);
    this.chunks.set(key, copy);
    let indices = this.byBlob.get(hex);
    if (!indices) this.byBlob.set(hex, (indices = new Set()));
    indices.add(index);
    this.held += copy.length;
    return true;
  }

  /**
   * Forgets every chunk of a blob, parked ones too (evicted from the disk cache, or found invalid);
   * returns how many.
   */
  drop(hex: string): number {
    const parked = this.unpark(hex);
    const indices = this.byBlob.get(hex);
    if (!indices) return parked;
    for (const index of indices) this.forget(keyOf(hex, index));
    this.byBlob.delete(hex);
    return parked + indices.size;
  }

  /** Changes the budget at run time, evicting at once down to a smaller one; 0 empties the tier. */
  setBudget(budget: number): void {
    if (!(budget >= 0)) throw new RangeError('the memory tier budget must be 0 or more');
    this.budget = budget;
    this.shrinkTo(budget);
  }

  clear(): void {
    this.chunks.clear();
    this.byBlob.clear();
    this.held = 0;
    this.parked.clear();
    this.parkedBytes = 0;
  }

  stats(): MemoryTierStats {
    return {
      hits: this.hits,
      misses: this.misses,
      bytes: this.held,
      entries: this.chunks.size,
      evictions: this.evictions,
      budget: this.budget,
    };
  }

  private shrinkTo(bytes: number): void {
    for (const key of this.chunks.keys()) {
      if (this.held <= bytes) return;
      this.forget(key);
      this.evictions++;
      const slash = key.indexOf('/');
      const hex = key.slice(0, slash);
      const indices = this.byBlob.get(hex);
      indices?.delete(Number(key.slice(slash + 1)));
      if (indices?.size === 0) this.byBlob.delete(hex);
    }
  }

  private forget(key: string): void {
    const chunk = this.chunks.get(key);
    if (!chunk) return;
    this.chunks.delete(key);
    this.held -= chunk.length;
  }
}
