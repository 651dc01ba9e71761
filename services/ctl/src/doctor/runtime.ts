/**
 * Checks of this machine's containerd configuration: a hosts.toml per registry naming the local agent
 * as a mirror, and a registry config_path in config.toml that makes containerd read them. The files are
 * read with a few patterns rather than a TOML parser: only the table headers and two keys matter, and
 * shoalctl depends on nothing but the mesh library.
 */
import { readFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { checkOf, type CheckResult } from './checklist.js';
import { sections } from './mesh.js';

/** The first line of every file `shoal node-setup` writes; such a file is rewritten by running it again. */
const NODE_SETUP_HEADER = '# Written by Shoal';

/** A file's text, or undefined when it does not exist. */
export async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

const quoted = String.raw`"((?:[^"\\]|\\.)*)"|'([^']*)'`;

function unquote(double: string | undefined, single: string | undefined): string {
  if (double !== undefined) {
    try {
      return JSON.parse(`"${double}"`) as string;
    } catch {
      return double;
    }
  }
  return single ?? '';
}

export interface HostsToml {
  /** Whether `shoal node-setup` wrote the file (its first line says so). */
  ownedByShoal: boolean;
  server?: { url: string; line: number };
  /** The [host."<url>"] tables, in the order containerd tries them; lines count from 1. */
  hosts: { url: string; line: number }[];
}

export function parseHostsToml(text: string): HostsToml {
  const header = new RegExp(String.raw`^\s*\[\s*host\s*\.\s*(?:${quoted}|([A-Za-z0-9_-]+))\s*\]\s*(?:#.*)?$`);
  const server = new RegExp(String.raw`^\s*server\s*=\s*(?:${quoted})`);
  const out: HostsToml = { ownedByShoal: text.startsWith(NODE_SETUP_HEADER), hosts: [] };
  let inTable = false;
  text.split('\n').forEach((line, i) => {
    const host = header.exec(line);
    if (host) {
      out.hosts.push({ url: host[3] ?? unquote(host[1], host[2]), line: i + 1 });
      inTable = true;
      return;
    }
    if (/^\s*\[/.test(line)) inTable = true;
    const match = inTable ? null : server.exec(line);
    if (match) out.server = { url: unquote(match[1], match[2]), line: i + 1 };
  });
  return out;
}

/** Two URLs naming the same place: scheme, host and port (defaults made explicit), path without a final '/'. */
export function sameUrl(a: string, b: string): boolean {
  const norm = (text: string) => {
    try {
      const url = new URL(text);
      return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, '')}`;
    } catch {
      return text.replace(/\/+$/, '');
    }
  };
  return norm(a) === norm(b);
}

export interface HostsTomlFacts {
  registry: string;
  /** The file's path on this machine (below --root). */
  path: string;
  text: string | undefined;
  agentUrl: string;
  /** The command that writes the file, with this registry and agent, for the fix. */
  setupCommand: string;
}

export function judgeHostsToml(facts: HostsTomlFacts): CheckResult {
  const { registry, path, agentUrl, setupCommand } = facts;
  const check = checkOf(`hosts-toml:${registry}`, sections.runtime, `hosts.toml for ${registry}`);
  const rewrite = `run \`${setupCommand}\` on this machine (the chart's init container runs it on every node)`;
  if (facts.text === undefined) {
    return check.fail(
      `${path} does not exist: containerd pulls ${registry} from the registry, not through the agent`,
      rewrite,
    );
  }
  const parsed = parseHostsToml(facts.text);
  const agentEntry = `[host.${JSON.stringify(agentUrl)}]`;
  const position = parsed.hosts.findIndex((h) => sameUrl(h.url, agentUrl));
  const first = parsed.hosts[0];
  if (position === 0 && first)
    return check.ok(`${path} mirrors ${registry} through ${agentUrl} (line ${first.line})`);
  if (position > 0 && first) {
    const entry = parsed.hosts[position] as { line: number };
    return check.warn(
      `${path}: containerd tries ${first.url} (line ${first.line}) before the agent (line ${entry.line})`,
      `move the ${agentEntry} table of ${path} above line ${first.line}, or ${rewrite}`,
    );
  }
  if (!first) {
    return check.fail(
      `${path} names no mirror: containerd pulls ${registry} from ${parsed.server?.url ?? 'the registry'} directly`,
      parsed.ownedByShoal
        ? rewrite
        : `add a ${agentEntry} table with capabilities = ["pull", "resolve"] to ${path}, or ${rewrite}`,
    );
  }
  const elsewhere = parsed.hosts.map((h) => `${h.url} (line ${h.line})`).join(', ');
  return check.fail(
    `${path} sends ${registry} to ${elsewhere}, not to the agent at ${agentUrl}`,
    parsed.ownedByShoal
      ? `${rewrite}: it rewrites its own file; or change line ${first.line} to ${agentEntry} (if that address is the agent, pass it as --agent)`
      : `change line ${first.line} of ${path} to ${agentEntry}, or ${rewrite}: it moves this file aside and puts it back on uninstall`,
  );
}

export interface ContainerdConfig {
  version: number;
  /** The CRI registry config_path, with its line, when the file sets one. */
  configPath?: { value: string; line: number };
  /** Whether the file imports others, which may set config_path instead. */
  imports: boolean;
}

/**
 * The CRI registry config_path as containerd's config.toml sets it, in any of the layouts of config
 * versions 1 to 3 (`[plugins."io.containerd.grpc.v1.cri".registry]`, `[plugins.cri.registry]`,
 * `[plugins."io.containerd.cri.v1.images".registry]`), as a key of that table or a dotted key above it.
 */
export function parseContainerdConfig(text: string): ContainerdConfig {
  const table = /^\s*\[([^[\]]+)\]\s*(?:#.*)?$/;
  const key = new RegExp(String.raw`^\s*((?:[A-Za-z0-9_-]+\s*\.\s*)*config_path)\s*=\s*(?:${quoted})`);
  const plain = (path: string) => path.replace(/["'\s]/g, '');
  const out: ContainerdConfig = { version: 1, imports: false };
  let current = '';
  text.split('\n').forEach((line, i) => {
    const header = table.exec(line);
    if (header) {
      current = plain(header[1] ?? '');
      return;
    }
    if (current === '') {
      const version = /^\s*version\s*=\s*(\d+)/.exec(line);
      if (version) out.version = Number(version[1]);
      if (/^\s*imports\s*=/.test(line)) out.imports = true;
    }
    const match = key.exec(line);
    if (!match) return;
    const full = [current, plain(match[1] ?? '')].filter((p) => p !== '').join('.');
    if (
      /(^|\.)(cri|io\.containerd\.grpc\.v1\.cri|io\.containerd\.cri\.v1\.images)\.registry\.config_path$/.test(
        full,
      )
    ) {
      out.configPath = { value: unquote(match[2], match[3]), line: i + 1 };
    }
  });
  return out;
}

export function judgeConfigPath(facts: {
  path: string;
  text: string | undefined;
  certsDir: string;
}): CheckResult {
  const { path, certsDir } = facts;
  const check = checkOf('config-path', sections.runtime, 'containerd reads certs.d');
  const restart = 'then restart containerd (systemctl restart containerd)';
  if (facts.text === undefined) {
    return check.warn(
      `${path} does not exist: containerd runs with built-in defaults, under which containerd 1.x reads no hosts.toml`,
      `create ${path} with version = 2 and config_path = ${JSON.stringify(certsDir)} in [plugins."io.containerd.grpc.v1.cri".registry], ${restart}`,
    );
  }
  const config = parseContainerdConfig(facts.text);
  const table =
    config.version >= 3
      ? '[plugins."io.containerd.cri.v1.images".registry]'
      : '[plugins."io.containerd.grpc.v1.cri".registry]';
  const normal = (dir: string) => posix.normalize(dir).replace(/(.)\/$/, '$1');
  if (config.configPath) {
    const { value, line } = config.configPath;
    const dirs = value.split(':').filter((d) => d !== '');
    if (dirs.some((d) => normal(d) === normal(certsDir))) {
      return check.ok(`config_path ${JSON.stringify(value)} (${path}, line ${line}) includes ${certsDir}`);
    }
    return check.warn(
      `config_path ${JSON.stringify(value)} (${path}, line ${line}) does not include ${certsDir}: containerd ignores the hosts.toml files there`,
      `change line ${line} of ${path} to config_path = ${JSON.stringify([certsDir, ...dirs].join(':'))}, ${restart}`,
    );
  }
  const imported = config.imports ? ' (unless a file it imports sets it: look there)' : '';
  const v2 =
    config.version >= 3
      ? '; containerd 2.x may use a default one, which `containerd config dump | grep config_path` shows'
      : '';
  return check.warn(
    `${path} sets no registry config_path, so the kubelet's pulls may not read ${certsDir}${imported}${v2}`,
    `add config_path = ${JSON.stringify(certsDir)} to the ${table} table of ${path}, ${restart}`,
  );
}
