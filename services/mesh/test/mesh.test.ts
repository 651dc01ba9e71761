import { describe, expect, it } from 'vitest';
import { Bitmap, chooseChunkSize, chunkCount, chunkRange, MiB } from '../src/chunks.js';
import { assertRepositoryName, parseDigest } from '../src/digest.js';
import { ErrorCodes, isShoalError, ociErrorBody, ShoalError } from '../src/errors.js';
import { chunksAnnouncement, decode, encode, scheduleRequest } from '../src/messages.js';
import { chunkKeys, isValidToken, nodeIdOf, subjects } from '../src/subjects.js';
import { parseBytes, parseDurationMs } from '../src/units.js';

const digest = `sha256:${'a'.repeat(64)}`;

describe('subjects', () => {
  it('builds subjects from validated tokens', () => {
    expect(subjects.announce('node-1')).toBe('shoal.announce.node-1');
    expect(subjects.event('chunk_fetched', 'node-1')).toBe('shoal.events.chunk_fetched.node-1');
    expect(() => subjects.announce('a.b')).toThrow(/invalid node id/);
    expect(() => subjects.announce('*')).toThrow(/invalid node id/);
    expect(() => subjects.heartbeat('')).toThrow(/invalid node id/);
  });

  it('round-trips chunk-index keys', () => {
    expect(chunkKeys.parse(chunkKeys.holder('ab', 'n1'))).toEqual({
      kind: 'holder',
      blobHex: 'ab',
      node: 'n1',
    });
    expect(chunkKeys.parse(chunkKeys.manifest('ab'))).toEqual({ kind: 'manifest', blobHex: 'ab' });
    expect(chunkKeys.parse('x.y')).toBeNull();
  });
});

describe('messages', () => {
  it('accepts a valid announcement and names the first bad field of an invalid one', () => {
    const good = {
      type: 'chunks',
      node: 'n1',
      blob: digest,
      size: 10,
      chunkSize: MiB,
      seq: 1,
      have: 'AQ==',
      complete: false,
    };
    expect(decode(chunksAnnouncement, encode(good), 'announcement')).toEqual(good);
    try {
      decode(chunksAnnouncement, encode({ ...good, blob: 'sha256:zz' }), 'announcement');
      expect.unreachable();
    } catch (err) {
      expect(isShoalError(err, 'SHOAL_ERR_BAD_MESSAGE')).toBe(true);
      expect((err as Error).message).toMatch(/^announcement: blob: digest must be/);
    }
    expect(() => decode(chunksAnnouncement, 'not json', 'announcement')).toThrow(/not JSON/);
  });

  it('defaults the avoid list of a schedule request', () => {
    const parsed = decode(
      scheduleRequest,
      encode({ v: 1, node: 'n1', blob: digest, size: 5, chunkSize: MiB, need: [0] }),
      'schedule request',
    );
    expect(parsed.avoid).toEqual([]);
  });
});

describe('chunks', () => {
  it('chooses a power-of-two chunk size that grows with the blob', () => {
    expect(chooseChunkSize(10)).toBe(MiB);
    expect(chooseChunkSize(16 * MiB)).toBe(MiB);
    expect(chooseChunkSize(512 * MiB)).toBe(2 * MiB);
    expect(chooseChunkSize(5 * 1024 * MiB)).toBe(32 * MiB);
    expect(chooseChunkSize(1024 * 1024 * MiB)).toBe(64 * MiB);
    expect(
      chooseChunkSize(1, { fixedSize: 4 * MiB, minSize: MiB, maxSize: 64 * MiB, targetCount: 256 }),
    ).toBe(4 * MiB);
  });

  it('splits a blob into ranges that cover it exactly', () => {
    const size = 5 * MiB + 3;
    const n = chunkCount(size, MiB);
    expect(n).toBe(6);
    expect(chunkRange(size, MiB, 5)).toEqual({ start: 5 * MiB, end: size });
    expect(chunkCount(0, MiB)).toBe(0);
  });

  it('keeps a bitmap through base64', () => {
    const map = new Bitmap(13);
    map.set(0);
    map.set(12);
    const back = Bitmap.fromBase64(13, map.toBase64());
    expect(back.indices()).toEqual([0, 12]);
    expect(back.has(13)).toBe(false);
    expect(Bitmap.full(9).isFull()).toBe(true);
    expect(() => map.set(13)).toThrow(RangeError);
  });
});

describe('digests, names, units and errors', () => {
  it('validates digests and repository names', () => {
    expect(parseDigest(digest).hex).toBe('a'.repeat(64));
    expect(() => parseDigest('sha256:../../etc')).toThrow(/invalid digest/);
    expect(() => assertRepositoryName('library/alpine')).not.toThrow();
    for (const bad of ['..', '../x', 'a/../b', 'A/b', 'a//b', '/a', '']) {
      expect(() => assertRepositoryName(bad)).toThrow(/invalid repository name/);
    }
  });

  it('maps machine names to node IDs, keeping long ones apart', () => {
    expect(nodeIdOf('cn-hangzhou.10.0.0.5')).toBe('cn-hangzhou-10-0-0-5');
    expect(nodeIdOf('')).toBe('node');
    const long = (tail: string) => `gke-production-cluster-default-pool-0123456789-abcd.internal.${tail}`;
    const [a, b] = [nodeIdOf(long('zone-a')), nodeIdOf(long('zone-b'))];
    expect(a).not.toBe(b);
    for (const id of [a, b]) expect(isValidToken(id)).toBe(true);
    expect(nodeIdOf(long('zone-a'))).toBe(a);
  });

  it('parses units', () => {
    expect(parseDurationMs('250ms')).toBe(250);
    expect(parseDurationMs('1.5s')).toBe(1500);
    expect(parseDurationMs('2m')).toBe(120_000);
    expect(parseDurationMs('7d')).toBe(7 * 86_400_000);
    expect(parseDurationMs('fast')).toBeUndefined();
    expect(parseBytes('4MiB')).toBe(4 * MiB);
    expect(parseBytes('1GB')).toBe(1e9);
    expect(parseBytes('12')).toBe(12);
    expect(parseBytes('4 parsecs')).toBeUndefined();
  });

  it('maps codes to statuses and OCI bodies', () => {
    const err = new ShoalError('SHOAL_ERR_DIGEST_INVALID', 'bad');
    expect(err.status).toBe(400);
    expect(ociErrorBody(err)).toEqual({ errors: [{ code: 'DIGEST_INVALID', message: 'bad' }] });
    expect(ShoalError.fromWire(err.toWire()).code).toBe('SHOAL_ERR_DIGEST_INVALID');
    for (const entry of Object.values(ErrorCodes)) expect(entry.status).toBeGreaterThanOrEqual(400);
  });
});

describe('log redaction', () => {
  it('removes credentials however deep they sit in a log object', async () => {
    const { pino } = await import('pino');
    const { loggerOptions } = await import('../src/logger.js');
    const lines: string[] = [];
    const log = pino(loggerOptions('test', 'info'), { write: (line: string) => lines.push(line) });
    log.info(
      {
        authorization: 'Basic c2VjcmV0MQ==',
        headers: { authorization: 'Bearer secret2', cookie: 'secret3' },
        err: { request: { headers: { Authorization: 'Bearer secret4', 'proxy-authorization': 'secret5' } } },
        nats: { password: 'secret6', token: 'secret7' },
      },
      'request failed',
    );
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toMatch(/secret|c2VjcmV0MQ/);
    expect(lines[0]).toContain('[redacted]');
  });
});
