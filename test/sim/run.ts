/**
 * `npm run sim`: rollouts simulated with the scheduler's own code, against the bound
 * T_min = max(F/u_origin, F/d_min, N·F/(u_origin + Σu_i)) and two baselines (every node pulling from the
 * registry; one whole layer from one random peer that has it complete). Without flags it runs the
 * preset scenarios below; any scenario flag runs one custom scenario instead:
 *
 *   npm run sim -- [--nodes 1000] [--zones 3] [--vswitches 2] [--layers 4] [--layer-mib 512]
 *                  [--node-gbit 1] [--origin-gbit 10] [--cross-zone-gbit 10] [--stagger-s 0]
 *                  [--fail 0] [--fail-at-s 5] [--seed 1] [--policies shoal,direct,whole-layer]
 */
import { agentSpec } from '@shoal/agent';
import { schedulerSpec } from '@shoal/scheduler';
import { quantile, rolloutColumns, table } from '../bench/report.js';
import { type Policy, type SimConfig, type SimResult, simulate } from './sim.js';

const MiB = 1024 * 1024;
const gbit = (g: number) => (g * 1e9) / 8;

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? undefined : process.argv[i + 1];
}
const num = (name: string, def: number) => (flag(name) === undefined ? def : Number(flag(name)));

export function configFromFlags(): SimConfig {
  return {
    nodes: num('nodes', 1000),
    zones: num('zones', 3),
    vswitchesPerZone: num('vswitches', 2),
    layers: num('layers', 4),
    layerSize: num('layer-mib', 512) * MiB,
    nodeUp: gbit(num('node-gbit', 1)),
    nodeDown: gbit(num('node-gbit', 1)),
    originUp: gbit(num('origin-gbit', 10)),
    crossZone: gbit(num('cross-zone-gbit', 10)),
    planAhead: num('plan-ahead', 8),
    announceMs: num('announce-ms', 50),
    staggerS: num('stagger-s', 0),
    failFraction: num('fail', 0),
    failAtS: num('fail-at-s', 5),
    // Scheduler settings default to the scheduler's own defaults, so the simulation runs what ships.
    originPerChunk: num('origin-per-chunk', schedulerSpec.originPerChunk.default),
    originMaxPerRequest: num('origin-max-per-request', schedulerSpec.originMaxPerRequest.default),
    choose: num('choose', 1) === 1,
    retryMs: num('retry-ms', schedulerSpec.waitRetry.default),
    parentSlots: num('parent-slots', schedulerSpec.parentSlots.default),
    inOrder: num('in-order', schedulerSpec.inOrder.default),
    askWhenFree: num('ask-when-free', agentSpec.askWhenFree.default),
    slots: num('slots', agentSpec.downloadConcurrency.default),
    seed: num('seed', 1),
  };
}

export function describe(result: SimResult): Record<string, string> {
  return {
    policy: result.policy,
    ...rolloutColumns(result),
    incomplete: String(result.incomplete),
    'decisions/s': result.decisions ? (result.decisions / (result.wallMs / 1000)).toFixed(0) : '-',
    'decision p99 ms': result.decisions ? quantile(result.decisionMs, 0.99).toFixed(2) : '-',
    'wall s': (result.wallMs / 1000).toFixed(1),
  };
}

/** The scenarios `npm run sim` reports when no flag names a scenario of its own. */
const presets: { name: string; overrides: Partial<SimConfig>; policies: Policy[] }[] = [
  {
    name: '1,000 nodes, all start together',
    overrides: { nodes: 1000 },
    policies: ['shoal', 'direct', 'whole-layer'],
  },
  {
    name: '1,000 nodes, 10% fail mid-pull',
    overrides: { nodes: 1000, failFraction: 0.1, failAtS: 8 },
    policies: ['shoal'],
  },
  {
    name: '1,000 nodes, starts spread over 30 s',
    overrides: { nodes: 1000, staggerS: 30 },
    policies: ['shoal'],
  },
  { name: '5,000 nodes, all start together', overrides: { nodes: 5000 }, policies: ['shoal'] },
];

function heading(config: SimConfig): string {
  return (
    `${config.nodes} nodes, ${config.zones} zones × ${config.vswitchesPerZone} vSwitches, ` +
    `${config.layers} × ${config.layerSize / MiB} MiB, nodes ${(config.nodeUp * 8) / 1e9} Gbit/s, ` +
    `registry ${(config.originUp * 8) / 1e9} Gbit/s, cross-zone ${(config.crossZone * 8) / 1e9} Gbit/s per zone, ` +
    `${config.staggerS ? `starts spread over ${config.staggerS} s` : 'all start together'}` +
    `${config.failFraction ? `, ${config.failFraction * 100}% fail at ${config.failAtS} s` : ''}`
  );
}

const custom = process.argv.slice(2).some((arg) => arg.startsWith('--') && arg !== '--policies');
const scenarios = custom
  ? [
      {
        name: 'custom',
        overrides: {},
        policies: (flag('policies') ?? 'shoal,direct,whole-layer').split(',') as Policy[],
      },
    ]
  : presets;
for (const scenario of scenarios) {
  const config = { ...configFromFlags(), ...scenario.overrides };
  process.stdout.write(`\n## ${scenario.name}\n\n${heading(config)}\n`);
  const rows: Record<string, string>[] = [];
  for (const policy of scenario.policies) {
    const result = await simulate(config, policy);
    if (rows.length === 0) process.stdout.write(`T_min = ${result.tMin.toFixed(1)} s\n\n`);
    rows.push(describe(result));
  }
  process.stdout.write(`${table(rows)}\n`);
}
