/**
 * Which checks `shoalctl doctor` runs, in the order they are listed, and what each one reads first.
 * What several checks need (the NATS connection, the JetStream account, the node and endpoint records,
 * the agents' answers) is fetched once; a check whose prerequisite is missing is listed as not checked.
 */
import { type JetStreamAccountStats, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { EndpointRecord } from '@shoal/mesh';
import { posix } from 'node:path';
import { readNodes } from '../nodes.js';
import { readEndpoints } from '../status/endpoints.js';
import { clockReadings, judgeAgentClocks, judgeAgentHealth, mapLimit, probeAgent } from './agents.js';
import { type Check, checkOf, type CheckResult, NotChecked } from './checklist.js';
import {
  judgeAnnouncer,
  judgeConnection,
  judgeDiscovery,
  judgeJetStream,
  judgeScheduler,
  judgeStreams,
  probeAnnouncer,
  probeScheduler,
  sections,
} from './mesh.js';
import { judgeRegistry, probeEndpoint } from './registries.js';
import { judgeConfigPath, judgeHostsToml, readText } from './runtime.js';

export const checkGroups = ['nats', 'services', 'agents', 'runtime', 'registries'] as const;
export type CheckGroup = (typeof checkGroups)[number];

export interface DoctorOptions {
  natsServers: readonly string[];
  timeoutMs: number;
  /** Only this node's agent; empty for every registered node. */
  node: string;
  /** The local agent as containerd here reaches it. */
  agentUrl: string;
  root: string;
  certsDir: string;
  containerdConfig: string;
  /** Further registries for the hosts.toml checks: host[:port], URL, or name=URL. */
  registries: readonly string[];
  skip: ReadonlySet<CheckGroup>;
}

export interface DoctorDeps {
  nats: () => Promise<NatsConnection>;
  now: () => number;
}

/** Agents asked at once: enough to check a large cluster in a few timeouts, few enough for one machine. */
const AGENT_PROBES_AT_ONCE = 32;

const DEFAULT_CERTS_DIR = '/etc/containerd/certs.d';

function once<T>(make: () => Promise<T>): () => Promise<T> {
  let made: Promise<T> | undefined;
  return () => (made ??= make());
}

/** A `--registries` entry as a registry name and, when it says, its URL. */
export function registryOfEntry(entry: string): { name: string; url?: string } {
  const eq = entry.indexOf('=');
  if (eq > 0) return { name: entry.slice(0, eq), url: entry.slice(eq + 1) };
  if (/^https?:\/\//.test(entry)) return { name: new URL(entry).host, url: entry };
  return { name: entry };
}

/** The registry's own URL from its published record: the `registry` endpoint, else the preferred one. */
function registryUrl(record: EndpointRecord): string {
  return record.endpoints.find((e) => e.kind === 'registry')?.url ?? record.url;
}

export function doctorChecks(options: DoctorOptions, deps: DoctorDeps): Check[] {
  const { timeoutMs, skip } = options;
  const connection = once(async () => {
    if (skip.has('nats')) throw new NotChecked('not checked (--skip nats)');
    try {
      return await deps.nats();
    } catch {
      throw new NotChecked('not checked: NATS is unreachable');
    }
  });
  const account = once(async () =>
    (await jetstreamManager(await connection(), { timeout: timeoutMs, checkAPI: false })).getAccountInfo(),
  );
  const withJetStream = once(async () => {
    const nc = await connection();
    await account().catch(() => {
      throw new NotChecked('not checked: JetStream does not answer');
    });
    return { nc, jsm: await jetstreamManager(nc, { timeout: timeoutMs, checkAPI: false }) };
  });
  const nodes = once(async () => readNodes((await withJetStream()).nc));
  const endpoints = once(async () => readEndpoints((await withJetStream()).nc));
  const agents = once(async () => {
    const { nodes: all } = await nodes();
    const targets = options.node ? all.filter((n) => n.id === options.node) : all;
    return mapLimit(targets, AGENT_PROBES_AT_ONCE, (node) => probeAgent(node, timeoutMs, deps.now));
  });

  const checks: Check[] = [];
  if (!skip.has('nats')) {
    checks.push(
      {
        id: 'nats',
        section: sections.nats,
        title: 'NATS reachable',
        async run() {
          try {
            const nc = await deps.nats();
            return judgeConnection(options.natsServers, { version: nc.info?.version ?? 'unknown version' });
          } catch (err) {
            const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : '';
            return judgeConnection(options.natsServers, {
              error: `${err instanceof Error ? err.message : String(err)}${cause}`,
            });
          }
        },
      },
      {
        id: 'jetstream',
        section: sections.nats,
        title: 'JetStream enabled',
        async run() {
          await connection();
          const stats = await account().then(
            (info): JetStreamAccountStats | { error: string } => info,
            (err: unknown) => ({ error: err instanceof Error ? err.message : String(err) }),
          );
          return judgeJetStream(stats);
        },
      },
      {
        id: 'streams',
        section: sections.nats,
        title: 'streams and KV buckets',
        async run() {
          const { jsm } = await withJetStream();
          const names = new Set<string>();
          for await (const name of jsm.streams.names()) names.add(name);
          return judgeStreams(names);
        },
      },
    );
  }
  if (!skip.has('services')) {
    checks.push(
      {
        id: 'discovery',
        section: sections.services,
        title: 'discovery',
        async run() {
          const [{ nodes: records }, { registries }] = await Promise.all([nodes(), endpoints()]);
          return judgeDiscovery(records, registries, deps.now());
        },
      },
      {
        id: 'scheduler',
        section: sections.services,
        title: 'scheduler',
        async run() {
          return judgeScheduler(await probeScheduler(await connection(), timeoutMs));
        },
      },
      {
        id: 'announcer',
        section: sections.services,
        title: 'announcer',
        async run() {
          return judgeAnnouncer(await probeAnnouncer((await withJetStream()).jsm));
        },
      },
    );
  }
  if (!skip.has('agents')) {
    const only = options.node || undefined;
    checks.push(
      {
        id: 'agents',
        section: sections.agents,
        title: only ? `agent ${only} answers /healthz` : 'agents answer /healthz',
        // Each request has its own timeout; a large cluster takes several rounds of them.
        deadlineMs: Number.POSITIVE_INFINITY,
        async run() {
          return judgeAgentHealth(await agents(), only);
        },
      },
      {
        id: 'clocks',
        section: sections.agents,
        title: only ? `agent ${only} clock` : 'agent clocks',
        deadlineMs: Number.POSITIVE_INFINITY,
        async run() {
          return judgeAgentClocks(clockReadings(await agents()), only);
        },
      },
    );
  }
  if (!skip.has('runtime')) {
    const onHost = (path: string) => posix.join(options.root, path);
    checks.push(
      {
        id: 'hosts-toml',
        section: sections.runtime,
        title: 'hosts.toml',
        async run() {
          const wanted = new Map<string, string | undefined>();
          let published: EndpointRecord[] | undefined;
          try {
            published = (await endpoints()).registries;
          } catch (err) {
            if (!(err instanceof NotChecked) || options.registries.length === 0) throw err;
          }
          for (const record of published ?? []) wanted.set(record.registry, registryUrl(record));
          for (const entry of options.registries) {
            const { name, url } = registryOfEntry(entry);
            wanted.set(name, url ?? wanted.get(name));
          }
          if (wanted.size === 0) {
            return checkOf('hosts-toml', sections.runtime, 'hosts.toml').skip(
              'no registries to check: discovery publishes none and --registries is empty',
            );
          }
          const results: CheckResult[] = [];
          for (const [registry, url] of [...wanted].sort(([a], [b]) => a.localeCompare(b))) {
            const path = onHost(posix.join(options.certsDir, registry, 'hosts.toml'));
            const setupCommand = [
              'shoal node-setup',
              `--registries=${registry}=${url ?? `https://${registry}`}`,
              `--node-setup-mirror=${options.agentUrl}`,
              ...(options.root === '/' ? [] : [`--node-setup-root=${options.root}`]),
              ...(options.certsDir === DEFAULT_CERTS_DIR
                ? []
                : [`--node-setup-certs-dir=${options.certsDir}`]),
            ].join(' ');
            results.push(
              judgeHostsToml({
                registry,
                path,
                text: await readText(path),
                agentUrl: options.agentUrl,
                setupCommand,
              }),
            );
          }
          return results;
        },
      },
      {
        id: 'config-path',
        section: sections.runtime,
        title: 'containerd reads certs.d',
        async run() {
          const path = onHost(options.containerdConfig);
          return judgeConfigPath({ path, text: await readText(path), certsDir: options.certsDir });
        },
      },
    );
  }
  if (!skip.has('registries')) {
    checks.push({
      id: 'registries',
      section: sections.registries,
      title: 'registries',
      async run() {
        const { registries } = await endpoints();
        if (registries.length === 0) {
          return checkOf('registries', sections.registries, 'registries').warn(
            'discovery publishes no registry endpoints',
            "set discovery's registries (or instances) option; agents then still use the registries in their own configuration",
          );
        }
        return Promise.all(
          registries.map(async (record) => {
            const urls = record.endpoints.length ? record.endpoints.map((e) => e.url) : [record.url];
            return judgeRegistry(record, await Promise.all(urls.map((url) => probeEndpoint(url, timeoutMs))));
          }),
        );
      },
    });
  }
  return checks;
}
