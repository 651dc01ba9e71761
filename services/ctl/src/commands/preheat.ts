/**
 * `shoalctl preheat IMAGE`: reads the image's manifest from its registry and has the chosen agents
 * download every blob of it into their caches through the mesh (the smallest, such as the config, from the
 * registry: see the agents' origin.directMax), so a rollout afterwards pulls from nearby peers instead of
 * the registry. The agents authorise each blob with the registry using the same credential shoalctl was
 * given, so nobody warms what they could not pull.
 */
import { formatBytes, opt, ShoalError } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { readNodes } from '../nodes.js';
import { preheatAgent } from '../preheat/agents.js';
import { readDockerCredentials, type RegistryCredentials } from '../preheat/docker-config.js';
import {
  failureReasons,
  formatSettledLine,
  formatSummary,
  layerJson,
  LiveProgress,
} from '../preheat/progress.js';
import { formatImageReference, parseImageReference, registryBaseUrl } from '../preheat/reference.js';
import { RegistryClient, resolveImage } from '../preheat/registry.js';
import { runPreheat, type PreheatReport } from '../preheat/run.js';
import { parseSelector, selectNodes } from '../preheat/select.js';

const USAGE = 'shoalctl preheat IMAGE [--nodes SELECTOR | --percent P]';
/** How long one request to the registry or an agent may take. */
const REQUEST_TIMEOUT_MS = 15_000;
/** How long an agent may go unanswered while polled before its copies count as failed. */
const UNREACHABLE_AFTER_MS = 30_000;

export const preheatCommand = defineCommand({
  name: 'preheat',
  summary: `Warm an image's layers into the caches of chosen nodes before a rollout: ${USAGE}.`,
  spec: {
    nodes: opt.string(
      'nodes',
      '',
      'Nodes to warm: comma-separated node IDs, or zone=Z, vswitch=V, pool=P terms that must all match (zone=a,pool=gpu). Every node when empty.',
    ),
    percent: opt.int(
      'percent',
      100,
      'Warm this share of those nodes, spread evenly over zones and vSwitches (rounded up, at least one node).',
      { min: 1, max: 100 },
    ),
    platform: opt.string(
      'platform',
      'linux/amd64',
      'Platform to take from a multi-platform image (os/arch[/variant]).',
      { pattern: /^[a-z0-9]+\/[a-z0-9_]+(\/[a-z0-9]+)?$/, hint: 'platform os/arch[/variant]' },
    ),
    username: opt.string(
      'username',
      '',
      "User name for the registry, with the password in SHOAL_PASSWORD. Without it, the Docker config's entry for the registry is used.",
    ),
    password: opt.string(
      'password',
      '',
      'Password or token for the registry; prefer the environment variable SHOAL_PASSWORD, which other users cannot read in the process list.',
      { secret: true },
    ),
    dockerConfig: opt.string(
      'docker-config',
      '',
      'Docker config file with registry credentials (the auths entry docker login writes); ~/.docker/config.json when empty.',
    ),
    insecureRegistry: opt.bool(
      'insecure-registry',
      false,
      'Speak plain HTTP to the registry (always done for localhost and 127.0.0.1).',
    ),
    peerSecret: opt.string(
      'peer.secret',
      '',
      "The mesh's secret (the agents' peer.secret), to sign requests to the agents; prefer the environment variable SHOAL_PEER_SECRET.",
      { secret: true },
    ),
    pollInterval: opt.duration('poll-interval', '500ms', 'How often to ask every agent for its progress.', {
      minMs: 50,
      maxMs: 60_000,
    }),
  },
  async run({ config, args, nats, print, signal }) {
    const [imageText, ...extra] = args;
    if (imageText === undefined || extra.length > 0) {
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        `${imageText === undefined ? 'name the image' : `one image at a time (got ${args.join(' ')})`}: ${USAGE}`,
      );
    }
    const ref = parseImageReference(imageText);
    const display = formatImageReference(ref);
    const selector = parseSelector(config.nodes);
    if (config.password && !config.username) {
      throw new ShoalError('SHOAL_ERR_CONFIG', 'a password needs a user name: pass --username too');
    }
    if (config.username && !config.password) {
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        `--username ${config.username} needs a password: set SHOAL_PASSWORD (or pass --password)`,
      );
    }

    const { nodes: registered } = await readNodes(await nats());
    const nodes = selectNodes(registered, selector, config.percent);

    const credentials: RegistryCredentials | undefined = config.username
      ? { username: config.username, password: config.password }
      : await readDockerCredentials(config.dockerConfig, ref.registry);
    const registry = new RegistryClient({
      registry: ref.registry,
      baseUrl: registryBaseUrl(ref.registry, config.insecureRegistry),
      repository: ref.repository,
      credentials,
      timeoutMs: REQUEST_TIMEOUT_MS,
      signal,
    });
    const image = await resolveImage(
      registry,
      { display, registry: ref.registry, repository: ref.repository, reference: ref.reference },
      config.platform,
    );

    const table = config.output === 'table';
    const live = table && process.stdout.isTTY ? new LiveProgress(print) : undefined;
    if (table) {
      const total = image.blobs.reduce((sum, b) => sum + b.size, 0);
      print(
        `preheating ${display} (${image.blobs.length} blobs, ${formatBytes(total)}) on ${nodes.length} node${nodes.length === 1 ? '' : 's'}: ${nodes.map((n) => n.id).join(', ')}`,
      );
    }
    const report = await runPreheat({
      agents: nodes.map((node) => preheatAgent(node, config.peerSecret, REQUEST_TIMEOUT_MS)),
      request: {
        registry: ref.registry,
        repository: ref.repository,
        digests: image.blobs.map((b) => b.digest),
      },
      authorization: registry.credential,
      blobs: image.blobs,
      pollMs: config.pollInterval,
      unreachableAfterMs: UNREACHABLE_AFTER_MS,
      signal,
      ...(live ? { onProgress: (layers) => live.draw(layers) } : {}),
      onLayerSettled: (layer) => {
        if (!table) print(layerJson(layer));
        else if (!live) print(formatSettledLine(layer));
      },
    });
    if (table) print(`\n${formatSummary(display, report)}`);
    const failure = outcome(display, report);
    if (failure) throw failure;
  },
});

/** The one-line error a preheat that did not put every blob on every node ends with. */
function outcome(display: string, report: PreheatReport): ShoalError | undefined {
  const copies = report.layers.reduce((sum, l) => sum + l.nodes, 0);
  const done = report.layers.reduce((sum, l) => sum + l.done, 0);
  if (report.cancelled) {
    return new ShoalError(
      'SHOAL_ERR_UPSTREAM',
      `preheat of ${display} cancelled with ${done} of ${copies} copies in place; run it again to finish`,
    );
  }
  if (done === copies) return undefined;
  const reasons = failureReasons(report);
  const nodes = [...new Set(reasons.map(([node]) => node))];
  const [, first] = reasons[0] ?? ['', 'unknown'];
  return new ShoalError(
    'SHOAL_ERR_UPSTREAM',
    `preheat of ${display} incomplete on ${nodes.join(', ')}: ${first}${reasons.length > 1 ? ` (and ${reasons.length - 1} more reasons)` : ''}`,
  );
}
