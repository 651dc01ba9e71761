/**
 * Hashing runs in worker threads so that verifying MiB-sized chunks never stalls the event loop that
 * streams bytes to the runtime. Tasks are pure functions of their input; buffers are moved, not copied.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
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
  const hasher = createHash('sha256');
  for (const path of task.paths) {
    for await (const piece of createReadStream(path, { highWaterMark: 1024 * 1024 }))
      hasher.update(piece as Buffer);
  }
  return { kind: 'files', sha256: hasher.digest('hex') } satisfies HashResult;
}
