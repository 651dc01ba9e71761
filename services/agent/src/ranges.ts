/** HTTP Range parsing for blob requests (a single byte range, as registries and runtimes use). */
import { ShoalError } from '@shoal/mesh';

export interface ByteRange {
  start: number;
  /** Exclusive. */
  end: number;
}

/** Returns the requested range, or undefined for the whole blob; throws SHOAL_ERR_RANGE_INVALID. */
export function parseRange(header: string | undefined, size: number): ByteRange | undefined {
  if (header === undefined) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '')) {
    throw new ShoalError(
      'SHOAL_ERR_RANGE_INVALID',
      `unsupported or malformed range "${header.slice(0, 100)}"`,
      {
        details: { size },
      },
    );
  }
  const [, first = '', last = ''] = match;
  let start: number;
  let end: number;
  if (first === '') {
    const suffix = Number(last);
    start = Math.max(0, size - suffix);
    end = size;
  } else {
    start = Number(first);
    end = last === '' ? size : Math.min(Number(last) + 1, size);
  }
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start >= size || end <= start) {
    throw new ShoalError(
      'SHOAL_ERR_RANGE_INVALID',
      `range "${header.slice(0, 100)}" is outside the blob of ${size} bytes`,
      {
        details: { size },
      },
    );
  }
  return { start, end };
}
