import { describe, expect, it } from 'vitest';
import { PeerSpeeds } from '../src/peer-speeds.js';

const MiB = 1024 * 1024;

describe('PeerSpeeds', () => {
  it('sets no deadline until enough transfers from other parents are known', () => {
    const speeds = new PeerSpeeds({ factor: 4, minMs: 100 });
    expect(speeds.deadlineMs('a', MiB)).toBeUndefined();
    speeds.record('a', MiB, 10);
    speeds.record('a', MiB, 10);
    speeds.record('a', MiB, 10);
    // Three transfers, all from a: a is not compared with itself, but b is compared with a.
    expect(speeds.deadlineMs('a', MiB)).toBeUndefined();
    expect(speeds.deadlineMs('b', MiB)).toBe(100);
  });

  it('gives a parent factor times what the others median rate needs, never less than the minimum', () => {
    const speeds = new PeerSpeeds({ factor: 4, minMs: 100 });
    // 1 MiB in 50, 100 and 400 ms: the median is 10 MiB/s.
    speeds.record('a', MiB, 50);
    speeds.record('b', MiB, 100);
    speeds.record('c', MiB, 400);
    expect(speeds.deadlineMs('d', 4 * MiB)).toBe(1600);
    expect(speeds.deadlineMs('d', MiB / 8)).toBe(100);
    // A slow outlier moves the median only to between its neighbours; a parent's own samples never count.
    speeds.record('d', MiB, 60_000);
    expect(speeds.medianOfOthers('e')).toBeCloseTo((MiB / 0.4 + MiB / 0.1) / 2, -3);
    expect(speeds.medianOfOthers('d')).toBeCloseTo(MiB / 0.1, -3);
  });

  it('gives a chunk much shorter than a whole one the time of a whole one, and takes no rate from it', () => {
    const speeds = new PeerSpeeds({ factor: 4, minMs: 100 });
    // Whole 1 MiB chunks in 500 ms: 2 MiB/s, so 2 s for a whole chunk at four times that.
    for (const peer of ['a', 'b', 'c']) speeds.record(peer, MiB, 500, MiB);
    // A blob's last chunk of 2 KiB would get the 100 ms floor by its size; a busy parent's round trip alone
    // can take longer. It gets what a whole chunk gets.
    expect(speeds.deadlineMs('d', 2048, MiB)).toBe(2000);
    expect(speeds.deadlineMs('d', MiB / 2, MiB)).toBe(2000);
    // Such a transfer is no rate sample either: 2 KiB in 400 ms would drag the median down.
    for (let i = 0; i < 5; i++) speeds.record('e', 2048, 400, MiB);
    expect(speeds.medianOfOthers('d')).toBeCloseTo(2 * MiB, -3);
    // A quarter of a chunk and more counts: three samples of 0.25 MiB/s against three of 2 MiB/s.
    for (let i = 0; i < 3; i++) speeds.record('e', MiB / 4, 1000, MiB);
    expect(speeds.medianOfOthers('d')).toBeCloseTo(((0.25 + 2) / 2) * MiB, -3);
  });

  it('forgets old transfers beyond its window', () => {
    const speeds = new PeerSpeeds({ factor: 2, minMs: 1, window: 3, minSamples: 3 });
    for (let i = 0; i < 3; i++) speeds.record('slow', MiB, 1000);
    for (let i = 0; i < 3; i++) speeds.record('fast', MiB, 10);
    expect(speeds.medianOfOthers('x')).toBeCloseTo(MiB / 0.01, -3);
  });

  it('never sets a deadline when comparison is off', () => {
    const speeds = new PeerSpeeds({ factor: 0, minMs: 1 });
    for (let i = 0; i < 5; i++) speeds.record('a', MiB, 10);
    expect(speeds.deadlineMs('b', MiB)).toBeUndefined();
  });
});
