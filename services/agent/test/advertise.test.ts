/** How an agent tells other agents where to reach it, IPv6 nodes included. */
import { loadConfig } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { urlHost } from '../src/command.js';
import { agentSpec, checkAgentConfig } from '../src/config.js';

const configWith = (env: Record<string, string>) =>
  loadConfig(agentSpec, { argv: [], env, command: 'shoal agent' }).config;

describe('advertised address', () => {
  it('brackets an IPv6 address in a URL and leaves others alone', () => {
    expect(urlHost('fd00::1')).toBe('[fd00::1]');
    expect(urlHost('[fd00::1]')).toBe('[fd00::1]');
    expect(urlHost('10.0.0.5')).toBe('10.0.0.5');
    expect(urlHost('node-a.example')).toBe('node-a.example');
    expect(new URL(`http://${urlHost('fd00::1')}:65001`).port).toBe('65001');
  });

  it('takes the node IP as advertise.host, as the chart sets it', () => {
    expect(configWith({ SHOAL_ADVERTISE_HOST: 'fd00::1' }).advertiseHost).toBe('fd00::1');
    expect(() => configWith({ SHOAL_ADVERTISE_HOST: 'http://x' })).toThrow(
      /SHOAL_ADVERTISE_HOST: .*IP address or host name/,
    );
  });

  it('refuses an advertise.url that is not a URL, naming the key and the fix', () => {
    const config = configWith({ SHOAL_ADVERTISE_URL: 'http://fd00::1:65001' });
    expect(() => checkAgentConfig(config)).toThrow(/advertise\.url: .*brackets/);
    expect(() =>
      checkAgentConfig(configWith({ SHOAL_ADVERTISE_URL: 'http://[fd00::1]:65001' })),
    ).not.toThrow();
  });
});

describe('advertise.host', () => {
  it('refuses a listen-anywhere address, which no peer can reach', () => {
    for (const host of ['0.0.0.0', '::'])
      expect(() => checkAgentConfig(configWith({ SHOAL_ADVERTISE_HOST: host }))).toThrow(
        /advertise\.host: .*not an address peers can reach/,
      );
  });
});
