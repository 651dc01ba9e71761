/**
 * `shoalctl doctor` against a running mesh and a node filesystem in a temp dir, set up by the real
 * `shoal node-setup`: every check passes; a hosts.toml pointing elsewhere fails with the file and the
 * fix; a stopped scheduler is reported as missing.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  runCommand,
  startNats,
  startRegistry,
  waitFor,
} from './kit/index.js';
import {
  type ControlPlane,
  type ShoalService,
  shoalctlMain,
  startAgent,
  startControlPlane,
  waitForNodes,
} from './support/shoal.js';

const shoalMain = fileURLToPath(new URL('../services/shoal/dist/main.js', import.meta.url));

interface Checklist {
  ok: boolean;
  checks: { id: string; status: string; detail: string; fix?: string }[];
}

/** Waits until discovery has published (and health-checked) the registry's endpoints. */
async function waitForEndpoints(natsUrl: string, registry: string): Promise<void> {
  const nc = await connect({ servers: natsUrl });
  try {
    const kv = await new Kvm(nc).open('shoal_endpoints');
    await waitFor(
      async () => (await kv.get(Buffer.from(registry).toString('base64url')))?.operation === 'PUT',
      {
        timeoutMs: 15_000,
        intervalMs: 100,
        what: `endpoints of ${registry} published`,
      },
    );
  } finally {
    await nc.close();
  }
}

describe('shoalctl doctor', () => {
  let dir: string;
  let root: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let agent: ShoalService;
  let hostsToml: string;

  const doctor = (...args: string[]) =>
    runCommand(
      process.execPath,
      [
        shoalctlMain,
        'doctor',
        `--nats-servers=${nats.url}`,
        `--root=${root}`,
        `--agent=${agent.url}`,
        ...args,
      ],
      { timeoutMs: 30_000 },
    );

  beforeAll(async () => {
    dir = await makeTempDir('doctor');
    root = join(dir, 'host');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
    control = await startControlPlane(nats.url, dir, [registry.url]);
    agent = await startAgent({ id: 'node-1', natsUrl: nats.url, registries: [registry.url], dir });
    await Promise.all([waitForNodes(nats.url, ['node-1']), waitForEndpoints(nats.url, registry.host)]);

    const config = join(root, 'etc/containerd/config.toml');
    await mkdir(dirname(config), { recursive: true });
    await writeFile(
      config,
      'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
    );
    const setup = await runCommand(
      process.execPath,
      [
        shoalMain,
        'node-setup',
        `--node-setup-root=${root}`,
        `--registries=${registry.host}=${registry.url}`,
        `--node-setup-mirror=${agent.url}`,
      ],
      { timeoutMs: 30_000 },
    );
    expect(setup.code, setup.stderr).toBe(0);
    hostsToml = join(root, 'etc/containerd/certs.d', registry.host, 'hosts.toml');
  });

  afterAll(async () => {
    await agent?.stop();
    await control?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('passes every check on a healthy mesh and a node set up by node-setup', async () => {
    const result = await doctor();
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    const lines = result.stdout.trimEnd().split('\n');
    const checks = lines.filter((l) => /^ {2}\S /.test(l));
    expect(checks.length).toBeGreaterThanOrEqual(11);
    for (const line of checks) expect(line, result.stdout).toMatch(/^ {2}✓ /);
    expect(result.stdout).not.toContain('fix:');
    // Sections in a stable order.
    expect(lines.filter((l) => /^\S/.test(l)).slice(0, 5)).toEqual([
      'NATS',
      'Control services',
      'Agents',
      'containerd on this machine',
      'Registry endpoints',
    ]);
    expect(result.stdout).toContain(`hosts.toml for ${registry.host}`);
    expect(result.stdout).toMatch(/1 of 1 answered/);

    const json = await doctor('--output=json', '--node=node-1');
    expect(json.code, json.stdout).toBe(0);
    const list = JSON.parse(json.stdout) as Checklist;
    expect(list.ok).toBe(true);
    expect(list.checks.map((c) => c.id)).toEqual([
      'nats',
      'jetstream',
      'streams',
      'buckets',
      'discovery',
      'scheduler',
      'announcer',
      'agents',
      'clocks',
      `hosts-toml:${registry.host}`,
      'config-path',
      `registry:${registry.host}`,
    ]);
    expect(list.checks.filter((c) => c.status !== 'ok')).toEqual([]);
  });

  it('fails a hosts.toml that points at another port, naming the file and the fix', async () => {
    const good = await readFile(hostsToml, 'utf8');
    const port = new URL(agent.url).port;
    await writeFile(hostsToml, good.replace(`127.0.0.1:${port}`, '127.0.0.1:1'));
    const result = await doctor();
    expect(result.code, result.stdout).toBe(1);
    const lines = result.stdout.split('\n');
    const failed = lines.findIndex((l) => l.includes(`✗ hosts.toml for ${registry.host}`));
    expect(failed, result.stdout).toBeGreaterThan(-1);
    expect(lines[failed]).toContain(hostsToml);
    expect(lines[failed]).toContain(`not to the agent at ${agent.url}`);
    expect(lines[failed + 1]).toMatch(
      /^ {6}fix: run `shoal node-setup .*--node-setup-mirror=http:\/\/127\.0\.0\.1:\d+/,
    );
    expect(lines[failed + 1]).toContain(`change line 6 to [host."${agent.url}"]`);
    expect(result.stdout).toMatch(/1 failed/);
  });

  it('reports that no scheduler is running once it is stopped', async () => {
    await control.scheduler.stop();
    const result = await doctor('--output=json');
    expect(result.code).toBe(1);
    const scheduler = (JSON.parse(result.stdout) as Checklist).checks.find((c) => c.id === 'scheduler');
    expect(scheduler?.status).toBe('fail');
    expect(scheduler?.detail).toMatch(/^no scheduler is running/);
    expect(scheduler?.fix).toMatch(/start the scheduler/);
    const table = await doctor();
    expect(table.stdout).toMatch(/✗ scheduler\s+no scheduler is running/);
  });
});
