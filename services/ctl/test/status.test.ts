import type { EndpointRecord, NodeRecord, ShoalEvent } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { nodeViews } from '../src/nodes.js';
import { buildStatus, formatStatus } from '../src/status/report.js';
import { summariseRollouts } from '../src/status/rollouts.js';

const MiB = 1024 * 1024;
const now = 1_000_000_000;
const blobA = `sha256:${'a'.repeat(64)}`;
const blobB = `sha256:${'b'.repeat(64)}`;

const started = (node: string, blob: string, at: number): ShoalEvent => ({
  type: 'pull_started',
  node,
  blob,
  registry: 'reg.example.com',
  repository: 'team/app',
  size: 8 * MiB,
  at,
  origin: node,
});
const finished = (node: string, blob: string, at: number, ok = true): ShoalEvent => ({
  type: 'pull_finished',
  node,
  blob,
  size: 8 * MiB,
  ms: 100,
  ok,
  bytes: { peer: 0, origin: 0, cache: 0 },
  chunks: { peer: 0, origin: 0, cache: 0 },
  at,
  origin: node,
});
const fetched = (node: string, blob: string, at: number, peer?: string): ShoalEvent => ({
  type: 'chunk_fetched',
  node,
  blob,
  index: 0,
  source: peer ? 'peer' : 'origin',
  ...(peer ? { peer } : {}),
  bytes: MiB,
  ms: 10,
  at,
  origin: node,
});

describe('rollouts from the event stream', () => {
  it('counts nodes by where their pulls stand, and the bytes fetched so far by source', () => {
    const rollouts = summariseRollouts([
      started('n1', blobA, now - 60_000),
      fetched('n1', blobA, now - 59_000),
      fetched('n1', blobA, now - 58_000),
      finished('n1', blobA, now - 57_000),
      started('n2', blobA, now - 50_000),
      fetched('n2', blobA, now - 49_000, 'n1'),
      started('n3', blobA, now - 40_000),
      fetched('n3', blobA, now - 39_000, 'n1'),
      fetched('n3', blobA, now - 38_000, 'n2'),
      finished('n3', blobA, now - 30_000, false),
      started('n4', blobA, now - 20_000),
      // A pull passed through to the registry ends with a fallback, not a pull_finished.
      {
        type: 'fallback',
        node: 'n4',
        blob: blobA,
        reason: 'passed through: size differs',
        at: now,
        origin: 'n4',
      },
      // A download's own fallback to the registry ends nothing.
      { type: 'fallback', node: 'n2', blob: blobA, reason: 'no scheduler', at: now, origin: 'n2' },
    ]);
    expect(rollouts).toEqual([
      {
        blob: blobA,
        registry: 'reg.example.com',
        repository: 'team/app',
        size: 8 * MiB,
        startedAt: now - 60_000,
        lastEventAt: now,
        nodes: { started: 4, finished: 2, failed: 1, running: 1 },
        fetched: { chunks: 5, bytes: 5 * MiB, peerBytes: 3 * MiB, originBytes: 2 * MiB, peers: 2 },
        oldestRunning: { node: 'n2', since: now - 50_000 },
      },
    ]);
  });

  it('lists only layers whose pulls began in the window, unfinished ones first', () => {
    const blobC = `sha256:${'c'.repeat(64)}`;
    const rollouts = summariseRollouts([
      // Started before the window: its finish and chunks alone do not make a rollout.
      fetched('n1', blobC, now - 9_000),
      finished('n1', blobC, now - 8_000),
      started('n1', blobA, now - 7_000),
      finished('n1', blobA, now - 1_000),
      started('n1', blobB, now - 6_000),
      // Two clients of one node: the node still pulls until both have finished.
      started('n1', blobB, now - 5_000),
      finished('n1', blobB, now - 4_000),
    ]);
    expect(rollouts.map((r) => [r.blob, r.nodes, r.oldestRunning])).toEqual([
      [blobB, { started: 1, finished: 0, failed: 0, running: 1 }, { node: 'n1', since: now - 5_000 }],
      [blobA, { started: 1, finished: 1, failed: 0, running: 0 }, undefined],
    ]);
  });
});

