/**
 * `shoalctl status`: one screen for an operator. The nodes by zone and vSwitch with their agent's
 * state, cache and downloads; the registries and how their endpoints answer discovery's health checks;
 * and the layers being rolled out.
 */
import { type EndpointCandidate, type EndpointRecord, formatBytes } from '@shoal/mesh';
import { formatAge, type NodeView } from '../nodes.js';
import { renderTable } from '../report.js';
import type { Rollout } from './rollouts.js';

export interface StatusReport {
  at: number;
  windowMs: number;
  nodes: NodeView[];
  totals: {
    nodes: number;
    ready: number;
    silent: number;
    /** Nodes discovery knows (Kubernetes mode) that have no working agent. */
    withoutAgent: number;
    /** Over the nodes whose agents report it; `unreported` counts those that do not (older agents). */
    cacheBytes: number;
    downloads: number;
    unreported: number;
  };
  registries: EndpointRecord[];
  /** Absent when the event stream could not be read (see notes). */
  rollouts?: Rollout[];
  /** Records that could not be read, and parts of the report that are missing, and why. */
  notes: string[];
}

export function buildStatus(input: {
  at: number;
  windowMs: number;
  nodes: NodeView[];
  registries: EndpointRecord[];
  rollouts?: Rollout[];
  notes?: string[];
}): StatusReport {
  const { nodes } = input;
  const heartbeating = nodes.filter((n) => n.state === 'ready' || n.state === 'silent');
  const reporting = heartbeating.filter((n) => n.cacheBytes !== undefined);
  return {
    at: input.at,
    windowMs: input.windowMs,
    nodes,
    totals: {
      nodes: nodes.length,
      ready: nodes.filter((n) => n.state === 'ready').length,
      silent: nodes.filter((n) => n.state === 'silent').length,
      withoutAgent: nodes.length - heartbeating.length,
      cacheBytes: reporting.reduce((sum, n) => sum + (n.cacheBytes ?? 0), 0),
      downloads: heartbeating.reduce((sum, n) => sum + (n.downloads ?? 0), 0),
      unreported: heartbeating.length - reporting.length,
    },
    registries: input.registries,
    ...(input.rollouts ? { rollouts: input.rollouts } : {}),
    notes: input.notes ?? [],
  };
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

function formatNodeSection(report: StatusReport): string[] {
  const { nodes, totals } = report;
  if (nodes.length === 0) return ['NODES', 'no nodes registered'];
  const rows: string[][] = [];
  let previous: NodeView | undefined;
  for (const node of nodes) {
    const sameZone = previous?.zone === node.zone;
    const sameVswitch = sameZone && previous?.vswitch === node.vswitch;
    rows.push([
      sameZone ? '' : node.zone || '-',
      sameVswitch ? '' : node.vswitch || '-',
      node.id,
      node.state,
      node.cacheBytes === undefined ? '-' : formatBytes(node.cacheBytes),
      node.downloads === undefined ? '-' : String(node.downloads),
      node.seenAt === undefined ? '-' : `${formatAge(report.at - node.seenAt)} ago`,
    ]);
    previous = node;
  }
  const health = [
    `${totals.ready} ready`,
    ...(totals.silent ? [`${totals.silent} silent`] : []),
    ...(totals.withoutAgent ? [`${totals.withoutAgent} without a working agent`] : []),
  ].join(', ');
  const summary =
    `${plural(totals.nodes, 'node')} (${health}); cache ${formatBytes(totals.cacheBytes)} in all` +
    (totals.unreported ? ` (${plural(totals.unreported, 'agent')} not reporting theirs)` : '') +
    `; ${plural(totals.downloads, 'download')} under way`;
  const reasons = nodes.filter((n) => n.reason !== undefined).map((n) => `  ${n.id}: ${n.reason ?? ''}`);
  return [
    'NODES',
    renderTable(['ZONE', 'VSWITCH', 'NODE', 'AGENT', 'CACHE', 'DOWNLOADS', 'LAST HEARTBEAT'], rows),
    summary,
    ...reasons,
  ];
}

function formatRegistrySection(report: StatusReport): string[] {
  if (report.registries.length === 0) return ['REGISTRIES', 'no registry endpoints published by discovery'];
  const rows: string[][] = [];
  for (const record of report.registries) {
    const endpoints: EndpointCandidate[] = record.endpoints.length
      ? record.endpoints
      : [{ url: record.url, kind: 'registry', healthy: record.healthy }];
    endpoints.forEach((endpoint, i) => {
      const scope = endpoint.zone
        ? `zone ${endpoint.zone}`
        : endpoint.region
          ? `region ${endpoint.region}`
          : '-';
      const result = endpoint.healthy
        ? endpoint.latencyMs === undefined
          ? 'healthy'
          : `healthy (${Math.round(endpoint.latencyMs)} ms)`
        : `UNHEALTHY${endpoint.error ? `: ${endpoint.error}` : ''}`;
      rows.push([
        i === 0 ? record.registry : '',
        endpoint.url,
        endpoint.kind,
        scope,
        result,
        i === 0 ? `${formatAge(report.at - record.checkedAt)} ago` : '',
      ]);
    });
  }
  const unhealthy = report.registries.filter((r) => !r.healthy).map((r) => r.registry);
  return [
    'REGISTRIES',
    renderTable(['REGISTRY', 'ENDPOINT', 'KIND', 'FOR', 'HEALTH', 'CHECKED'], rows),
    unhealthy.length
      ? `no healthy endpoint for ${unhealthy.join(', ')} at discovery's last check`
      : `${plural(report.registries.length, 'registry', 'registries')}, each with a healthy endpoint`,
  ];
}

/** A window as it was most likely typed: 10m, 2h, 90s. */
function formatWindow(ms: number): string {
  for (const [unit, size] of [
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return formatAge(ms);
}

/** Bytes by where they came from: "origin 12.0 MiB, peers 18.0 MiB from 2 nodes". */
function formatSources(fetched: Rollout['fetched']): string {
  const parts: string[] = [];
  if (fetched.originBytes) parts.push(`origin ${formatBytes(fetched.originBytes)}`);
  if (fetched.peerBytes) {
    parts.push(`peers ${formatBytes(fetched.peerBytes)} from ${plural(fetched.peers, 'node')}`);
  }
  return parts.join(', ') || '-';
}

function formatRolloutSection(report: StatusReport): string[] {
  const title = `ROLLOUTS (pulls started in the last ${formatWindow(report.windowMs)})`;
  if (!report.rollouts) return [title, 'not available (see the notes below)'];
  if (report.rollouts.length === 0) return [title, 'none'];
  const rows = report.rollouts.map((r) => [
    `${r.blob.slice(0, 19)}…`,
    `${r.registry}/${r.repository}`,
    formatBytes(r.size),
    String(r.nodes.started),
    String(r.nodes.finished),
    String(r.nodes.failed),
    String(r.nodes.running),
    formatBytes(r.fetched.bytes),
    formatSources(r.fetched),
    r.oldestRunning ? `${r.oldestRunning.node}, ${formatAge(report.at - r.oldestRunning.since)}` : '-',
  ]);
  const running = report.rollouts.filter((r) => r.nodes.running > 0).length;
  return [
    title,
    renderTable(
      [
        'LAYER',
        'IMAGE',
        'SIZE',
        'NODES',
        'DONE',
        'FAILED',
        'RUNNING',
        'FETCHED',
        'SOURCES',
        'OLDEST RUNNING',
      ],
      rows,
    ),
    `${plural(report.rollouts.length, 'layer')}, ${running} still being pulled`,
  ];
}

export function formatStatus(report: StatusReport): string {
  const sections = [formatNodeSection(report), formatRegistrySection(report), formatRolloutSection(report)];
  const notes = report.notes.length ? [['NOTES', ...report.notes.map((n) => `  ${n}`)]] : [];
  return [...sections, ...notes].map((lines) => lines.join('\n')).join('\n\n');
}
