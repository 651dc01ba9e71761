/**
 * Registry credentials from Docker's config file (`docker login` writes them): `auths[registry].auth`,
 * base64 of `user:password`, or separate `username` and `password`. Keys may be written as a bare host
 * or as a URL; Docker Hub's is `https://index.docker.io/v1/`. Credential helpers are not run.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ShoalError } from '@shoal/mesh';

export interface RegistryCredentials {
  username: string;
  password: string;
}

const dockerHubKeys = ['docker.io', 'index.docker.io', 'registry-1.docker.io'];

/** The host a key of `auths` stands for: `https://host/v1/` and `host` both mean host. */
function hostOfKey(key: string): string {
  const text = key.trim().toLowerCase();
  if (/^[a-z][a-z0-9+.-]*:\/\//.test(text)) {
    try {
      return new URL(text).host;
    } catch {
      return text;
    }
  }
  return text.replace(/\/.*$/, '');
}

function matchesRegistry(key: string, registry: string): boolean {
  const host = hostOfKey(key);
  const wanted = registry.toLowerCase();
  if (dockerHubKeys.includes(wanted)) return dockerHubKeys.includes(host);
  return host === wanted;
}

/**
 * The credentials a Docker config (its JSON text) holds for a registry; undefined when it has none.
 * `source` names the file in errors.
 */
export function credentialsFromDockerConfig(
  text: string,
  registry: string,
  source: string,
): RegistryCredentials | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new ShoalError('SHOAL_ERR_CONFIG', `${source} is not valid JSON: fix it or pass --docker-config`);
  }
  const auths = (doc as { auths?: unknown } | null)?.auths;
  if (typeof auths !== 'object' || auths === null) return undefined;
  for (const key of Object.keys(auths)) {
    if (!matchesRegistry(key, registry)) continue;
    const entry = (auths as Record<string, unknown>)[key] as
      { auth?: unknown; username?: unknown; password?: unknown } | null | undefined;
    if (typeof entry?.auth === 'string' && entry.auth !== '') {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon <= 0) {
        throw new ShoalError(
          'SHOAL_ERR_CONFIG',
          `${source}: the entry for ${key} is not base64 of user:password; run docker login ${registry} again`,
        );
      }
      return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
    if (typeof entry?.username === 'string' && typeof entry.password === 'string' && entry.username !== '') {
      return { username: entry.username, password: entry.password };
    }
  }
  return undefined;
}

/** Reads the Docker config at `path` (~/.docker/config.json when empty); a missing file holds nothing. */
export async function readDockerCredentials(
  path: string,
  registry: string,
): Promise<RegistryCredentials | undefined> {
  const file = path || join(homedir(), '.docker', 'config.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !path) return undefined;
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `cannot read the Docker config ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)}): check --docker-config`,
    );
  }
  return credentialsFromDockerConfig(text, registry, file);
}
