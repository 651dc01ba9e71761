/**
 * `shoal node-setup` against a node's filesystem in a temp dir: what it writes for each runtime, that
 * install is idempotent and uninstall puts every byte back, and that it never overwrites what someone
 * else changed.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { isShoalError, loadConfig } from '@shoal/mesh';
import { afterEach, describe, expect, it } from 'vitest';
import { nodeSetupSpec } from '../src/node-setup/config.js';
import { runNodeSetup } from '../src/node-setup/setup.js';
import { parseToml, tomlGet } from '../src/node-setup/toml.js';

const REGISTRY = 'registry.example.com=https://registry.example.com';
const HOSTS_TOML = '/etc/containerd/certs.d/registry.example.com/hosts.toml';
const CONFIG_V2 = [
  'version = 2',
  'disabled_plugins = [',
  '  "io.containerd.internal.v1.opt", # trailing comment',
  ']',
  '',
  '[plugins]',
  '  [plugins."io.containerd.grpc.v1.cri"]',
  '    sandbox_image = "registry.k8s.io/pause:3.9"',
  '    [plugins."io.containerd.grpc.v1.cri".registry]',
  '      config_path = "/etc/containerd/certs.d"',
  '',
].join('\n');

const roots: string[] = [];

afterEach(async () => {
  await Promise.all(roots.splice(0).map((r) => rm(r, { recursive: true, force: true })));
});

/** A fresh node filesystem holding the given files (path on the node → content). */
async function node(files: Record<string, string | Buffer> = {}, dirs: string[] = []): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'shoal-node-setup-'));
  roots.push(root);
  for (const dir of dirs) await mkdir(join(root, dir), { recursive: true });
  for (const [path, content] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), content);
  }
  return root;
}

async function read(root: string, path: string): Promise<string> {
  return await readFile(join(root, path), 'utf8');
}

async function exists(root: string, path: string): Promise<boolean> {
  return await stat(join(root, path)).then(
    () => true,
    () => false,
  );
}

/** Every directory and file under the root, with file contents, to compare whole trees. */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string, rel: string) => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = `${rel}/${entry.name}`;
      if (entry.isDirectory()) {
        out[`${path}/`] = 'dir';
        await walk(join(dir, entry.name), path);
      } else {
        out[path] = (await readFile(join(dir, entry.name))).toString('base64');
      }
    }
  };
  await walk(root, '');
  return out;
}

interface Run {
  lines: string[];
  warnings: string[];
  verbs: string[];
  restarts: string[][];
}

async function setup(root: string, args: string[], options: { failRestart?: boolean } = {}): Promise<Run> {
  const { config } = loadConfig(nodeSetupSpec, {
    argv: ['--node-setup-root', root, ...args],
    env: {},
    command: 'shoal node-setup',
  });
  const lines: string[] = [];
  const warnings: string[] = [];
  const restarts: string[][] = [];
  const result = await runNodeSetup(
    config,
    { line: (l) => lines.push(l), warn: (w) => warnings.push(w) },
    async (cmd, cmdArgs) => {
      restarts.push([cmd, ...cmdArgs]);
      if (options.failRestart)
        throw Object.assign(new Error('exit 1'), { stderr: 'Failed to connect to bus\n' });
    },
  );
  return { lines, warnings, verbs: result.actions.map((a) => `${a.verb} ${a.path}`), restarts };
}

const install = (root: string, ...args: string[]) => setup(root, ['--registries', REGISTRY, ...args]);
const uninstall = (root: string, ...args: string[]) =>
  setup(root, ['--node-setup-action', 'uninstall', ...args]);

