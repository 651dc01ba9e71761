/** Records for building scheduler state by hand in tests. */
import { Bitmap, MiB, type HolderRecord, type ManifestRecord, type NodeRecord } from '@shoal/mesh';

export const hex = (c: string) => c.repeat(64).slice(0, 64);
export const digestOf = (c: string) => `sha256:${hex(c)}`;

export function node(id: string, zone: string, vswitch: string, seenAt = Date.now()): NodeRecord {
  return {
    id,
    url: `http://${id}.test:65001`,
    zone,
    vswitch,
    pool: 'default',
    startedAt: seenAt - 60_000,
    seenAt,
  };
}

export function manifest(blob: string, chunks: number, known: number[] | 'all' = 'all'): ManifestRecord {
  const hashes = Array.from({ length: chunks }, (_, i) =>
    known === 'all' || known.includes(i) ? (i % 16).toString(16).repeat(64) : '',
  );
  return { blob, size: chunks * MiB, chunkSize: MiB, hashes };
}

export function holder(
  nodeId: string,
  blob: string,
  chunks: number,
  have: number[] | 'all',
  seq = 1,
): HolderRecord {
  const bits = have === 'all' ? Bitmap.full(chunks) : new Bitmap(chunks);
  if (have !== 'all') for (const i of have) bits.set(i);
  return {
    node: nodeId,
    blob,
    seq,
    chunkCount: chunks,
    have: bits.toBase64(),
    complete: bits.isFull(),
    at: Date.now(),
  };
}
