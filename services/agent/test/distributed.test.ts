import { describe, expect, it } from 'vitest';
import { registryOfDistributedHost } from '../src/app.js';

describe('registryOfDistributedHost', () => {
  it.each([
    ['inst-registry-distributed.cn-hangzhou.cr.aliyuncs.com', 'inst-registry.cn-hangzhou.cr.aliyuncs.com'],
    [
      'inst-registry-distributed.cn-hangzhou.cr.aliyuncs.com:65002',
      'inst-registry.cn-hangzhou.cr.aliyuncs.com',
    ],
    ['REGISTRY-Distributed.Example.com:443', 'registry.example.com'],
    ['mirror-distributed', 'mirror'],
    ['registry.example.com', undefined],
    ['-distributed.example.com', undefined],
    ['127.0.0.1:65002', undefined],
    [undefined, undefined],
  ])('maps %s to %s', (host, registry) => {
    expect(registryOfDistributedHost(host)).toBe(registry);
  });
});
