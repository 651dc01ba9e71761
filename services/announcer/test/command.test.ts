import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { consumers, loadConfig, streams } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { announcerCommand } from '../src/command.js';
import { freePort, startNatsServer, type NatsServer } from '@shoal/mesh/testing';

let server: NatsServer;
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await server?.stop();
});

describe('announcerCommand', () => {
  it('parses its options with units, and names a bad key', () => {
    const { config } = loadConfig(announcerCommand.spec, {
      argv: ['--consumer-batch', '50', '--retry-delay', '2s'],
      env: { SHOAL_TOMBSTONES_TTL: '1h', SHOAL_CONSUMER_ACK_WAIT: '10s' },
      command: announcerCommand.command,
    });
    expect(config).toMatchObject({
      batch: 50,
      retryDelay: 2_000,
      tombstoneTtl: 3_600_000,
      ackWait: 10_000,
      concurrency: 32,
    });
    expect(() =>
      loadConfig(announcerCommand.spec, {
        argv: ['--tombstones-ttl', '5s'],
        env: {},
        command: announcerCommand.command,
      }),
    ).toThrow(/--tombstones-ttl: 5s is below the minimum/);
  });

  it('creates the stream and the shared consumer, serves health and metrics, and stops', async () => {
    const port = await freePort();
    const { config } = loadConfig(announcerCommand.spec, {
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
      command: announcerCommand.command,
    });
    const service = await announcerCommand.start(config, []);
    try {
      expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      expect(metrics).toContain('shoal_announcer_apply_duration_seconds');
      const nc = await connect({ servers: server.url });
      const info = await (await jetstreamManager(nc)).consumers.info(streams.announce, consumers.announcer);
      expect(info.config).toMatchObject({
        durable_name: consumers.announcer,
        ack_policy: 'explicit',
        ack_wait: 5_000_000_000,
      });
      await nc.close();
    } finally {
      await service.stop();
    }
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
  });
});
