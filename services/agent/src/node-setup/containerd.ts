/**
 * containerd: one hosts.toml per registry, naming the agent as a pull-and-resolve mirror and the
 * registry as the server, so containerd asks the agent first (with `?ns=<registry>`) and falls back to
 * the registry by itself when the agent refuses or fails. containerd's CRI plugin reads these files only
 * if its registry `config_path` includes the directory; node-setup checks that, but never edits
 * config.toml: a wrong edit there stops every pod on the node from starting.
 */
import { readdir } from 'node:fs/promises';
import { posix } from 'node:path';
import type { RegistryTarget } from '../endpoints.js';
import type { HostFs } from './host-fs.js';
import { OWN_HEADER } from './state.js';
import { parseToml, type TomlTable, tomlGet, tomlKeyPath } from './toml.js';

const UNDO = 'shoal node-setup --node-setup-action=uninstall';

export function hostsTomlPath(certsDir: string, registry: RegistryTarget): string {
  return posix.join(certsDir, registry.name, 'hosts.toml');
}

export function hostsToml(registry: RegistryTarget, mirror: string): string {
  return [
    `${OWN_HEADER} (shoal node-setup): containerd pulls ${registry.name} through the Shoal agent on this`,
    '# node and falls back to the registry by itself when the agent cannot serve a request. Undo with',
    `# \`${UNDO}\`, which puts back any hosts.toml this file replaced.`,
    `server = ${JSON.stringify(registry.url)}`,
    '',
    `[host.${JSON.stringify(mirror)}]`,
    '  capabilities = ["pull", "resolve"]',
    '',
  ].join('\n');
}

/** Where a config file of each version keeps the CRI registry settings. */
function registryTable(version: number): string[] {
  if (version >= 3) return ['plugins', 'io.containerd.cri.v1.images', 'registry'];
  if (version === 2) return ['plugins', 'io.containerd.grpc.v1.cri', 'registry'];
  return ['plugins', 'cri', 'registry'];
}

interface ConfigFile {
  path: string;
  doc: TomlTable;
  table: string[];
}

function versionOf(doc: TomlTable): number {
  const version = doc['version'];
  return typeof version === 'number' ? version : 1;
}

/** Files named by `imports`, in order; a `*` or `?` is expanded in the last path component only. */
async function importedPaths(fs: HostFs, main: string, doc: TomlTable): Promise<string[]> {
  const imports = doc['imports'];
  if (!Array.isArray(imports)) return [];
  const out: string[] = [];
  for (const item of imports) {
    if (typeof item !== 'string') continue;
    const path = posix.isAbsolute(item) ? item : posix.join(posix.dirname(main), item);
    const base = posix.basename(path);
    if (!/[*?]/.test(base)) {
      out.push(path);
      continue;
    }
    const dir = posix.dirname(path);
    const pattern = new RegExp(
      `^${base
        .replace(/[.+^${}()|[\]\\]/g, '\\$&')
        .replace(/\*/g, '[^/]*')
        .replace(/\?/g, '[^/]')}$`,
    );
    const names = await readdir(fs.abs(dir)).catch(() => [] as string[]);
    for (const name of names.sort()) if (pattern.test(name)) out.push(posix.join(dir, name));
  }
  return out;
}

export interface ConfigPathCheck {
  /** A line for the log when containerd reads certsDir. */
  info?: string;
  /** What is wrong and exactly what to do about it. */
  warning?: string;
}

const RESTART =
  'then restart containerd (systemctl restart containerd). node-setup never edits config.toml; the hosts.toml files are in place and take effect as soon as containerd reads';

/**
 * Whether containerd's CRI plugin reads `certsDir`: its registry config_path (a list separated by ':')
 * in the config file or a file it imports (later files win, as containerd merges them) must include it,
 * and no directory earlier in the list may hold a configuration for one of the mirrored registries.
 */
