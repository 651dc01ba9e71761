/** `shoalctl status`: nodes, registries and rollouts on one screen. */
import { opt, type ShoalEvent } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { readEvents } from '../events.js';
import { nodeViews, readNodes } from '../nodes.js';
import { readEndpoints } from '../status/endpoints.js';
import { buildStatus, formatStatus } from '../status/report.js';
import { type Rollout, summariseRollouts } from '../status/rollouts.js';

export const statusCommand = defineCommand({
  name: 'status',
  summary:
    "One screen of the mesh: nodes by zone and vSwitch with each agent's state, cache and downloads (and why a node has no working agent), registry endpoints and their health, and the layers being rolled out.",
  spec: {
    output: opt.oneOf(
      'output',
      ['table', 'json'] as const,
      'table',
      'Output format: readable text, or the report as one JSON object.',
    ),
    window: opt.duration(
      'window',
      '10m',
      'Rollouts: layers whose pulls started within this long ago (read from the event stream).',
      { minMs: 1000 },
    ),
    silentAfter: opt.duration(
      'silent-after',
      '15s',
      "Show an agent as silent when its last heartbeat is older than this (discovery's node.ttl).",
    ),
  },
  async run({ config, nats, print }) {
    const nc = await nats();
    const rollouts = (async (): Promise<Rollout[]> => {
      const events: ShoalEvent[] = [];
      for await (const event of readEvents(nc, { sinceMs: config.window }, false)) events.push(event);
      return summariseRollouts(events);
    })();
    const [nodes, endpoints, rolled] = await Promise.all([
      readNodes(nc),
      readEndpoints(nc),
      rollouts.then(
        (list) => ({ list }),
        (err: unknown) => ({ error: err instanceof Error ? err.message : String(err) }),
      ),
    ]);
    const now = Date.now();
    const notes = [
      ...(nodes.unreadable.length ? [`unreadable node records: ${nodes.unreadable.join(', ')}`] : []),
      ...(endpoints.unreadable.length ? [`unreadable records: ${endpoints.unreadable.join(', ')}`] : []),
      ...('error' in rolled ? [`cannot read the event stream for rollouts: ${rolled.error}`] : []),
    ];
    const report = buildStatus({
      at: now,
      windowMs: config.window,
      nodes: nodeViews(nodes.nodes, now, config.silentAfter, nodes.topology),
      registries: endpoints.registries,
      ...('list' in rolled ? { rollouts: rolled.list } : {}),
      notes,
    });
    print(config.output === 'json' ? JSON.stringify(report) : formatStatus(report));
  },
});
