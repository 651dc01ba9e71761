#!/usr/bin/env node
/**
 * shoalctl: looks at and steers the mesh through NATS, the same way the services talk to each other.
 *
 *   shoalctl events [--since 1h] [--node N] [--blob D] [--type T] [--follow] [--output table|json]
 *   shoalctl pulls  [--since 1h] [--node N] [--blob D] [--output table|json]
 *   shoalctl nodes  [--silent-after 15s] [--output table|json]
 */
import { connect } from '@nats-io/transport-node';
import {
  exitWithError,
  loadConfig,
  natsAuth,
  natsConnectOptions,
  renderHelp,
  renderReference,
  type ShoalEvent,
  ShoalError,
} from '@shoal/mesh';
import { ctlSpec } from './config.js';
import { readEvents } from './events.js';
import { formatNodes, nodeViews, readNodes } from './nodes.js';
import { formatEvent, formatPulls, summarisePulls } from './report.js';

const summaries: Record<string, string> = {
  events: 'Print events from the event stream: the timeline of pulls, chunks, fallbacks and nodes.',
  pulls: 'Summarise pulls: for each node and layer, its size, time, and where its chunks came from.',
  nodes:
    "List the mesh's nodes by zone and vSwitch: each agent's state, address, uptime and last heartbeat; with discovery in Kubernetes mode, also the nodes without a working agent and why.",
};

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === 'config-reference') {
    const summary =
      'Options shared by every shoalctl command (`shoalctl events`, `shoalctl pulls`, `shoalctl nodes`).';
    process.stdout.write(
      renderReference([{ command: 'shoalctl', summary, spec: ctlSpec }], { header: false }),
    );
    return;
  }
  if (command === undefined || command === '--help' || command === '-h' || !(command in summaries)) {
    const list = Object.entries(summaries)
      .map(([name, text]) => `  ${name.padEnd(8)} ${text}`)
      .join('\n');
    const text = `Usage: shoalctl <command> [options]\n\nCommands:\n${list}\n\nRun "shoalctl <command> --help" for options.\n`;
    if (command === undefined || command === '--help' || command === '-h') {
      process.stdout.write(text);
      process.exit(command === undefined ? 2 : 0);
    }
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `unknown command "${command}"; run "shoalctl --help" for the list`,
    );
  }
  const { config, help } = loadConfig(ctlSpec, {
    argv: rest,
    env: process.env,
    command: `shoalctl ${command}`,
  });
  if (help) {
    process.stdout.write(`${renderHelp(`shoalctl ${command}`, summaries[command] ?? '', ctlSpec)}\n`);
    return;
  }
  let nc;
  try {
    nc = await connect({
      servers: config.natsServers,
      timeout: config.timeoutMs,
      ...natsConnectOptions(natsAuth(config)),
    });
  } catch (cause) {
    throw new ShoalError(
      'SHOAL_ERR_MESH_UNAVAILABLE',
      `cannot reach NATS at ${config.natsServers.join(',')}: check --nats-servers`,
      {
        cause,
      },
    );
  }
  try {
    const filter = {
      sinceMs: config.since,
      ...(config.node ? { node: config.node } : {}),
      ...(config.blob ? { blob: config.blob } : {}),
      ...(config.type ? { type: config.type } : {}),
    };
    if (command === 'nodes') {
      const { nodes, topology, unreadable } = await readNodes(nc);
      const now = Date.now();
      const views = nodeViews(nodes, now, config.silentAfter, topology);
      if (config.output === 'json')
        for (const view of views) process.stdout.write(`${JSON.stringify(view)}\n`);
      else process.stdout.write(`${formatNodes(views, now, unreadable)}\n`);
    } else if (command === 'events') {
      for await (const event of readEvents(nc, filter, config.follow)) {
        process.stdout.write(`${config.output === 'json' ? JSON.stringify(event) : formatEvent(event)}\n`);
      }
    } else {
      const events: ShoalEvent[] = [];
      const { type: _ignored, ...pullFilter } = filter;
      for await (const event of readEvents(nc, pullFilter, false)) events.push(event);
      const pulls = summarisePulls(events);
      if (config.output === 'json')
        for (const pull of pulls) process.stdout.write(`${JSON.stringify(pull)}\n`);
      else process.stdout.write(`${formatPulls(pulls)}\n`);
    }
  } finally {
    await nc.close();
  }
}

main(process.argv.slice(2)).catch(exitWithError);