export async function checkConfigPath(
  fs: HostFs,
  configFile: string,
  certsDir: string,
  registries: readonly RegistryTarget[],
): Promise<ConfigPathCheck> {
  const data = await fs.read(configFile);
  if (data === undefined) {
    const snippet = [
      'version = 2',
      '',
      '[plugins."io.containerd.grpc.v1.cri".registry]',
      `  config_path = ${JSON.stringify(certsDir)}`,
    ];
    return {
      warning: [
        `${configFile} does not exist, so containerd runs with its built-in defaults, under which containerd 1.x reads no hosts.toml files. Create ${configFile} with:`,
        '',
        ...snippet,
        '',
        `(containerd 2.x reads this form too), ${RESTART} ${certsDir}.`,
      ].join('\n'),
    };
  }
  const files: ConfigFile[] = [];
  const read = async (path: string, text: string) => {
    try {
      const doc = parseToml(text);
      files.push({ path, doc, table: registryTable(versionOf(doc)) });
      return doc;
    } catch (err) {
      return `${path}: ${(err as Error).message}`;
    }
  };
  const main = await read(configFile, data.toString('utf8'));
  if (typeof main === 'string') {
    return {
      warning: `cannot read ${main}; check by hand that the CRI registry config_path in ${configFile} includes ${certsDir}, ${RESTART} ${certsDir}.`,
    };
  }
  for (const path of await importedPaths(fs, configFile, main)) {
    const imported = await fs.read(path);
    if (imported !== undefined) await read(path, imported.toString('utf8'));
  }

  let setting: { file: ConfigFile; value: string } | undefined;
  for (const file of files) {
    const value = tomlGet(file.doc, [...file.table, 'config_path']);
    if (typeof value === 'string') setting = { file, value };
  }
  const mainFile = files[0] as ConfigFile;
  const header = `[${tomlKeyPath(mainFile.table)}]`;
  const dirs = (setting?.value ?? '').split(':').filter((d) => d !== '');
  const normalized = (dir: string) => posix.normalize(dir).replace(/(.)\/$/, '$1');
  const position = dirs.findIndex((d) => normalized(d) === normalized(certsDir));

  if (setting && position !== -1) {
    for (const dir of dirs.slice(0, position)) {
      const shadowed = [];
      for (const registry of registries) {
        if (await fs.exists(posix.join(dir, registry.name))) shadowed.push(registry.name);
      }
      if (shadowed.length > 0) {
        return {
          warning: `config_path in ${setting.file.path} is "${setting.value}": ${dir} comes before ${certsDir} and has its own configuration for ${shadowed.join(', ')}, which containerd uses instead of Shoal's. Remove ${shadowed.map((s) => posix.join(dir, s)).join(', ')} or put ${certsDir} first in config_path, ${RESTART} ${certsDir}.`,
        };
      }
    }
    return { info: `containerd reads ${certsDir} (config_path "${setting.value}" in ${setting.file.path})` };
  }

  if (setting) {
    const table = `[${tomlKeyPath(setting.file.table)}]`;
    return {
      warning: [
        `containerd does not read ${certsDir}: config_path in ${table} of ${setting.file.path} is "${setting.value}". Change it to:`,
        '',
        `  config_path = ${JSON.stringify([certsDir, ...dirs].join(':'))}`,
        '',
        `${RESTART} ${certsDir}.`,
      ].join('\n'),
    };
  }

  const tableExists = typeof tomlGet(mainFile.doc, mainFile.table) === 'object';
  const mirrors = tomlGet(mainFile.doc, [...mainFile.table, 'mirrors']);
  const hasMirrors = typeof mirrors === 'object' && Object.keys(mirrors).length > 0;
  const lines = [
    `containerd does not read ${certsDir}: ${configFile} sets no config_path for the CRI registry, so the kubelet's image pulls do not use the hosts.toml files. ${
      tableExists ? `Add this line to the existing ${header} table:` : 'Add:'
    }`,
    '',
    ...(tableExists ? [] : [header]),
    `  config_path = ${JSON.stringify(certsDir)}`,
    '',
  ];
  if (hasMirrors) {
    lines.push(
      `and move the entries under ${tomlKeyPath([...mainFile.table, 'mirrors'])} into hosts.toml files first: containerd refuses registry mirrors and config_path together.`,
    );
  }
  if (versionOf(mainFile.doc) >= 3) {
    lines.push(
      'containerd 2.x may already use a default config_path: `containerd config dump | grep config_path` shows the one it uses.',
    );
  }
  lines.push(`${RESTART.replace(/^then r/, 'Then r')} ${certsDir}.`);
  return { warning: lines.join('\n') };
}