describe('node-setup for containerd', () => {
  it('writes a hosts.toml naming the agent as mirror and the registry as server', async () => {
    const root = await node({ '/etc/containerd/config.toml': CONFIG_V2 });
    const run = await install(root);
    expect(run.verbs).toEqual([`written ${HOSTS_TOML}`]);
    expect(run.warnings).toEqual([]);
    expect(run.lines[0]).toContain('containerd');
    expect(run.lines).toContain(
      'containerd reads /etc/containerd/certs.d (config_path "/etc/containerd/certs.d" in /etc/containerd/config.toml)',
    );
    const text = await read(root, HOSTS_TOML);
    expect(text.startsWith('# Written by Shoal')).toBe(true);
    expect(text).toContain('shoal node-setup --node-setup-action=uninstall');
    expect(parseToml(text)).toEqual({
      server: 'https://registry.example.com',
      host: { 'http://127.0.0.1:65001': { capabilities: ['pull', 'resolve'] } },
    });
    const manifest = JSON.parse(await read(root, '/var/lib/shoal/node-setup/manifest.json')) as {
      entries: { path: string; sha256: string }[];
    };
    expect(manifest.entries).toEqual([
      { kind: 'file', path: HOSTS_TOML, sha256: createHash('sha256').update(text).digest('hex') },
    ]);
  });

  it('moves an existing hosts.toml aside and puts it back byte for byte on uninstall', async () => {
    const original = Buffer.from(
      'server = "https://registry.example.com"\r\n[host."https://cache.local"]\n  ca = "ca.crt"',
      'utf8',
    );
    const root = await node({
      '/etc/containerd/config.toml': CONFIG_V2,
      [HOSTS_TOML]: original,
      '/etc/containerd/certs.d/registry.example.com/ca.crt': 'certificate',
      '/etc/containerd/certs.d/other.example.com/hosts.toml': 'server = "https://other.example.com"\n',
    });
    const before = await snapshot(root);

    const run = await install(root, '--node-setup-mirror', 'http://10.0.0.7:65001/');
    expect(run.verbs).toEqual([`backed up ${HOSTS_TOML}`, `written ${HOSTS_TOML}`]);
    const backup = join(root, '/var/lib/shoal/node-setup/backup', HOSTS_TOML);
    expect(await readFile(backup)).toEqual(original);
    expect(await read(root, HOSTS_TOML)).toContain('[host."http://10.0.0.7:65001"]');
    const manifest = await read(root, '/var/lib/shoal/node-setup/manifest.json');
    expect(manifest).toContain('"backup"');

    const undo = await uninstall(root);
    expect(undo.verbs).toEqual([`removed ${HOSTS_TOML}`, `restored ${HOSTS_TOML}`]);
    expect(undo.warnings).toEqual([]);
    expect(await snapshot(root)).toEqual(before);
  });

  it('is idempotent: a second install changes nothing and never backs up its own file', async () => {
    const root = await node({ '/etc/containerd/config.toml': CONFIG_V2, [HOSTS_TOML]: 'server = "x"\n' });
    const before = await snapshot(root);
    await install(root);
    const once = await snapshot(root);
    const again = await install(root);
    expect(again.verbs).toEqual([`skipped ${HOSTS_TOML}`]);
    expect(await snapshot(root)).toEqual(once);
    expect(await read(root, join('/var/lib/shoal/node-setup/backup', HOSTS_TOML))).toBe('server = "x"\n');

    // A changed mirror rewrites Shoal's own file in place, still without backing it up.
    const moved = await install(root, '--node-setup-mirror', 'http://127.0.0.1:65009');
    expect(moved.verbs).toEqual([`written ${HOSTS_TOML}`]);
    expect(await read(root, join('/var/lib/shoal/node-setup/backup', HOSTS_TOML))).toBe('server = "x"\n');

    await uninstall(root);
    expect(await snapshot(root)).toEqual(before);
  });

  it('treats uninstall twice, and uninstall without install, as no-ops', async () => {
    const root = await node({
      '/etc/containerd/config.toml': CONFIG_V2,
      '/etc/hosts': '127.0.0.1 localhost\n',
    });
    const before = await snapshot(root);
    const never = await uninstall(root);
    expect(never.verbs).toEqual([]);
    expect(never.lines.at(-1)).toBe('node-setup uninstall done: nothing to do');
    expect(await snapshot(root)).toEqual(before);

    await install(root);
    await uninstall(root);
    const twice = await uninstall(root);
    expect(twice.verbs).toEqual([]);
    expect(await snapshot(root)).toEqual(before);
  });

  it('removes what an earlier install wrote for a registry no longer listed', async () => {
    const root = await node({ '/etc/containerd/config.toml': CONFIG_V2 });
    await setup(root, ['--registries', `${REGISTRY},docker.io=https://registry-1.docker.io`]);
    expect(await read(root, '/etc/containerd/certs.d/docker.io/hosts.toml')).toContain(
      'server = "https://registry-1.docker.io"',
    );
    const run = await install(root);
    expect(run.verbs).toEqual([
      'removed /etc/containerd/certs.d/docker.io/hosts.toml',
      `skipped ${HOSTS_TOML}`,
    ]);
  });

  it('without config_path writes the files, leaves config.toml alone and prints exactly what to add', async () => {
    const config = 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause"\n';
    const root = await node({ '/etc/containerd/config.toml': config });
    const run = await install(root);
    expect(run.verbs).toEqual([`written ${HOSTS_TOML}`]);
    expect(await read(root, '/etc/containerd/config.toml')).toBe(config);
    expect(run.warnings).toHaveLength(1);
    const warning = run.warnings[0]!;
    expect(warning).toContain('containerd does not read /etc/containerd/certs.d');
    expect(warning).toContain(
      '\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
    );
    expect(warning).toContain('restart containerd');
    expect(run.lines.at(-1)).toBe('node-setup install done: 1 written; 1 warning above');
  });

  it('asks for a line in an existing registry table, and for a changed config_path when it points elsewhere', async () => {
    const inTable = await node({
      '/etc/containerd/config.toml':
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n    endpoint = ["https://mirror.gcr.io"]\n',
    });
    const table = (await install(inTable)).warnings[0]!;
    expect(table).toContain(
      'Add this line to the existing [plugins."io.containerd.grpc.v1.cri".registry] table:',
    );
    expect(table).toContain('containerd refuses registry mirrors and config_path together');

    const elsewhere = await node({
      '/etc/containerd/config.toml':
        "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.registry]\nconfig_path = '/etc/docker/certs.d'\n",
    });
    const change = (await install(elsewhere)).warnings[0]!;
    expect(change).toContain('config_path in [plugins."io.containerd.grpc.v1.cri".registry]');
    expect(change).toContain('  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"');

    const missing = await node({}, ['/run/containerd']);
    await writeFile(join(missing, '/run/containerd/containerd.sock'), '');
    const run = await install(missing);
    expect(run.lines[0]).toContain('found /run/containerd/containerd.sock');
    expect(run.warnings[0]).toContain(
      '/etc/containerd/config.toml does not exist, so containerd runs with its built-in defaults',
    );
    expect(run.warnings[0]).toContain('version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry]');
    expect(await exists(missing, '/etc/containerd/config.toml')).toBe(false);
  });

  it('reads the containerd 2.x form (version 3, io.containerd.cri.v1.images) and imported files', async () => {
    const v3 =
      "version = 3\n\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'\n";
    const root = await node({ '/etc/containerd/config.toml': v3 });
    const run = await install(root);
    expect(run.warnings).toEqual([]);
    expect(run.lines).toContain(
      'containerd reads /etc/containerd/certs.d (config_path "/etc/containerd/certs.d:/etc/docker/certs.d" in /etc/containerd/config.toml)',
    );

    // The 1.x key in a version 3 file is not what containerd 2.x reads.
    const wrong = await node({
      '/etc/containerd/config.toml':
        'version = 3\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
    });
    const warning = (await install(wrong)).warnings[0]!;
    expect(warning).toContain(
      '\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "/etc/containerd/certs.d"\n',
    );

    const imported = await node({
      '/etc/containerd/config.toml': 'version = 3\nimports = ["/etc/containerd/conf.d/*.toml"]\n',
      '/etc/containerd/conf.d/10-registry.toml':
        'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "/etc/containerd/certs.d"\n',
    });
    const viaImport = await install(imported);
    expect(viaImport.warnings).toEqual([]);
    expect(viaImport.lines.join('\n')).toContain('in /etc/containerd/conf.d/10-registry.toml');
  });

  it('warns when an earlier directory in config_path holds its own configuration for the registry', async () => {
    const root = await node({
      '/etc/containerd/config.toml':
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/etc/docker/certs.d:/etc/containerd/certs.d"\n',
      '/etc/docker/certs.d/registry.example.com/ca.crt': 'x',
    });
    const run = await install(root);
    expect(run.warnings[0]).toContain('/etc/docker/certs.d comes before /etc/containerd/certs.d');
  });

  it('keeps both when a file was changed after install: the change in place, the original in the backup', async () => {
    const root = await node({
      '/etc/containerd/config.toml': CONFIG_V2,
      [HOSTS_TOML]: 'server = "original"\n',
    });
    await install(root);
    await writeFile(join(root, HOSTS_TOML), 'server = "someone else"\n');

    const again = await install(root);
    expect(again.verbs).toEqual([`kept ${HOSTS_TOML}`]);
    expect(again.warnings[0]).toContain(`${HOSTS_TOML} was changed after Shoal wrote it`);
    expect(await read(root, HOSTS_TOML)).toBe('server = "someone else"\n');

    const undo = await uninstall(root);
    expect(undo.verbs).toEqual([`kept ${HOSTS_TOML}`]);
    expect(undo.warnings[0]).toContain('both are kept');
    expect(await read(root, HOSTS_TOML)).toBe('server = "someone else"\n');
    const backup = join('/var/lib/shoal/node-setup/backup', HOSTS_TOML);
    expect(await read(root, backup)).toBe('server = "original"\n');
    // The record stays, so the original is still accounted for.
    expect(await read(root, '/var/lib/shoal/node-setup/manifest.json')).toContain(backup);
  });

  it('restarts containerd only when asked and something changed, through nsenter from a mounted root', async () => {
    const root = await node({ '/etc/containerd/config.toml': CONFIG_V2 });
    expect((await install(root)).restarts).toEqual([]);
    await uninstall(root);
    const asked = await install(root, '--node-setup-restart');
    expect(asked.restarts).toEqual([
      ['nsenter', '-t', '1', '-m', '-u', '-i', '-n', '-p', '--', 'systemctl', 'restart', 'containerd'],
    ]);
    expect(asked.lines).toContain(
      'restarted containerd (nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd)',
    );
    const unchanged = await install(root, '--node-setup-restart');
    expect(unchanged.restarts).toEqual([]);
    expect(unchanged.lines).toContain('restart   skipped (nothing changed)');

    await uninstall(root);
    await expect(
      setup(root, ['--registries', REGISTRY, '--node-setup-restart'], { failRestart: true }),
    ).rejects.toThrow(
      'could not restart containerd: `nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd` failed: Failed to connect to bus. The configuration is in place; restart containerd by hand.',
    );
    expect(await exists(root, HOSTS_TOML)).toBe(true);
  });
});

