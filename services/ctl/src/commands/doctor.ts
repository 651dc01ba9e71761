/** `shoalctl doctor`: checks the mesh, its agents and this machine's containerd, and says what to fix. */
import { opt } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { formatChecklist, runChecks, summarise } from '../doctor/checklist.js';
import { type CheckGroup, checkGroups, doctorChecks } from '../doctor/plan.js';

/** An absolute path without ".." segments: each is taken below --root and must stay there. */
const hostPath = { pattern: /^\/(?!.*(?:^|\/)\.\.(?:\/|$))[^\0\n]*$/, hint: 'absolute path without ".."' };
const label = '[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?';
const registryName = `${label}(?:\\.${label})*(?::\\d{1,5})?`;
const baseUrl = 'https?://[^\\s/@]+/?';

export const doctorCommand = defineCommand({
  name: 'doctor',
  summary:
    "Check the mesh and this machine: NATS and JetStream, the control services, the agents' health and clocks, containerd's hosts.toml files here, and the registry endpoints; prints a checklist with what to do about each problem, and exits 1 if a check failed.",
  spec: {
    output: opt.oneOf(
      'output',
      ['table', 'json'] as const,
      'table',
      'Output format: readable text, or the checklist as one JSON object.',
    ),
    timeoutMs: opt.duration(
      'timeout',
      '3s',
      'How long each check waits for an answer: from NATS, the scheduler, each agent, each registry endpoint.',
      { minMs: 100 },
    ),
    node: opt.string(
      'node',
      '',
      "Check only this node's agent (a node ID); by default every registered node's.",
      {
        pattern: /^([A-Za-z0-9_-]{1,64})?$/,
        hint: 'node ID of [A-Za-z0-9_-]',
      },
    ),
    agent: opt.string(
      'agent',
      'http://127.0.0.1:65001',
      "The agent's URL as containerd on this machine reaches it: the mirror each hosts.toml must name.",
      { pattern: new RegExp(`^${baseUrl}$`), hint: 'http(s)://host:port URL' },
    ),
    root: opt.string(
      'root',
      '/',
      "Where this machine's filesystem is mounted (e.g. /host in a pod); --certs-dir and --containerd-config are taken below it.",
      hostPath,
    ),
    certsDir: opt.string(
      'certs-dir',
      '/etc/containerd/certs.d',
      "containerd's host configuration directory, holding <registry>/hosts.toml.",
      hostPath,
    ),
    containerdConfig: opt.string(
      'containerd-config',
      '/etc/containerd/config.toml',
      "containerd's configuration file, whose registry config_path must include --certs-dir.",
      hostPath,
    ),
    registries: opt.list(
      'registries',
      [],
      'Registries to check hosts.toml for besides those discovery publishes: host[:port], or [host[:port]=]http(s)://host[:port] as node-setup takes them.',
      {
        pattern: new RegExp(`^(${registryName}|(${registryName}=)?${baseUrl})$`),
        hint: 'registry host[:port] or [host[:port]=]URL',
      },
    ),
    skip: opt.list(
      'skip',
      [],
      `Groups of checks to leave out: ${checkGroups.join(', ')} (without nats, only the runtime checks of --registries run).`,
      { pattern: new RegExp(`^(${checkGroups.join('|')})$`), hint: checkGroups.join(' | ') },
    ),
  },
  async run({ config, nats, print }) {
    const checks = doctorChecks(
      {
        natsServers: config.natsServers,
        timeoutMs: config.timeoutMs,
        node: config.node,
        agentUrl: config.agent.replace(/\/+$/, ''),
        root: config.root,
        certsDir: config.certsDir,
        containerdConfig: config.containerdConfig,
        registries: config.registries,
        skip: new Set(config.skip as CheckGroup[]),
      },
      { nats, now: Date.now },
    );
    // The deadline of a whole check: its own requests are bounded by the timeout, and it may wait for
    // another's (the connection, then a bucket listing) before making them.
    const results = await runChecks(checks, config.timeoutMs * 3);
    const summary = summarise(results);
    if (config.output === 'json')
      print(JSON.stringify({ ok: summary.failed === 0, summary, checks: results }));
    else print(formatChecklist(results));
    // The checklist is the answer; the exit status tells scripts whether anything failed.
    if (summary.failed > 0) process.exitCode = 1;
  },
});
