/**
 * `shoalctl limits`: the run-time limits of chosen agents (rates, upload slots, sharing, cache tier
 * sizes), read, changed or reset through each agent's limits API. A change is an override of the agent's
 * configuration that the agent keeps across restarts until it is reset.
 */
import {
  type AgentLimits,
  type AgentLimitsView,
  formatBytes,
  LIMIT_MAX_UPLOADS_PER_PEER,
  LIMIT_MIN_BURST,
  limitKinds,
  type LimitName,
  limitsPath,
  type NodeRecord,
  opt,
  parseBytes,
  ShoalError,
} from '@shoal/mesh';
import { agentCaller, agentName, errorMessage } from '../agent-api.js';
import { defineCommand } from '../command.js';
import { readNodes } from '../nodes.js';
import { renderTable } from '../report.js';
import { matchSelector, parseSelector } from '../preheat/select.js';

const USAGE = 'shoalctl limits [--nodes SELECTOR] [--set NAME=VALUE,… | --reset]';
/** How long one request to an agent may take; a change that shrinks the cache sweeps it first. */
const REQUEST_TIMEOUT_MS = 30_000;

const limitNames = Object.keys(limitKinds) as LimitName[];

const example = 'e.g. --set downloadRate=50MB/s,uploadsPerPeer=2,share=false';

function badSetting(name: string, message: string): ShoalError {
  return new ShoalError('SHOAL_ERR_CONFIG', `--set ${name}: ${message}`, { details: { source: '--set' } });
}

/** A size or rate in bytes, 0 meaning unlimited; undefined when the text is not one. */
function parseAmount(text: string, rate: boolean): number | undefined {
  const value = text.trim().toLowerCase();
  if (value === 'unlimited' || value === 'off') return 0;
  const bytes = parseBytes(rate ? value.replace(/\s*\/\s*s$/, '') : value);
  return bytes !== undefined && Number.isSafeInteger(bytes) ? bytes : undefined;
}

function parseSetting(name: LimitName, text: string): number | boolean {
  const kind = limitKinds[name];
  if (kind === 'boolean') {
    const value = text.trim().toLowerCase();
    if (['true', 'yes', 'on'].includes(value)) return true;
    if (['false', 'no', 'off'].includes(value)) return false;
    throw badSetting(name, `"${text}" is not true or false`);
  }
  if (kind === 'count') {
    const value = text.trim().toLowerCase();
    const count = value === 'unlimited' ? 0 : /^\d+$/.test(value) ? Number(value) : NaN;
    if (!Number.isSafeInteger(count) || count > LIMIT_MAX_UPLOADS_PER_PEER) {
      throw badSetting(
        name,
        `"${text}" is not a whole number from 0 to ${LIMIT_MAX_UPLOADS_PER_PEER} (0: unlimited)`,
      );
    }
    return count;
  }
  const bytes = parseAmount(text, kind === 'rate');
  if (bytes === undefined) {
    throw badSetting(
      name,
      kind === 'rate'
        ? `"${text}" is not a rate: write bytes per second like 50MB/s or 4MiB/s, or 0 for unlimited`
        : `"${text}" is not a size: write it like 512MiB or 10GB${name.endsWith('Burst') ? '' : ', or 0 for unlimited'}`,
    );
  }
  if (name.endsWith('Burst') && bytes < LIMIT_MIN_BURST) {
    throw badSetting(name, `${text} is below the minimum burst of ${formatBytes(LIMIT_MIN_BURST)}`);
  }
  return bytes;
}

/**
 * Parses `--set`: comma-separated NAME=VALUE pairs naming limits as the limits API does, sizes and rates
 * in human units (50MB/s, 512MiB, 0 or unlimited), `share` true or false. Throws naming the bad pair.
 */
export function parseLimitSettings(text: string): Partial<AgentLimits> {
  const change: Record<string, number | boolean> = {};
  const byLowerName = new Map(limitNames.map((name) => [name.toLowerCase(), name]));
  const pairs = text
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  if (pairs.length === 0) throw badSetting('', `name at least one limit to change (${example})`);
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    const key = (eq === -1 ? pair : pair.slice(0, eq)).trim();
    const name = byLowerName.get(key.toLowerCase());
    if (name === undefined) {
      throw badSetting(key.slice(0, 40) || '""', `unknown limit; the limits are ${limitNames.join(', ')}`);
    }
    if (eq === -1 || pair.slice(eq + 1).trim() === '') {
      throw badSetting(name, `give it a value, as ${name}=VALUE (${example})`);
    }
    if (change[name] !== undefined) throw badSetting(name, 'named twice; name each limit once');
    change[name] = parseSetting(name, pair.slice(eq + 1));
  }
  return change;
}

