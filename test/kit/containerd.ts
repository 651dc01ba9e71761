import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand, startProcess, unlessExited, type ManagedProcess, type RunResult } from './process.js';
import { makeTempDir, removeTempDir } from './tmp.js';
import { waitFor } from './wait.js';

export interface StartContainerdOptions {
  /** Label for logs and errors; "containerd" unless given. */
  name?: string;
  /** Namespace used when a call names none; "shoal-test" unless given. */
  namespace?: string;
  /**
   * "isolated" (the kit's default) gives every namespace its own content, so a fresh namespace acts
   * like a fresh node; "shared" is containerd's own default, where a blob pulled in any namespace is
   * never downloaded again in another one.
   */
  contentSharing?: 'isolated' | 'shared';
  /**
   * Runs the daemon through this argv prefix, for example inside a network namespace with
   * `ip netns exec NS`. The prefix must exec the daemon, so that the process started is containerd.
   */
  wrap?: (cmd: string, args: string[]) => [string, string[]];
}

export interface PullOptions {
  ref: string;
  /** Directory holding <host>/hosts.toml files (see writeHostsToml); registry defaults apply without it. */
  hostsDir?: string;
  namespace?: string;
  /** Allows plain HTTP to the registry and mirrors; true unless given, since every kit server is HTTP. */
  plainHttp?: boolean;
  /** "user:password" for registries that require basic auth. */
  user?: string;
  /** Kills ctr after this long; 120 s unless given. */
  timeoutMs?: number;
  /** Further ctr pull flags, for example ['--max-concurrent-downloads', '1']. */
  extraArgs?: readonly string[];
}