describe('node-setup for CRI-O and podman', () => {
  const DROP_IN = '/etc/containers/registries.conf.d/50-shoal.conf';

  it('writes a registries.conf drop-in with the agent as mirror, and restores what it replaced', async () => {
    const original = '# an operator drop-in\n[[registry]]\nlocation = "registry.example.com"\n';
    const root = await node({
      '/etc/containers/registries.conf': 'unqualified-search-registries = ["docker.io"]\n',
      [DROP_IN]: original,
    });
    const before = await snapshot(root);
    const run = await install(root);
    expect(run.lines[0]).toBe(`node-setup install for crio under ${root} (found /etc/containers)`);
    expect(run.verbs).toEqual([`backed up ${DROP_IN}`, `written ${DROP_IN}`]);
    const conf = parseToml(await read(root, DROP_IN));
    expect(conf).toEqual({
      registry: [
        {
          prefix: 'registry.example.com',
          location: 'registry.example.com',
          mirror: [{ location: '127.0.0.1:65001', insecure: true }],
        },
      ],
    });
    expect(run.warnings).toEqual([]);
    expect(run.lines.join('\n')).toContain('keep registry.example.com first');

    await uninstall(root);
    expect(await snapshot(root)).toEqual(before);
  });

  it('mirrors only the first of several registries, and names the others', async () => {
    const root = await node({}, ['/etc/crio']);
    const run = await setup(root, [
      '--registries',
      `${REGISTRY},http://127.0.0.1:5000,quay.io=https://quay.io`,
      '--node-setup-mirror',
      'https://10.0.0.7:65001',
    ]);
    const conf = parseToml(await read(root, DROP_IN));
    expect(tomlGet(conf, ['registry'])).toEqual([
      {
        prefix: 'registry.example.com',
        location: 'registry.example.com',
        mirror: [{ location: '10.0.0.7:65001' }],
      },
    ]);
    expect(run.warnings[0]).toContain(
      'only registry.example.com is mirrored for CRI-O and podman; 127.0.0.1:5000, quay.io are pulled straight',
    );
  });

  it('says when registries.conf is in the version 1 format, which cannot be combined with a drop-in', async () => {
    const root = await node({
      '/etc/containers/registries.conf': "[registries.search]\nregistries = ['docker.io']\n",
    });
    const run = await install(root);
    expect(run.warnings.join('\n')).toContain('uses the version 1 format');
  });
});