const units: [string, number][] = [
  ['TiB', 1024 ** 4],
  ['TB', 1000 ** 4],
  ['GiB', 1024 ** 3],
  ['GB', 1000 ** 3],
  ['MiB', 1024 ** 2],
  ['MB', 1000 ** 2],
  ['KiB', 1024],
  ['kB', 1000],
];

/** Bytes in the largest unit, binary or decimal, that writes them exactly (50 MB, 8 MiB), as typed. */
export function formatLimitBytes(bytes: number): string {
  if (bytes === 0) return '0 B';
  for (const [unit, size] of units) if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  return bytes < 1000 ? `${bytes} B` : formatBytes(bytes);
}

/** One limit as the table shows it: unlimited/off for 0, a star when the API set it. */
function cell(view: AgentLimitsView, name: LimitName): string {
  const mark = view.overridden.includes(name) ? '*' : '';
  const value = view[name];
  if (typeof value === 'boolean') return `${value ? 'yes' : 'no'}${mark}`;
  const kind = limitKinds[name];
  if (value === 0) return `${name === 'memory' ? 'off' : 'unlimited'}${mark}`;
  if (kind === 'count') return `${value}${mark}`;
  return `${formatLimitBytes(value)}${kind === 'rate' ? '/s' : ''}${mark}`;
}

/** A rate with its burst: the burst matters only while the rate is set, or when it was changed. */
function rateCell(view: AgentLimitsView, rate: LimitName, burst: LimitName): string {
  const shown = view[rate] !== 0 || view.overridden.includes(burst);
  return shown ? `${cell(view, rate)} (${cell(view, burst)})` : cell(view, rate);
}

export type LimitsResult =
  { node: string; url: string; view: AgentLimitsView } | { node: string; url: string; error: string };

/** One row per node, overridden values starred, with a note on what the star means. */
export function formatLimits(results: readonly LimitsResult[]): string {
  const header = [
    'NODE',
    'DOWNLOAD (BURST)',
    'REGISTRY (BURST)',
    'UPLOAD (BURST)',
    'PER PEER',
    'SHARE',
    'CACHE',
    'MEMORY',
  ];
  const rows: string[][] = [];
  const failed: string[] = [];
  for (const result of results) {
    if ('error' in result) {
      failed.push(`  ${result.node}: ${result.error}`);
      continue;
    }
    const { view } = result;
    rows.push([
      result.node,
      rateCell(view, 'downloadRate', 'downloadBurst'),
      rateCell(view, 'registryRate', 'registryBurst'),
      rateCell(view, 'uploadRate', 'uploadBurst'),
      cell(view, 'uploadsPerPeer'),
      cell(view, 'share'),
      cell(view, 'cacheMaxSize'),
      cell(view, 'memory'),
    ]);
  }
  const lines = rows.length ? [renderTable(header, rows)] : [];
  const starred = results.some((r) => 'view' in r && r.view.overridden.length > 0);
  if (starred) {
    lines.push(
      '',
      '* set through the limits API instead of the configuration, kept across restarts until --reset',
    );
  }
  if (failed.length) lines.push('', `${failed.length} of ${results.length} nodes failed:`, ...failed);
  return lines.join('\n');
}

function isView(body: unknown): body is AgentLimitsView {
  if (typeof body !== 'object' || body === null) return false;
  const view = body as Record<string, unknown>;
  return limitNames.every((name) =>
    limitKinds[name] === 'boolean' ? typeof view[name] === 'boolean' : typeof view[name] === 'number',
  );
}

type Action = { kind: 'read' } | { kind: 'set'; change: Partial<AgentLimits> } | { kind: 'reset' };

