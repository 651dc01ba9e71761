/** `shoalctl nodes`: the mesh's nodes by zone and vSwitch, with each agent's state. */
import { opt } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { formatNodes, nodeViews, readNodes } from '../nodes.js';

export const nodesCommand = defineCommand({
  name: 'nodes',
  summary:
    "List the mesh's nodes by zone and vSwitch: each agent's state, address, uptime and last heartbeat; with discovery in Kubernetes mode, also the nodes without a working agent and why.",
  spec: {
    silentAfter: opt.duration(
      'silent-after',
      '15s',
      "Show an agent as silent when its last heartbeat is older than this (discovery's node.ttl).",
    ),
  },
  async run({ config, nats, print }) {
    const { nodes, topology, unreadable } = await readNodes(await nats());
    const now = Date.now();
    const views = nodeViews(nodes, now, config.silentAfter, topology);
    if (config.output === 'json') for (const view of views) print(JSON.stringify(view));
    else print(formatNodes(views, now, unreadable));
  },
});
