/** Every option of `shoal node-setup`, defined once. */
import { type ConfigOf, opt } from '@shoal/mesh';

const label = '[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?';
/** A registry as images name it: host[:port]. It becomes a directory name, so nothing else is allowed. */
export const registryHostPattern = new RegExp(`^${label}(?:\\.${label})*(?::\\d{1,5})?$`);
/** An absolute path without ".." segments: every path is joined to the root and must stay below it. */
const hostPath = { pattern: /^\/(?!.*(?:^|\/)\.\.(?:\/|$))[^\0\n]*$/, hint: 'absolute path without ".."' };

export const nodeSetupSpec = {
  action: opt.oneOf(
    'node-setup.action',
    ['install', 'uninstall'] as const,
    'install',
    'install points the container runtime at the agent (and backs up what it replaces); uninstall removes what install wrote and restores the backups byte for byte. Both can run any number of times.',
  ),
  root: opt.string(
    'node-setup.root',
    '/',
    "Where the node's filesystem is mounted (e.g. /host in an init container); every other path is taken below it.",
    hostPath,
  ),
  runtime: opt.oneOf(
    'node-setup.runtime',
    ['auto', 'containerd', 'crio', 'docker'] as const,
    'auto',
    'Container runtime to configure. auto: containerd if its config.toml or socket (/run/containerd/containerd.sock) exists, else CRI-O/podman if /etc/crio or /etc/containers exists, else Docker if /etc/docker exists.',
  ),
  registries: opt.list(
    'registries',
    [],
    "Registries to pull through the agent, as URL or name=URL, the same list as the agent's (e.g. registry.example.com=https://registry.example.com); the name is the registry as images name it.",
    {
      pattern: new RegExp(`^(${registryHostPattern.source.slice(1, -1)}=)?https?://[^\\s/@]+$`),
      hint: 'registry [host[:port]=]http(s)://host[:port] (no credentials in it)',
    },
  ),
  mirror: opt.string(
    'node-setup.mirror',
    'http://127.0.0.1:65001',
    "The agent's mirror URL as the container runtime on the node reaches it.",
    { pattern: /^https?:\/\/[^\s/@]+\/?$/, hint: 'http(s)://host:port URL' },
  ),
  containerdConfig: opt.string(
    'node-setup.containerdConfig',
    '/etc/containerd/config.toml',
    "containerd's configuration file. It is only read, never edited: when its registry config_path does not include certsDir, node-setup prints what to add.",
    hostPath,
  ),
  certsDir: opt.string(
    'node-setup.certsDir',
    '/etc/containerd/certs.d',
    'Directory of containerd host configurations; <certsDir>/<registry>/hosts.toml is written per registry.',
    hostPath,
  ),
  stateDir: opt.string(
    'node-setup.stateDir',
    '/var/lib/shoal/node-setup',
    'Where the record of what was written (manifest.json) and the backups of replaced files are kept.',
    hostPath,
  ),
  distributedSuffix: opt.string(
    'node-setup.distributedSuffix',
    '-distributed',
    'Docker only: appended to the first label of each registry host to make the name Docker pulls through the agent by (registry.example.com → registry-distributed.example.com), which /etc/hosts points at the node.',
    { pattern: /^[A-Za-z0-9-]{1,40}$/, hint: 'DNS label characters' },
  ),
  distributedPort: opt.int(
    'node-setup.distributedPort',
    65002,
    'Docker only: the port the agent serves the distributed names on, for the daemon.json setting node-setup prints.',
    { min: 1, max: 65535 },
  ),
  restart: opt.bool(
    'node-setup.restart',
    false,
    'After a change, restart containerd (systemctl restart containerd) or reload CRI-O (systemctl reload crio), through nsenter into PID 1 when the root is not / (needs hostPID and privileges). hosts.toml files take effect without a restart; it is needed only after config.toml was changed.',
  ),
};

export type NodeSetupConfig = ConfigOf<typeof nodeSetupSpec>;
export type Runtime = Exclude<NodeSetupConfig['runtime'], 'auto'>;
