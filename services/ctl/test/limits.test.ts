import type { AgentLimitsView } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { formatLimitBytes, formatLimits, parseLimitSettings } from '../src/commands/limits.js';

const MiB = 1024 * 1024;

const view = (extra: Partial<AgentLimitsView> = {}): AgentLimitsView => ({
  downloadRate: 0,
  downloadBurst: 8 * MiB,
  uploadRate: 0,
  uploadBurst: 4 * MiB,
  uploadsPerPeer: 4,
  registryRate: 0,
  registryBurst: 8 * MiB,
  share: true,
  cacheMaxSize: 0,
  memory: 0,
  overridden: [],
  ...extra,
});

describe('shoalctl limits --set', () => {
  it('reads sizes and rates in human units, counts and booleans', () => {
    expect(
      parseLimitSettings(
        'downloadRate=50MB/s, uploadRate=4MiB/s,registryRate=unlimited,downloadBurst=1MiB,uploadsPerPeer=2,share=false,cacheMaxSize=10GiB,memory=0',
      ),
    ).toEqual({
      downloadRate: 50_000_000,
      uploadRate: 4 * MiB,
      registryRate: 0,
      downloadBurst: MiB,
      uploadsPerPeer: 2,
      share: false,
      cacheMaxSize: 10 * 1024 * MiB,
      memory: 0,
    });
    expect(parseLimitSettings('DOWNLOADRATE=1mb')).toEqual({ downloadRate: 1_000_000 });
  });

  for (const [input, message] of [
    ['speed=1MB/s', /^--set speed: unknown limit; the limits are downloadRate, downloadBurst, /],
    ['downloadRate=fast', /^--set downloadRate: "fast" is not a rate: write bytes per second like 50MB\/s/],
    ['cacheMaxSize=10GB/s', /^--set cacheMaxSize: "10GB\/s" is not a size/],
    ['uploadBurst=10KiB', /^--set uploadBurst: 10KiB is below the minimum burst of 64\.0 KiB$/],
    ['uploadsPerPeer=1.5', /^--set uploadsPerPeer: "1.5" is not a whole number from 0 to 1024/],
    ['uploadsPerPeer=2000', /^--set uploadsPerPeer: "2000" is not a whole number from 0 to 1024/],
    ['share=maybe', /^--set share: "maybe" is not true or false$/],
    ['share', /^--set share: give it a value, as share=VALUE/],
    ['share=true,share=false', /^--set share: named twice/],
    [',', /^--set : name at least one limit to change/],
  ] as const) {
    it(`refuses ${input} in one line naming the key`, () => {
      let error: unknown;
      try {
        parseLimitSettings(input);
      } catch (err) {
        error = err;
      }
      expect(error).toMatchObject({
        code: 'SHOAL_ERR_CONFIG',
        message: expect.stringMatching(message) as unknown,
      });
      expect((error as Error).message).not.toContain('\n');
    });
  }
});

describe('shoalctl limits output', () => {
  it('writes bytes in the unit that states them exactly', () => {
    expect(formatLimitBytes(50_000_000)).toBe('50 MB');
    expect(formatLimitBytes(8 * MiB)).toBe('8 MiB');
    expect(formatLimitBytes(1024 * MiB)).toBe('1 GiB');
    expect(formatLimitBytes(64 * 1024)).toBe('64 KiB');
    expect(formatLimitBytes(500)).toBe('500 B');
    expect(formatLimitBytes(12_345_678)).toBe('11.8 MiB');
  });

  it('stars overridden values, shows bursts only where they matter, and lists failed nodes', () => {
    const text = formatLimits([
      {
        node: 'n1',
        url: 'http://n1:65001',
        view: view({
          downloadRate: 50_000_000,
          uploadsPerPeer: 2,
          share: false,
          memory: 16 * MiB,
          overridden: ['downloadRate', 'uploadsPerPeer', 'share'],
        }),
      },
      { node: 'n2', url: 'http://n2:65001', view: view({ cacheMaxSize: 10 * 1024 * MiB }) },
      {
        node: 'n3',
        url: 'http://n3:65001',
        error: 'agent n3 at http://n3:65001 is unreachable (ECONNREFUSED)',
      },
    ]);
    expect(text.split('\n')).toEqual([
      'NODE  DOWNLOAD (BURST)  REGISTRY (BURST)  UPLOAD (BURST)  PER PEER  SHARE  CACHE      MEMORY',
      'n1    50 MB/s* (8 MiB)  unlimited         unlimited       2*        no*    unlimited  16 MiB',
      'n2    unlimited         unlimited         unlimited       4         yes    10 GiB     off',
      '',
      '* set through the limits API instead of the configuration, kept across restarts until --reset',
      '',
      '1 of 3 nodes failed:',
      '  n3: agent n3 at http://n3:65001 is unreachable (ECONNREFUSED)',
    ]);
  });
});