describe('node-setup for Docker', () => {
  const docker = (root: string, ...args: string[]) =>
    install(root, '--node-setup-runtime', 'docker', ...args);

  it('adds the distributed names to /etc/hosts between markers and prints the daemon.json setting', async () => {
    const daemonJson = '{ "log-driver": "json-file" }\n';
    const root = await node({ '/etc/hosts': '127.0.0.1 localhost\n', '/etc/docker/daemon.json': daemonJson });
    const run = await setup(root, ['--registries', `${REGISTRY},quay.io=https://quay.io`]);
    expect(run.lines[0]).toContain('for docker');
    expect(await read(root, '/etc/hosts')).toBe(
      [
        '127.0.0.1 localhost',
        '# BEGIN shoal',
        '# Written by Shoal (shoal node-setup): Docker pulls through the Shoal agent by these names.',
        '# Undo with `shoal node-setup --node-setup-action=uninstall`; lines outside the markers are not touched.',
        '127.0.0.1 registry-distributed.example.com',
        '127.0.0.1 quay-distributed.io',
        '# END shoal',
        '',
      ].join('\n'),
    );
    expect(await read(root, '/etc/docker/daemon.json')).toBe(daemonJson);
    expect(run.warnings[0]).toContain(
      '\n  "insecure-registries": ["registry-distributed.example.com:65002", "quay-distributed.io:65002"]\n',
    );

    // Entries already there are kept in the setting to use; once all are there, nothing is asked.
    await writeFile(
      join(root, '/etc/docker/daemon.json'),
      '{ "insecure-registries": ["quay-distributed.io:65002"] }',
    );
    const partly = await setup(root, ['--registries', `${REGISTRY},quay.io=https://quay.io`]);
    expect(partly.warnings[0]).toContain(
      '"insecure-registries": ["quay-distributed.io:65002", "registry-distributed.example.com:65002"]',
    );
    await writeFile(
      join(root, '/etc/docker/daemon.json'),
      '{"insecure-registries": ["quay-distributed.io:65002", "registry-distributed.example.com:65002"]}',
    );
    const done = await setup(root, ['--registries', `${REGISTRY},quay.io=https://quay.io`]);
    expect(done.warnings).toEqual([]);
    expect(done.verbs).toEqual(['skipped /etc/hosts']);
  });

  it('restores /etc/hosts byte for byte, with or without a final newline, and keeps later edits', async () => {
    for (const original of ['127.0.0.1 localhost\n::1 localhost', '127.0.0.1 localhost\n', '']) {
      const root = await node({ '/etc/hosts': original }, ['/etc/docker']);
      const before = await snapshot(root);
      await docker(root);
      expect(await read(root, '/etc/hosts')).toMatch(/# BEGIN shoal\n[^]*\n# END shoal\n$/);
      const again = await docker(root);
      expect(again.verbs).toEqual(['skipped /etc/hosts']);
      const undo = await uninstall(root);
      expect(undo.verbs).toEqual(['restored /etc/hosts']);
      expect(await snapshot(root)).toEqual(before);
    }

    const root = await node({ '/etc/hosts': '127.0.0.1 localhost' }, ['/etc/docker']);
    await docker(root);
    const withBlock = await read(root, '/etc/hosts');
    await writeFile(join(root, '/etc/hosts'), `10.1.1.1 added-later\n${withBlock}10.2.2.2 added-after\n`);
    const undo = await uninstall(root);
    expect(undo.lines.join('\n')).toContain('changes made to the rest of it since are kept');
    expect(await read(root, '/etc/hosts')).toBe(
      '10.1.1.1 added-later\n127.0.0.1 localhost\n10.2.2.2 added-after\n',
    );
  });

  it('creates /etc/hosts when there is none and removes it again', async () => {
    const root = await node({}, ['/etc/docker']);
    const before = await snapshot(root);
    await docker(root, '--node-setup-distributed-suffix', '-p2p', '--node-setup-distributed-port', '443');
    expect(await read(root, '/etc/hosts')).toContain('127.0.0.1 registry-p2p.example.com\n');
    await uninstall(root);
    expect(await snapshot(root)).toEqual(before);
  });
});

describe('node-setup options', () => {
  async function refused(args: string[], env: Record<string, string> = {}): Promise<string> {
    const root = await node();
    try {
      const { config } = loadConfig(nodeSetupSpec, {
        argv: ['--node-setup-root', root, ...args],
        env,
        command: 'shoal node-setup',
      });
      await runNodeSetup(config, { line: () => undefined, warn: () => undefined });
    } catch (err) {
      expect(isShoalError(err, 'SHOAL_ERR_CONFIG')).toBe(true);
      const message = (err as Error).message;
      expect(message).not.toContain('\n');
      return message;
    }
    throw new Error(`${args.join(' ')} was accepted`);
  }

  it('refuses bad values with one line naming the option', async () => {
    expect(await refused(['--node-setup-runtime', 'podman'])).toMatch(
      /^--node-setup-runtime: "podman" is not one of auto, containerd, crio, docker$/,
    );
    expect(await refused(['--node-setup-action', 'remove'])).toMatch(
      /^--node-setup-action: "remove" is not one of install, uninstall/,
    );
    expect(await refused(['--registries', '../etc=https://x.example.com'])).toMatch(
      /^--registries: "\.\.\/etc=https:\/\/x\.example\.com" is not a valid registry/,
    );
    expect(await refused(['--registries', 'registry.example.com'])).toMatch(
      /^--registries: .* is not a valid registry/,
    );
    expect(await refused(['--node-setup-mirror', 'ftp://agent'])).toMatch(
      /^--node-setup-mirror: "ftp:\/\/agent" is not a valid http\(s\)/,
    );
    expect(await refused(['--node-setup-certs-dir', 'etc/certs.d'])).toMatch(
      /^--node-setup-certs-dir: .* is not a valid absolute path/,
    );
    expect(await refused(['--node-setup-state-dir', '/var/../etc'])).toMatch(/^--node-setup-state-dir: /);
    expect(await refused([], { SHOAL_NODE_SETUP_DISTRIBUTED_PORT: '0' })).toMatch(
      /^SHOAL_NODE_SETUP_DISTRIBUTED_PORT: 0 is below the minimum 1$/,
    );
  });

  it('refuses an install it cannot do, naming the option to fix', async () => {
    expect(await refused(['--node-setup-runtime', 'containerd'])).toBe(
      '--registries (SHOAL_REGISTRIES): name at least one registry to pull through the agent',
    );
    expect(await refused(['--registries', REGISTRY])).toMatch(
      /^--node-setup-runtime \(SHOAL_NODE_SETUP_RUNTIME\): cannot tell the container runtime under /,
    );
    expect(
      await refused([
        '--registries',
        `${REGISTRY},https://registry.example.com`,
        '--node-setup-runtime',
        'containerd',
      ]),
    ).toMatch(/"registry\.example\.com" is named twice/);
    expect(await refused(['--registries', 'http://10.0.0.1:5000', '--node-setup-runtime', 'docker'])).toMatch(
      /^--registries: 10\.0\.0\.1:5000 is an IP address/,
    );
    expect(
      await refused([
        '--registries',
        REGISTRY,
        '--node-setup-runtime',
        'docker',
        '--node-setup-mirror',
        'http://agent.local:65001',
      ]),
    ).toMatch(/^--node-setup-mirror: .* must name the agent by IP address/);
  });
});

describe('the TOML reader', () => {
  it('reads what runtime configuration files use', () => {
    const doc = parseToml(
      [
        '# comment',
        'version = 3 # trailing',
        'imports = [',
        '  "/a.toml", # one',
        "  '/b.toml',",
        ']',
        "[plugins.'io.containerd.cri.v1.images'.registry]",
        '  config_path = "/etc/containerd/certs.d"',
        '  headers = { "X-A" = ["1"], b.c = true }',
        'plugins."io.containerd.cri.v1.runtime".cni.bin_dirs = ["/opt/cni/bin"]',
        '[[registry]]',
        'location = """',
        'multi \\',
        '   line"""',
        'size = 1_024',
        '[[registry]]',
        "location = '''raw\\n'''",
        'date = 1979-05-27T07:32:00Z',
        'escaped = "tab\\there \\u00e9"',
      ].join('\r\n'),
    );
    expect(doc['version']).toBe(3);
    expect(doc['imports']).toEqual(['/a.toml', '/b.toml']);
    expect(tomlGet(doc, ['plugins', 'io.containerd.cri.v1.images', 'registry', 'config_path'])).toBe(
      '/etc/containerd/certs.d',
    );
    expect(tomlGet(doc, ['plugins', 'io.containerd.cri.v1.images', 'registry', 'headers'])).toEqual({
      'X-A': ['1'],
      b: { c: true },
    });
    expect(tomlGet(doc, ['plugins', 'io.containerd.cri.v1.images', 'registry', 'plugins'])).toEqual({
      'io.containerd.cri.v1.runtime': { cni: { bin_dirs: ['/opt/cni/bin'] } },
    });
    expect(doc['registry']).toEqual([
      { location: 'multi line', size: 1024 },
      { location: 'raw\\n', date: '1979-05-27T07:32:00Z', escaped: 'tab\there é' },
    ]);
    expect(() => parseToml('a = "open\nb = 1')).toThrow(/line 1: unterminated string/);
    expect(() => parseToml('[table\n')).toThrow(/line 1: expected "]"/);
  });
});