/** Asks one agent's limits API; throws a message naming the agent and what to do. */
async function callAgent(node: NodeRecord, peerSecret: string, action: Action): Promise<AgentLimitsView> {
  const name = agentName(node);
  const method = action.kind === 'set' ? 'PUT' : action.kind === 'reset' ? 'DELETE' : 'GET';
  const res = await agentCaller(node, peerSecret, REQUEST_TIMEOUT_MS)(
    method,
    limitsPath,
    action.kind === 'set' ? action.change : undefined,
  );
  const body = res.body;
  if (res.status === 404) {
    throw new Error(
      `${name} has no ${action.kind === 'reset' ? 'reset of its limits' : 'limits API'}: upgrade it`,
    );
  }
  if (res.status !== 200) {
    const what = action.kind === 'read' ? 'reading its limits' : 'the change';
    throw new Error(`${name} refused ${what} (${res.status}): ${errorMessage(body) ?? 'no reason given'}`);
  }
  if (!isView(body)) throw new Error(`${name} answered something that is not its limits`);
  // An agent from before overrides were kept answers without the list.
  return { ...body, overridden: Array.isArray(body.overridden) ? body.overridden : [] };
}

export const limitsCommand = defineCommand({
  name: 'limits',
  summary: `Show, change or reset the run-time limits of chosen agents (rates, upload slots, sharing, cache sizes); changes are kept across restarts until reset: ${USAGE}.`,
  spec: {
    nodes: opt.string(
      'nodes',
      '',
      'Nodes to show or change: comma-separated node IDs, or zone=Z, vswitch=V, pool=P terms that must all match (zone=a,pool=gpu). Every node when empty.',
    ),
    set: opt.string(
      'set',
      '',
      'Change limits: comma-separated NAME=VALUE, names as in the limits API (downloadRate, downloadBurst, uploadRate, uploadBurst, uploadsPerPeer, registryRate, registryBurst, share, cacheMaxSize, memory), rates like 50MB/s, sizes like 512MiB, 0 for unlimited, share true or false.',
    ),
    reset: opt.bool(
      'reset',
      false,
      'Drop every change made through the limits API: the nodes return to their configured limits.',
    ),
    peerSecret: opt.string(
      'peer.secret',
      '',
      "The mesh's secret (the agents' peer.secret), to sign requests to the agents; prefer the environment variable SHOAL_PEER_SECRET.",
      { secret: true },
    ),
  },
  async run({ config, args, nats, print }) {
    if (args.length > 0) {
      throw new ShoalError('SHOAL_ERR_CONFIG', `unexpected argument "${args[0] ?? ''}": ${USAGE}`);
    }
    if (config.set !== '' && config.reset) {
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        '--set and --reset cannot go together: run one, then the other',
      );
    }
    const action: Action =
      config.set !== ''
        ? { kind: 'set', change: parseLimitSettings(config.set) }
        : config.reset
          ? { kind: 'reset' }
          : { kind: 'read' };
    const selector = parseSelector(config.nodes);
    const { nodes: registered } = await readNodes(await nats());
    const chosen = matchSelector(registered, selector);
    const nodes = selector?.kind === 'ids' ? chosen : chosen.sort((a, b) => a.id.localeCompare(b.id));

    const results: LimitsResult[] = await Promise.all(
      nodes.map(async (node): Promise<LimitsResult> => {
        try {
          return { node: node.id, url: node.url, view: await callAgent(node, config.peerSecret, action) };
        } catch (err) {
          return { node: node.id, url: node.url, error: err instanceof Error ? err.message : String(err) };
        }
      }),
    );
    if (config.output === 'json') {
      for (const result of results) {
        if ('error' in result) {
          print(JSON.stringify(result));
          continue;
        }
        const { overridden, ...limits } = result.view;
        print(JSON.stringify({ node: result.node, url: result.url, limits, overridden }));
      }
    } else {
      print(formatLimits(results));
    }
    const failed = results.filter((r) => 'error' in r).map((r) => r.node);
    if (failed.length > 0) {
      const verb = { read: 'read the limits of', set: 'change the limits of', reset: 'reset the limits of' };
      const ok = results.length - failed.length;
      const done = action.kind === 'read' || ok === 0 ? '' : `; ${ok} other node${ok === 1 ? '' : 's'} did`;
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `could not ${verb[action.kind]} ${failed.join(', ')} (${failed.length} of ${results.length} nodes)${done}`,
      );
    }
  },
});
