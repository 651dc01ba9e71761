/** Announcements and digests for announcer tests. */
import { Bitmap, MiB, type Announcement } from '@shoal/mesh';

export const hexOf = (n: number) => n.toString(16).padStart(64, '0');
export const blobOf = (n: number) => `sha256:${hexOf(n)}`;
/** A deterministic "sha256" for chunk `index` of blob `n`; `variant` makes a conflicting one. */
export const hashOf = (n: number, index: number, variant = 0) =>
  `${(n * 1000 + index * 10 + variant).toString(16).padStart(8, '0')}`.repeat(8);

export function chunks(
  node: string,
  n: number,
  seq: number,
  have: number[],
  options: { chunks?: number; chunkSize?: number; hashes?: Record<number, string>; size?: number } = {},
): Announcement {
  const count = options.chunks ?? 4;
  const chunkSize = options.chunkSize ?? MiB;
  const bits = new Bitmap(count);
  for (const i of have) bits.set(i);
  const hashes: Record<string, string> = {};
  for (const [k, v] of Object.entries(options.hashes ?? {})) hashes[k] = v;
  return {
    type: 'chunks',
    node,
    blob: blobOf(n),
    size: options.size ?? count * chunkSize,
    chunkSize,
    seq,
    have: bits.toBase64(),
    hashes,
    complete: bits.isFull(),
  };
}

/** Hashes for `indices` of blob `n`, as a node that fetched them from the origin would announce them. */
export function hashesFor(n: number, indices: number[]): Record<number, string> {
  return Object.fromEntries(indices.map((i) => [i, hashOf(n, i)]));
}

export function withdraw(node: string, n: number, seq: number, invalid?: boolean): Announcement {
  return { type: 'withdraw', node, blob: blobOf(n), seq, ...(invalid ? { invalid } : {}) };
}
