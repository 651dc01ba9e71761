import { loadConfig } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discoveryCommand } from '../src/command.js';
import { freePort, startNatsServer, type NatsServer } from '@shoal/mesh/testing';

let server: NatsServer;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.stop();
});

describe('discoveryCommand', () => {
  it('parses its options with units, and names a bad key', () => {
    const { config } = loadConfig(discoveryCommand.spec, {
      argv: ['--registries', 'http://127.0.0.1:5000,https://registry.example.com'],
      env: { SHOAL_NODE_TTL: '30s', SHOAL_ENDPOINTS_INTERVAL: '1m' },
      command: discoveryCommand.command,
    });
    expect(config).toMatchObject({
      registries: ['http://127.0.0.1:5000', 'https://registry.example.com'],
      nodeTtl: 30_000,
      endpointsInterval: 60_000,
      endpointsTimeout: 5_000,
    });
    expect(() =>
      loadConfig(discoveryCommand.spec, {
        argv: ['--registries', 'ftp://x'],
        env: {},
        command: discoveryCommand.command,
      }),
    ).toThrow(/--registries: "ftp:\/\/x" is not a valid \[name=\]http\(s\):\/\/host\[:port\]/);
  });

  it('refuses a mirror of a registry it does not publish before connecting to anything', async () => {
    const { config } = loadConfig(discoveryCommand.spec, {
      argv: ['--registries', 'http://127.0.0.1:5000', '--mirrors', 'other.example=http://10.0.0.1:5000'],
      env: { SHOAL_NATS_SERVERS: 'nats://127.0.0.1:1' },
      command: discoveryCommand.command,
    });
    await expect(discoveryCommand.start(config, [])).rejects.toThrow(
      /^mirrors: "other.example=http:\/\/10.0.0.1:5000" names registry "other.example", which is not in registries$/,
    );
  });

  it('starts against NATS, serves health and metrics on its port, and stops', async () => {
    const port = await freePort();
    const { config } = loadConfig(discoveryCommand.spec, {
      argv: [
        '--nats-servers',
        server.url,
        '--metrics-port',
        String(port),
        '--metrics-host',
        '127.0.0.1',
        '--log-level',
        'silent',
      ],
      env: {},
      command: discoveryCommand.command,
    });
    const service = await discoveryCommand.start(config, []);
    try {
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      expect(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).toContain(
        'shoal_discovery_nodes',
      );
    } finally {
      await service.stop();
    }
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
  });
});