export interface Containerd {
  /** Path of the gRPC unix socket, for `ctr -a`. */
  readonly socket: string;
  readonly dir: string;
  readonly logFile: string;
  /** The namespace used when a call names none. */
  readonly namespace: string;
  process(): ManagedProcess;
  /** Runs `ctr -a SOCKET -n NAMESPACE ARGS…` and returns its result without throwing on failure. */
  ctr(args: readonly string[], options?: { namespace?: string; timeoutMs?: number }): Promise<RunResult>;
  /** Pulls and unpacks an image with the native snapshotter; `ok` tells whether ctr exited 0. */
  pull(options: PullOptions): Promise<RunResult>;
  /**
   * Removes an image and waits for garbage collection, so its blobs and snapshots are gone and the
   * next pull in that namespace downloads everything again.
   */
  removeImage(ref: string, namespace?: string): Promise<void>;
  /** Image references present in a namespace. */
  images(namespace?: string): Promise<string[]>;
  /** Digests of the blobs in a namespace's content store. */
  content(namespace?: string): Promise<string[]>;
  /**
   * Returns a namespace name not used before in this containerd. Content is tracked per namespace,
   * so a pull in a fresh namespace downloads every blob again without any clean-up.
   */
  newNamespace(prefix?: string): string;
  /** Stops containerd and removes its root, state and sockets. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts a private containerd: root, state, sockets and plugin paths all live in a temp dir, the
 * CRI plugin is off, and the debug and metrics listeners are disabled, so it can run next to a
 * system containerd (or another private one) without sharing anything.
 */
export async function startContainerd(options: StartContainerdOptions = {}): Promise<Containerd> {
  const name = options.name ?? 'containerd';
  const defaultNamespace = options.namespace ?? 'shoal-test';
  const dir = await makeTempDir('ctrd');
  const socket = join(dir, 'containerd.sock');
  const logFile = join(dir, 'containerd.log');
  const configFile = join(dir, 'config.toml');
  await mkdir(join(dir, 'root'), { recursive: true });
  await mkdir(join(dir, 'state'), { recursive: true });
  const config = [
    'version = 2',
    `root = ${JSON.stringify(join(dir, 'root'))}`,
    `state = ${JSON.stringify(join(dir, 'state'))}`,
    // CRI would listen for a kubelet and start its own networking; the others only log failures here.
    'disabled_plugins = [',
    '  "io.containerd.grpc.v1.cri",',
    '  "io.containerd.snapshotter.v1.aufs",',
    '  "io.containerd.snapshotter.v1.btrfs",',
    '  "io.containerd.snapshotter.v1.devmapper",',
    '  "io.containerd.snapshotter.v1.zfs",',
    ']',
    '',
    '[grpc]',
    `  address = ${JSON.stringify(socket)}`,
    '',
    '[ttrpc]',
    `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
    '',
    // Empty addresses turn these listeners off; their defaults are fixed system paths and ports.
    '[debug]',
    '  address = ""',
    '',
    '[metrics]',
    '  address = ""',
    '',
    // Content is shared between namespaces by default: a pull in a new namespace would find every blob
    // already present and download nothing. Isolation makes each namespace behave like its own node.
    '[plugins."io.containerd.metadata.v1.bolt"]',
    `  content_sharing_policy = ${JSON.stringify(options.contentSharing ?? 'isolated')}`,
    '',
    // The opt plugin would otherwise create /opt/containerd.
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(join(dir, 'opt'))}`,
    '',
  ].join('\n');
  await writeFile(configFile, config);

  let proc: ManagedProcess;
  try {
    const [cmd, args] = (options.wrap ?? ((c, a) => [c, a]))('containerd', ['--config', configFile]);
    proc = await startProcess({ name, cmd, args, logFile });
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }

  const ctr = async (
    args: readonly string[],
    ctrOptions: { namespace?: string; timeoutMs?: number } = {},
  ): Promise<RunResult> =>
    await runCommand('ctr', ['-a', socket, '-n', ctrOptions.namespace ?? defaultNamespace, ...args], {
      timeoutMs: ctrOptions.timeoutMs ?? 120_000,
    });

  try {
    await unlessExited(
      proc,
      waitFor(async () => (await ctr(['version'], { timeoutMs: 5_000 })).ok, {
        timeoutMs: 20_000,
        intervalMs: 100,
        what: `containerd on ${socket}`,
      }),
      'starting',
    );
  } catch (err) {
    await proc.stop('SIGKILL');
    await removeTempDir(dir);
    throw err;
  }

  let stopped = false;
  let namespaceCounter = 0;
  const salt = randomBytes(3).toString('hex');

  const checked = async (args: readonly string[], namespace?: string): Promise<RunResult> => {
    const result = await ctr(args, namespace === undefined ? {} : { namespace });
    if (!result.ok) {
      throw new Error(
        `ctr ${args.join(' ')} failed (exit ${result.code}): ${result.stderr.trim() || result.stdout.trim()}`,
      );
    }
    return result;
  };

  return {
    socket,
    dir,
    logFile,
    namespace: defaultNamespace,
    process: () => proc,
    ctr,
    async pull(pull) {
      const args = ['image', 'pull', '--snapshotter', 'native'];
      if (pull.plainHttp !== false) args.push('--plain-http');
      if (pull.hostsDir !== undefined) args.push('--hosts-dir', pull.hostsDir);
      if (pull.user !== undefined) args.push('--user', pull.user);
      args.push(...(pull.extraArgs ?? []), pull.ref);
      return await ctr(args, {
        ...(pull.namespace === undefined ? {} : { namespace: pull.namespace }),
        timeoutMs: pull.timeoutMs ?? 120_000,
      });
    },
    async removeImage(ref, namespace) {
      await checked(['images', 'rm', '--sync', ref], namespace);
    },
    async images(namespace) {
      const result = await checked(['images', 'ls', '-q'], namespace);
      return splitLines(result.stdout);
    },
    async content(namespace) {
      const result = await checked(['content', 'ls', '-q'], namespace);
      return splitLines(result.stdout);
    },
    newNamespace(prefix = 'ns') {
      namespaceCounter += 1;
      return `${prefix}-${salt}-${namespaceCounter}`;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await proc.stop('SIGTERM', 10_000);
      await removeTempDir(dir);
    },
  };
}

export interface HostsTomlOptions {
  /** Capabilities given to each mirror; ["pull", "resolve"] unless given. */
  capabilities?: readonly string[];
}

/**
 * Writes DIR/<registryHost>/hosts.toml for `ctr --hosts-dir DIR`: requests for registryHost go to
 * each mirror in order first and fall back to the registry itself over plain HTTP. With no mirrors
 * the file only pins the registry, which makes a pull go straight there. Returns the file path.
 */
export async function writeHostsToml(
  dir: string,
  registryHost: string,
  mirrorUrls?: string | readonly string[],
  options: HostsTomlOptions = {},
): Promise<string> {
  const mirrors = mirrorUrls === undefined ? [] : typeof mirrorUrls === 'string' ? [mirrorUrls] : mirrorUrls;
  const capabilities = (options.capabilities ?? ['pull', 'resolve']).map((c) => JSON.stringify(c)).join(', ');
  const lines = [`server = ${JSON.stringify(`http://${registryHost}`)}`, ''];
  for (const mirror of mirrors) {
    lines.push(`[host.${JSON.stringify(mirror)}]`, `  capabilities = [${capabilities}]`, '');
  }
  const hostDir = join(dir, registryHost);
  await mkdir(hostDir, { recursive: true });
  const file = join(hostDir, 'hosts.toml');
  await writeFile(file, lines.join('\n'));
  return file;
}

function splitLines(text: string): string[] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '');
}
