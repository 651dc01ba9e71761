import type { NodeRecord, TopologyRecord } from '@shoal/mesh';
import { describe, expect, it } from 'vitest';
import { formatAge, formatNodes, nodeViews } from '../src/nodes.js';

const now = 1_000_000_000;
const node = (id: string, zone: string, vswitch: string, seenAgoMs: number): NodeRecord => ({
  id,
  url: `http://${id}:65001`,
  zone,
  vswitch,
  pool: '',
  startedAt: now - 3_600_000,
  seenAt: now - seenAgoMs,
});

describe('shoalctl nodes', () => {
  it('orders nodes by zone, vSwitch and ID, and calls an agent silent past the threshold', () => {
    const views = nodeViews(
      [
        node('c', 'z2', 'v1', 100),
        node('b', 'z1', 'v2', 20_000),
        node('a', 'z1', 'v2', 100),
        node('d', 'z1', 'v1', 0),
      ],
      now,
      15_000,
    );
    expect(views.map((v) => `${v.zone}/${v.vswitch}/${v.id}:${v.state}`)).toEqual([
      'z1/v1/d:ready',
      'z1/v2/a:ready',
      'z1/v2/b:silent',
      'z2/v1/c:ready',
    ]);
  });

  it('prints zone and vSwitch only where they change, and sums up', () => {
    const text = formatNodes(
      nodeViews(
        [node('a', 'z1', 'v1', 100), node('b', 'z1', 'v1', 30_000), node('c', 'z1', 'v2', 100)],
        now,
        15_000,
      ),
      now,
      ['broken'],
    );
    expect(text.split('\n')).toEqual([
      'ZONE  VSWITCH  NODE  AGENT   ADDRESS         POOL  UP     LAST HEARTBEAT',
      'z1    v1       a     ready   http://a:65001  -     1h00m  0.1s ago',
      '               b     silent  http://b:65001  -     1h00m  30s ago',
      '      v2       c     ready   http://c:65001  -     1h00m  0.1s ago',
      '',
      '3 nodes in 1 zone and 2 vSwitches; 1 silent (no heartbeat recently: is the agent or discovery down?)',
      'unreadable node records: broken',
    ]);
    expect(formatNodes([], now)).toBe('no nodes registered');
  });

  it('adds Kubernetes nodes without a heartbeating agent, with the reason', () => {
    const topo = (name: string, zone: string, extra: Partial<TopologyRecord>): TopologyRecord => ({
      name,
      zone,
      region: 'r',
      vswitch: 'v1',
      pool: 'np',
      ready: true,
      inMesh: true,
      agent: { state: 'running', restarts: 0, ready: true },
      updatedAt: now,
      ...extra,
    });
    const topology = new Map<string, TopologyRecord>([
      // A node with a heartbeating agent is listed once, from its record.
      ['a', topo('a', 'z1', {})],
      [
        'n-2',
        topo('n.2', 'z1', { agent: { state: 'crashloop', restarts: 7, ready: false }, reason: 'crash' }),
      ],
      ['n-3', topo('n.3', 'z2', { inMesh: false, reason: 'not in node pool "x"' })],
      ['n-4', topo('n.4', 'z2', { agent: { state: 'running', pod: 'agent-4', restarts: 0, ready: true } })],
    ]);
    const text = formatNodes(nodeViews([node('a', 'z1', 'v1', 100)], now, 15_000, topology), now);
    expect(text.split('\n')).toEqual([
      'ZONE  VSWITCH  NODE  AGENT         ADDRESS         POOL  UP     LAST HEARTBEAT',
      'z1    v1       a     ready         http://a:65001  -     1h00m  0.1s ago',
      '               n-2   crashloop     -               np    -      -',
      'z2    v1       n-3   excluded      -               np    -      -',
      '               n-4   no heartbeat  -               np    -      -',
      '',
      '4 nodes in 2 zones and 2 vSwitches; 3 without a working agent:',
      '  n-2: crash',
      '  n-3: not in node pool "x"',
      '  n-4: agent pod agent-4 runs but sends no heartbeat: check its log and its connection to NATS',
    ]);
  });

  it('writes ages the way a person reads them', () => {
    expect([400, 12_300, 192_000, 7_500_000, 3 * 86_400_000 + 4 * 3_600_000, -5].map(formatAge)).toEqual([
      '0.4s',
      '12s',
      '3m12s',
      '2h05m',
      '3d4h',
      '0.0s',
    ]);
  });
});
