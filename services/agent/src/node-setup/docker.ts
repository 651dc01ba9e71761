/**
 * Docker: its mirrors apply to Docker Hub only, so each registry gets a second, "distributed" host name
 * (registry.example.com → registry-distributed.example.com) that /etc/hosts points at the node, for the
 * agent to serve on its own port; images are then pulled by that name. node-setup writes the /etc/hosts
 * entries between markers and prints the daemon.json setting, which it never edits: a daemon.json Docker
 * cannot parse stops Docker from starting.
 */
import { isIP } from 'node:net';
import { ShoalError, flagName } from '@shoal/mesh';
import type { RegistryTarget } from '../endpoints.js';
import type { HostFs } from './host-fs.js';
import { BLOCK_BEGIN, BLOCK_END } from './state.js';

export const ETC_HOSTS = '/etc/hosts';

/** registry.example.com[:port] → registry<suffix>.example.com; the port is not part of the name. */
export function distributedName(registry: string, suffix: string): string {
  const host = registry.replace(/:\d+$/, '');
  if (isIP(host) !== 0) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `${flagName('registries')}: ${registry} is an IP address; Docker can only pull through the agent by a host name`,
    );
  }
  const dot = host.indexOf('.');
  return dot === -1 ? `${host}${suffix}` : `${host.slice(0, dot)}${suffix}${host.slice(dot)}`;
}

/** The address /etc/hosts gives the distributed names: the agent's, which must be an IP address. */
export function agentAddress(mirror: string): string {
  const host = new URL(mirror).hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === 'localhost') return '127.0.0.1';
  if (isIP(host) === 0) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `${flagName('node-setup.mirror')}: "${mirror}" must name the agent by IP address for the /etc/hosts entries Docker needs`,
    );
  }
  return host;
}

export function distributedNames(registries: readonly RegistryTarget[], suffix: string): string[] {
  return [...new Set(registries.map((r) => distributedName(r.name, suffix)))];
}

export function hostsBlock(names: readonly string[], address: string): string {
  return [
    BLOCK_BEGIN,
    '# Written by Shoal (shoal node-setup): Docker pulls through the Shoal agent by these names.',
    '# Undo with `shoal node-setup --node-setup-action=uninstall`; lines outside the markers are not touched.',
    ...names.map((name) => `${address} ${name}`),
    BLOCK_END,
    '',
  ].join('\n');
}

const DAEMON_JSON = '/etc/docker/daemon.json';

/**
 * Whether daemon.json lets Docker pull from the agent over plain HTTP by the distributed names; when it
 * does not, exactly what to add.
 */
export async function checkDaemonJson(
  fs: HostFs,
  names: readonly string[],
  port: number,
): Promise<{ info?: string; warning?: string }> {
  const wanted = names.map((name) => `${name}:${port}`);
  const data = await fs.read(DAEMON_JSON);
  let listed: unknown[] = [];
  if (data !== undefined) {
    try {
      const parsed = JSON.parse(data.toString('utf8')) as Record<string, unknown> | null;
      const value = parsed?.['insecure-registries'];
      if (Array.isArray(value)) listed = value;
    } catch (err) {
      return {
        warning: `cannot read ${DAEMON_JSON}: ${(err as Error).message}; Docker will not start with it either.`,
      };
    }
  }
  const missing = wanted.filter((entry) => !listed.includes(entry));
  if (missing.length === 0)
    return { info: `${DAEMON_JSON} already lists ${wanted.join(', ')} in insecure-registries` };
  const entries = [...listed.filter((e) => typeof e === 'string'), ...missing].map((e) => JSON.stringify(e));
  return {
    warning: [
      `Docker does not yet pull from the agent: set this in ${DAEMON_JSON} (node-setup never edits it), then restart Docker:`,
      '',
      `  "insecure-registries": [${entries.join(', ')}]`,
      '',
      `and pull images by the distributed name, e.g. ${missing[0]}/<repository>:<tag>. The agent must serve these names on port ${port}.`,
    ].join('\n'),
  };
}
