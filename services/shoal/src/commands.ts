/** The services the `shoal` entry point can start, by subcommand name. */
import { agentCommand, nodeSetupCommand } from '@shoal/agent';
import { announcerCommand } from '@shoal/announcer';
import { discoveryCommand } from '@shoal/discovery';
import type { CommandDefinition, ConfigSpec } from '@shoal/mesh';
import { schedulerCommand } from '@shoal/scheduler';

export const commands: Record<string, CommandDefinition<ConfigSpec>> = {
  agent: agentCommand,
  announcer: announcerCommand,
  scheduler: schedulerCommand,
  discovery: discoveryCommand,
  'node-setup': nodeSetupCommand,
};
