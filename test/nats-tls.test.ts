/**
 * NATS over TLS: a server that requires it, a service and shoalctl that verify it with the CA they are
 * given, and clear one-line errors for a missing credentials file.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  makeTempDir,
  type NatsServer,
  removeTempDir,
  runCommand,
  startNats,
  waitForHttp,
} from './kit/index.js';
import { serviceMain, type ShoalService, shoalctlMain, startControlService } from './support/shoal.js';

async function openssl(dir: string, ...args: string[]): Promise<void> {
  const result = await runCommand('openssl', args, { cwd: dir, timeoutMs: 30_000 });
  if (result.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`);
}

describe('NATS with TLS', () => {
  let dir: string;
  let nats: NatsServer;
  let ca: string;
  let discovery: ShoalService | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('nats-tls');
    // A CA and a server certificate for 127.0.0.1, made here so that nothing secret is checked in.
    // nats.js names the host "localhost" in the TLS handshake when it connects to 127.0.0.1.
    await writeFile(join(dir, 'san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
    await openssl(
      dir,
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=shoal-test-ca',
      '-keyout',
      'ca.key',
      '-out',
      'ca.pem',
    );
    await openssl(
      dir,
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=127.0.0.1',
      '-keyout',
      'server.key',
      '-out',
      'server.csr',
    );
    await openssl(
      dir,
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-days',
      '1',
      '-extfile',
      'san.cnf',
      '-out',
      'server.pem',
    );
    ca = join(dir, 'ca.pem');
    nats = await startNats({
      extraConfig: [
        'tls {',
        `  cert_file: ${JSON.stringify(join(dir, 'server.pem'))}`,
        `  key_file: ${JSON.stringify(join(dir, 'server.key'))}`,
        '}',
      ],
    });
  });

  afterAll(async () => {
    await discovery?.stop();
    await nats?.stop();
    await removeTempDir(dir);
  });

  it('connects a service and shoalctl that trust the CA', async () => {
    discovery = await startControlService('discovery', {
      natsUrl: nats.url,
      dir,
      extraArgs: [`--nats-tls-ca=${ca}`],
    });
    await waitForHttp(`${discovery.url}/healthz`, 15_000, { accept: (status) => status === 200 });
    const result = await runCommand(
      process.execPath,
      [shoalctlMain, 'nodes', '--nats-servers', nats.url, '--nats-tls-ca', ca],
      { timeoutMs: 20_000 },
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trim()).toBe('no nodes registered');
  });

  it('does not trust the server without the CA', async () => {
    const result = await runCommand(process.execPath, [shoalctlMain, 'nodes', '--nats-servers', nats.url], {
      timeoutMs: 20_000,
    });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/cannot reach NATS/);
  });

  it('names the key when the credentials file cannot be used', async () => {
    const notCreds = join(dir, 'not.creds');
    await writeFile(notCreds, 'hello\n');
    for (const [file, why] of [
      [join(dir, 'missing.creds'), /ENOENT/],
      [notCreds, /holds no NATS user JWT/],
    ] as const) {
      const result = await runCommand(
        process.execPath,
        [
          serviceMain('discovery'),
          '--nats-servers',
          nats.url,
          '--nats-creds-file',
          file,
          '--metrics-port',
          '0',
        ],
        { timeoutMs: 20_000 },
      );
      expect(result.code).not.toBe(0);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toMatch(new RegExp(`nats\\.credsFile: cannot use ${file}: .*${why.source}`));
    }
  });
});
