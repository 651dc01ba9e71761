/** `shoal node-setup`: configures the node's container runtime to pull through the agent, or undoes it. */
import type { CommandDefinition } from '@shoal/mesh';
import { nodeSetupSpec } from './config.js';
import { runNodeSetup } from './setup.js';

export const nodeSetupCommand: CommandDefinition<typeof nodeSetupSpec> = {
  command: 'shoal node-setup',
  summary:
    "Points the node's container runtime at the agent (containerd hosts.toml files, a CRI-O/podman registries.conf drop-in, or /etc/hosts names for Docker), backing up what it replaces, or undoes all of it; runs once and exits, e.g. as the agent's init container with the node's root mounted.",
  spec: nodeSetupSpec,
  async start(config) {
    await runNodeSetup(config, {
      line: (text) => process.stdout.write(`${text}\n`),
      warn: (text) => process.stderr.write(`warning: ${text}\n`),
    });
    return { stop: async () => {} };
  },
};
