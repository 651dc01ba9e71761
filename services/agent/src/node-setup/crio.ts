/**
 * CRI-O and podman (containers/image): a registries.conf drop-in naming the agent as a mirror of the
 * registry. containers/image cannot tell a mirror which registry a request is for: a mirror location
 * with a path (127.0.0.1:65001/registry.example.com) is requested as repository
 * `registry.example.com/<repo>` on the mirror, which the agent does not route. The agent serves requests
 * that name no registry from the first of its own registries, so only one registry can be mirrored
 * this way, and it must be the agent's first.
 */
import type { RegistryTarget } from '../endpoints.js';
import type { HostFs } from './host-fs.js';
import { OWN_HEADER } from './state.js';
import { parseToml } from './toml.js';

export const CRIO_DROP_IN = '/etc/containers/registries.conf.d/50-shoal.conf';
const REGISTRIES_CONF = '/etc/containers/registries.conf';

export interface CrioPlan {
  content: string;
  info: string[];
  warnings: string[];
}

export function crioDropIn(registries: readonly RegistryTarget[], mirror: string): CrioPlan {
  const [first, ...others] = registries as [RegistryTarget, ...RegistryTarget[]];
  const mirrorUrl = new URL(mirror);
  const upstream = new URL(first.url);
  const lines = [
    `${OWN_HEADER} (shoal node-setup): CRI-O and podman pull ${first.name} through the Shoal agent on`,
    '# this node, and from the registry when the agent does not have the image.',
    '# Undo with `shoal node-setup --node-setup-action=uninstall`.',
    '[[registry]]',
    `prefix = ${JSON.stringify(first.name)}`,
    `location = ${JSON.stringify(upstream.host)}`,
    ...(upstream.protocol === 'http:' ? ['insecure = true'] : []),
    '',
    '[[registry.mirror]]',
    `location = ${JSON.stringify(mirrorUrl.host)}`,
    ...(mirrorUrl.protocol === 'http:' ? ['insecure = true'] : []),
    '',
  ];
  const info = [
    `CRI-O and podman requests name no registry to the agent, which answers them from the first of its own registries: keep ${first.name} first there`,
    'podman reads the drop-in on every command; CRI-O at start and on reload (systemctl reload crio)',
  ];
  const warnings: string[] = [];
  if (others.length > 0) {
    warnings.push(
      `only ${first.name} is mirrored for CRI-O and podman; ${others.map((r) => r.name).join(', ')} ${
        others.length === 1 ? 'is' : 'are'
      } pulled straight from the registry, since a CRI-O mirror cannot name the registry to the agent.`,
    );
  }
  return { content: lines.join('\n'), info, warnings };
}

/**
 * containers/image refuses to combine a registries.conf in the old version 1 format with version 2
 * drop-ins; say so rather than leave every pull failing.
 */
export async function checkRegistriesConf(fs: HostFs): Promise<string | undefined> {
  const data = await fs.read(REGISTRIES_CONF);
  if (data === undefined) return undefined;
  try {
    const doc = parseToml(data.toString('utf8'));
    if (typeof doc['registries'] === 'object') {
      return `${REGISTRIES_CONF} uses the version 1 format ([registries.search] and the like), which containers/image refuses to combine with the drop-in ${CRIO_DROP_IN}: convert it to the version 2 format (unqualified-search-registries, [[registry]]) first.`;
    }
  } catch (err) {
    return `cannot read ${REGISTRIES_CONF}: ${(err as Error).message}; containers/image will refuse it too.`;
  }
  return undefined;
}