describe('shoalctl status', () => {
  const node = (id: string, zone: string, extra: Partial<NodeRecord> = {}): NodeRecord => ({
    id,
    url: `http://${id}:65001`,
    zone,
    vswitch: 'vsw-1',
    pool: '',
    startedAt: now - 3_600_000,
    seenAt: now - 400,
    ...extra,
  });
  const registry: EndpointRecord = {
    registry: 'reg.example.com',
    url: 'http://10.0.0.9:5000',
    healthy: true,
    checkedAt: now - 4_000,
    source: 'static',
    endpoints: [
      { url: 'http://10.0.0.9:5000', kind: 'mirror', zone: 'zone-a', healthy: true, latencyMs: 3.4 },
      { url: 'https://reg.example.com', kind: 'registry', healthy: false, error: 'timeout: aborted' },
    ],
  };

  it('sums cache and downloads over the agents that report them', () => {
    const views = nodeViews(
      [
        node('n1', 'zone-a', { cacheBytes: 24 * MiB, downloads: 1 }),
        node('n2', 'zone-a', { cacheBytes: 8 * MiB, downloads: 0 }),
        node('n3', 'zone-b', { seenAt: now - 30_000 }),
      ],
      now,
      15_000,
    );
    const report = buildStatus({ at: now, windowMs: 600_000, nodes: views, registries: [registry] });
    expect(report.totals).toEqual({
      nodes: 3,
      ready: 2,
      silent: 1,
      withoutAgent: 0,
      cacheBytes: 32 * MiB,
      downloads: 1,
      unreported: 1,
    });
  });

  it('prints nodes, registries and rollouts on one screen', () => {
    const views = nodeViews(
      [
        node('n1', 'zone-a', { cacheBytes: 24 * MiB, downloads: 1 }),
        node('n2', 'zone-a', { cacheBytes: 8 * MiB, downloads: 0 }),
        node('n3', 'zone-b'),
      ],
      now,
      15_000,
    );
    const rollouts = summariseRollouts([
      started('n1', blobA, now - 12_000),
      fetched('n1', blobA, now - 11_000),
      started('n2', blobA, now - 10_000),
      fetched('n2', blobA, now - 9_000, 'n1'),
      finished('n2', blobA, now - 8_000),
    ]);
    const text = formatStatus(
      buildStatus({ at: now, windowMs: 600_000, nodes: views, registries: [registry], rollouts }),
    );
    expect(text.split('\n')).toEqual([
      'NODES',
      'ZONE    VSWITCH  NODE  AGENT  CACHE     DOWNLOADS  LAST HEARTBEAT',
      'zone-a  vsw-1    n1    ready  24.0 MiB  1          0.4s ago',
      '                 n2    ready  8.0 MiB   0          0.4s ago',
      'zone-b  vsw-1    n3    ready  -         -          0.4s ago',
      '3 nodes (3 ready); cache 32.0 MiB in all (1 agent not reporting theirs); 1 download under way',
      '',
      'REGISTRIES',
      'REGISTRY         ENDPOINT                 KIND      FOR          HEALTH                       CHECKED',
      'reg.example.com  http://10.0.0.9:5000     mirror    zone zone-a  healthy (3 ms)               4.0s ago',
      '                 https://reg.example.com  registry  -            UNHEALTHY: timeout: aborted',
      '1 registry, each with a healthy endpoint',
      '',
      'ROLLOUTS (pulls started in the last 10m)',
      'LAYER                 IMAGE                     SIZE     NODES  DONE  FAILED  RUNNING  FETCHED  SOURCES                                    OLDEST RUNNING',
      'sha256:aaaaaaaaaaaa…  reg.example.com/team/app  8.0 MiB  2      1     0       1        2.0 MiB  origin 1.0 MiB, peers 1.0 MiB from 1 node  n1, 12s',
      '1 layer, 1 still being pulled',
    ]);
  });

  it('says what is missing rather than failing', () => {
    const text = formatStatus(
      buildStatus({
        at: now,
        windowMs: 60_000,
        nodes: [],
        registries: [],
        notes: ['cannot read the event stream'],
      }),
    );
    expect(text).toBe(
      [
        'NODES',
        'no nodes registered',
        '',
        'REGISTRIES',
        'no registry endpoints published by discovery',
        '',
        'ROLLOUTS (pulls started in the last 1m)',
        'not available (see the notes below)',
        '',
        'NOTES',
        '  cannot read the event stream',
      ].join('\n'),
    );
  });
});
