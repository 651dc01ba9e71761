/** The pool of hashing workers. Its size comes from config; its utilisation feeds a metric. */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import type { HashResult, HashTask } from './hash-worker.js';

export interface HashPool {
  /**
   * Hashes a chunk; its memory is lent to a worker and handed back with the result, as `chunk`. With
   * `whole`, the caller owns the chunk's entire ArrayBuffer (a pooled buffer), which is moved as it is;
   * otherwise a chunk that shares its ArrayBuffer is copied once first.
   */
  hashChunk(chunk: Buffer, whole?: boolean): Promise<{ sha256: string; chunk: Buffer }>;
  /** Hashes the concatenation of files, streaming, off the event loop. */
  hashFiles(paths: string[]): Promise<string>;
  utilization(): number;
  close(): Promise<void>;
}

function workerFile(): { filename: string; execArgv: string[] } {
  const compiled = fileURLToPath(new URL('./hash-worker.js', import.meta.url));
  if (existsSync(compiled)) return { filename: compiled, execArgv: [] };
  // Running from TypeScript sources (unit tests): the worker needs the same loader as its parent.
  return {
    filename: fileURLToPath(new URL('./hash-worker.ts', import.meta.url)),
    execArgv: ['--import', 'tsx'],
  };
}

export function createHashPool(threads: number): HashPool {
  const { filename, execArgv } = workerFile();
  const pool = new Piscina({
    filename,
    minThreads: threads,
    maxThreads: threads,
    execArgv,
    idleTimeout: 60_000,
  });
  return {
    async hashChunk(chunk, whole = false) {
      // Moving a slice of Node's shared Buffer pool would detach the pool itself, so a chunk that may
      // share its ArrayBuffer is copied once into an ArrayBuffer of its own.
      let owned = chunk;
      if (!whole && (chunk.byteOffset !== 0 || chunk.byteLength !== chunk.buffer.byteLength)) {
        owned = Buffer.allocUnsafeSlow(chunk.byteLength);
        chunk.copy(owned);
      }
      const task: HashTask = {
        kind: 'chunk',
        buffer: owned.buffer as ArrayBuffer,
        offset: owned.byteOffset,
        length: owned.byteLength,
      };
      const result = (await pool.run(task, { transferList: [task.buffer] })) as HashResult;
      if (result.kind !== 'chunk') throw new Error('hash worker answered the wrong task');
      return { sha256: result.sha256, chunk: Buffer.from(result.buffer, task.offset, task.length) };
    },
    async hashFiles(paths) {
      const result = (await pool.run({ kind: 'files', paths } satisfies HashTask)) as HashResult;
      return result.sha256;
    },
    utilization: () => pool.utilization,
    close: () => pool.destroy(),
  };
}
