import { loadConfig } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { schedulerCommand } from '../src/command.js';
import { freePort, startNatsServer, type NatsServer } from '@shoal/mesh/testing';

let server: NatsServer;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.stop();
});

describe('schedulerCommand', () => {
  it('parses its options with units, and names a bad key', () => {
    const { config } = loadConfig(schedulerCommand.spec, {
      argv: ['--origin-per-chunk', '2', '--origin-lease', '10s'],
      env: { SHOAL_WAIT_RETRY: '1s', SHOAL_NODE_TTL: '20s' },
      command: schedulerCommand.command,
    });
    expect(config).toMatchObject({
      originPerChunk: 2,
      originLease: 10_000,
      waitRetry: 1_000,
      nodeTtl: 20_000,
      alternates: 3,
    });
    expect(() =>
      loadConfig(schedulerCommand.spec, {
        argv: ['--origin-per-chunk', '0'],
        env: {},
        command: schedulerCommand.command,
      }),
    ).toThrow(/--origin-per-chunk: 0 is below the minimum 1/);
  });

  it('starts against NATS, serves health and metrics on its port, and stops', async () => {
    const port = await freePort();
    const { config } = loadConfig(schedulerCommand.spec, {
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
      command: schedulerCommand.command,
    });
    const service = await schedulerCommand.start(config, []);
    try {
      const health = await fetch(`http://127.0.0.1:${port}/healthz`);
      expect(health.status).toBe(200);
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      expect(metrics).toContain('shoal_scheduler_index_nodes');
    } finally {
      await service.stop();
    }
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
  });
});
