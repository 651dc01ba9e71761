import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { loadConfig, streams } from '@shoal/mesh';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
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

  it.each([
    ['no kubeconfig outside a pod', '', /^kubernetes\.kubeconfig: not running in a Kubernetes pod/],
    [
      'a missing file',
      '/nonexistent/kubeconfig',
      /^kubernetes\.kubeconfig: cannot load \/nonexistent\/kubeconfig: ENOENT/,
    ],
    [
      'a plain-HTTP server with TLS checks on',
      'plain-http',
      /^kubernetes\.kubeconfig: the cluster's server http:\/\/127\.0\.0\.1:1 is plain HTTP/,
    ],
  ])('refuses Kubernetes mode with %s, naming the key', async (_what, file, message) => {
    // Inside a pod the in-cluster account is found, as it should be: nothing to refuse there.
    if (!file && process.env.KUBERNETES_SERVICE_HOST) return;
    let path = file;
    if (file === 'plain-http') {
      path = join(await mkdtemp(join(tmpdir(), 'shoal-kubeconfig-')), 'config');
      await writeFile(
        path,
        [
          'apiVersion: v1',
          'clusters: [{ name: f, cluster: { server: "http://127.0.0.1:1" } }]',
          'users: [{ name: u, user: { token: t } }]',
          'contexts: [{ name: f, context: { cluster: f, user: u } }]',
          'current-context: f',
        ].join('\n'),
      );
      onTestFinished(() => rm(dirname(path), { recursive: true, force: true }));
    }
    const { config } = loadConfig(discoveryCommand.spec, {
      argv: ['--topology-source=kubernetes', `--kubernetes-kubeconfig=${path}`],
      env: { SHOAL_NATS_SERVERS: 'nats://127.0.0.1:1' },
      command: discoveryCommand.command,
    });
    await expect(discoveryCommand.start(config, [])).rejects.toThrow(message);
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

  it('keeps the event stream as long and as large as configured', async () => {
    const { config } = loadConfig(discoveryCommand.spec, {
      argv: ['--nats-servers', server.url, '--metrics-port', '0', '--log-level', 'silent'],
      env: { SHOAL_EVENTS_MAX_AGE: '2d', SHOAL_EVENTS_MAX_BYTES: '64MiB' },
      command: discoveryCommand.command,
    });
    const service = await discoveryCommand.start(config, []);
    try {
      const nc = await connect({ servers: server.url });
      const info = await (await jetstreamManager(nc)).streams.info(streams.events);
      expect(info.config.max_age).toBe(2 * 86_400 * 1e9);
      expect(info.config.max_bytes).toBe(64 * 1024 * 1024);
      await nc.close();
    } finally {
      await service.stop();
    }
  });
});
