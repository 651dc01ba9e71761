/**
 * Chunk buffers are reused rather than allocated per chunk. A fresh MiB-sized buffer costs the kernel a
 * page-zeroing fault per page and V8 a major garbage collection every few dozen MiB of external memory;
 * an agent receiving at link speed paid more for that than for hashing what it received.
 */

/** Buffers are kept in classes of powers of two from 64 KiB, so a blob's short last chunk reuses one too. */
const MIN_CLASS = 64 * 1024;

function classOf(length: number): number {
  let size = MIN_CLASS;
  while (size < length) size *= 2;
  return size;
}

/** Idle buffers are released once none has been taken for this long, so an idle agent holds none. */
const IDLE_RELEASE_MS = 10_000;

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private idle = 0;
  private release: NodeJS.Timeout | undefined;

  /** @param keepBytes idle bytes kept for reuse; buffers beyond that are left to the garbage collector. */
  constructor(private readonly keepBytes: number) {}

  /**
   * A buffer of exactly `length` bytes (contents undefined) over an ArrayBuffer of its own, which may
   * be moved to a worker thread.
   */
  take(length: number): Buffer {
    const size = classOf(length);
    const reused = this.free.get(size)?.pop();
    if (reused) this.idle -= size;
    this.release?.refresh();
    return Buffer.from(reused ?? new ArrayBuffer(size), 0, length);
  }

  /**
   * Hands a buffer from `take` back once nothing reads it any more. A buffer whose memory was moved to
   * another thread (and not handed back) is ignored.
   */
  give(buffer: Buffer): void {
    const memory = buffer.buffer as ArrayBuffer;
    const size = memory.byteLength;
    if (size < MIN_CLASS || size !== classOf(size) || buffer.byteOffset !== 0) return;
    if (this.idle + size > this.keepBytes) return;
    let same = this.free.get(size);
    if (!same) this.free.set(size, (same = []));
    if (same.includes(memory)) return;
    same.push(memory);
    this.idle += size;
    this.release?.refresh();
    this.release ??= setTimeout(() => this.clear(), IDLE_RELEASE_MS).unref();
  }

  /** Bytes held idle for reuse. */
  get idleBytes(): number {
    return this.idle;
  }

  /** Lets go of every idle buffer. */
  clear(): void {
    clearTimeout(this.release);
    this.release = undefined;
    this.free.clear();
    this.idle = 0;
  }
}
