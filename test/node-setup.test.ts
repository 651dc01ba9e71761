/**
 * `shoal node-setup` as the agent's init container would run it, against a node filesystem in a temp
 * dir: the hosts.toml it writes is handed to a real containerd, whose pull then goes through a real agent
 * (the registry sees the agent's ranged chunk requests, not containerd's whole-blob downloads); uninstall
 * then leaves every file and directory as it was, and the original hosts.toml works again.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  type BuiltImage,
  type Containerd,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  runCommand,
  startContainerd,
  startNats,
  startRegistry,
} from './kit/index.js';
import {
  type ControlPlane,
  metricSum,
  type ShoalService,
  startControlPlane,
  startPatientAgents,
} from './support/shoal.js';

const MiB = 1024 * 1024;
const shoalMain = fileURLToPath(new URL('../services/shoal/dist/main.js', import.meta.url));

/** Every directory and file under a root with a hash of its bytes, to compare whole trees. */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string, rel: string) => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = `${rel}/${entry.name}`;
      if (entry.isDirectory()) {
        out[`${path}/`] = 'dir';
        await walk(join(dir, entry.name), path);
      } else {
        out[path] = createHash('sha256')
          .update(await readFile(join(dir, entry.name)))
          .digest('hex');
      }
    }
  };
  await walk(root, '');
  return out;
}

describe('shoal node-setup on a node with containerd', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let containerd: Containerd;
  let control: ControlPlane;
  let agent: ShoalService;
  let image: BuiltImage;

  beforeAll(async () => {
    dir = await makeTempDir('node-setup');
    [nats, registry, containerd] = await Promise.all([startNats(), startRegistry(), startContainerd()]);
    image = await buildAndPushImage({ registry, repo: 'team/app', tag: 'v1', layers: 3, layerSize: 3 * MiB });
    control = await startControlPlane(nats.url, dir, [registry.url]);
    [agent] = (await startPatientAgents(nats.url, registry.url, dir, ['node-1'])) as [ShoalService];
  });

  afterAll(async () => {
    await agent?.stop();
    await control?.stop();
    await Promise.allSettled([containerd?.stop(), registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('pulls through the agent after install, and uninstall restores the node byte for byte', async () => {
    const root = join(dir, 'host');
    const certsDir = join(root, 'etc/containerd/certs.d');
    // The node already pins this registry to itself: node-setup must move that aside and bring it back.
    const original = `server = ${JSON.stringify(registry.url)}\n`;
    const files: Record<string, string> = {
      'etc/containerd/config.toml':
        'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
      [`etc/containerd/certs.d/${registry.host}/hosts.toml`]: original,
      'etc/containerd/certs.d/other.example.com/hosts.toml': 'server = "https://other.example.com"\n',
      'etc/hosts': '127.0.0.1 localhost',
    };
    for (const [path, content] of Object.entries(files)) {
      await mkdir(dirname(join(root, path)), { recursive: true });
      await writeFile(join(root, path), content);
    }
    const before = await snapshot(root);
    const shoal = (args: string[]) =>
      runCommand(process.execPath, [shoalMain, 'node-setup', `--node-setup-root=${root}`, ...args], {
        timeoutMs: 30_000,
      });

    const install = await shoal([
      `--registries=${registry.host}=${registry.url}`,
      `--node-setup-mirror=${agent.url}`,
    ]);
    expect(install.code, install.stderr).toBe(0);
    expect(install.stderr).toBe('');
    const hostsToml = `/etc/containerd/certs.d/${registry.host}/hosts.toml`;
    expect(install.stdout).toContain(`backed up ${hostsToml}`);
    expect(install.stdout).toContain(`written   ${hostsToml}`);
    expect(install.stdout).toContain('containerd reads /etc/containerd/certs.d');
    expect(install.stdout).toMatch(/node-setup install done: 1 written, 1 backed up\n$/);

    registry.clearRequests();
    const pulled = await containerd.pull({
      ref: image.ref,
      hostsDir: certsDir,
      namespace: containerd.newNamespace('through-agent'),
    });
    expect(pulled.ok, pulled.stderr).toBe(true);
    const metrics = await agent.metrics();
    expect(metricSum(metrics, 'shoal_agent_client_bytes_total')).toBeGreaterThanOrEqual(image.layersSize);
    expect(metricSum(metrics, 'shoal_agent_fallbacks_total')).toBe(0);
    for (const layer of image.layers) {
      const gets = registry.blobGets(layer.digest);
      expect(gets.length).toBeGreaterThan(0);
      // Every download of the layer was one of the agent's chunk requests, none a whole-blob GET.
      expect(gets.filter((r) => r.range === undefined)).toEqual([]);
    }

    const uninstall = await shoal(['--node-setup-action=uninstall']);
    expect(uninstall.code, uninstall.stderr).toBe(0);
    expect(uninstall.stdout).toContain(`restored  ${hostsToml}`);
    expect(await snapshot(root)).toEqual(before);
    expect(await readFile(join(certsDir, registry.host, 'hosts.toml'), 'utf8')).toBe(original);

    // The restored original sends containerd straight to the registry again.
    registry.clearRequests();
    const direct = await containerd.pull({
      ref: image.ref,
      hostsDir: certsDir,
      namespace: containerd.newNamespace('direct'),
    });
    expect(direct.ok, direct.stderr).toBe(true);
    for (const layer of image.layers) {
      const gets = registry.blobGets(layer.digest);
      expect(gets.map((r) => r.range)).toEqual([undefined]);
    }
    const after = await agent.metrics();
    expect(metricSum(after, 'shoal_agent_client_bytes_total')).toBe(
      metricSum(metrics, 'shoal_agent_client_bytes_total'),
    );
  });
});
