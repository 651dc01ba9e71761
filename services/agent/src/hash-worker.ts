/**
 * Hashing runs in worker threads so that verifying MiB-sized chunks never stalls the event loop that
 * streams bytes to the runtime. Tasks are pure functions of their input; buffers are moved, not copied.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { move, transferableSymbol, valueSymbol } from 'piscina';

export type HashTask =
  { kind: 'chunk'; buffer: ArrayBuffer; offset: number; length: number } | { kind: 'files'; paths: string[] };

export type HashResult =
  { kind: 'chunk'; sha256: string; buffer: ArrayBuffer } | { kind: 'files'; sha256: string };

export default async function hash(task: HashTask): Promise<unknown> {
  if (task.kind === 'chunk') {
    const sha256 = createHash('sha256')
      .update(new Uint8Array(task.buffer, task.offset, task.length))
      .digest('hex');
    const result: HashResult = { kind: 'chunk', sha256, buffer: task.buffer };
    // The buffer goes back to the caller by transfer, so a 64 MiB chunk is never copied between threads.
    return move({
      get [transferableSymbol]() {
        return [task.buffer];
      },
      get [valueSymbol]() {
        return result;
      },
    });
  }
  return { kind: 'files', sha256: hashFiles(task.paths) } satisfies HashResult;
}

/** Bytes read from a file at a time when hashing files. */
const READ_SIZE = 1024 * 1024;
/** The worker's one read buffer, reused for every file it hashes. */
let scratch: Buffer | undefined;

/**
 * Hashes the concatenation of files through one buffer, read synchronously: the worker has nothing else
 * to do meanwhile. A read stream allocated a fresh MiB per read, and a worker thread allocates so little
 * else that its garbage collector ran rarely: every blob verified left its size in dead buffers, tens of
 * MiB of an agent's memory, until then.
 */
function hashFiles(paths: string[]): string {
  const hasher = createHash('sha256');
  const buffer = (scratch ??= Buffer.allocUnsafeSlow(READ_SIZE));
  for (const path of paths) {
    const fd = openSync(path, 'r');
    try {
      let read: number;
      while ((read = readSync(fd, buffer, 0, READ_SIZE, null)) > 0) hasher.update(buffer.subarray(0, read));
    } finally {
      closeSync(fd);
    }
  }
  return hasher.digest('hex');
}
