/**
 * The services the `shoal` entry point can start, by subcommand name. Each is loaded only when asked
 * for: a node's agent then never loads discovery's Kubernetes client (about 25 MiB of source and the
 * heap to compile it), and every service starts with only its own code in memory.
 */
import type { CommandDefinition, ConfigSpec } from '@shoal/mesh';

type Loader = () => Promise<CommandDefinition<ConfigSpec>>;

export const commands: Record<string, Loader> = {
  agent: async () => (await import('@shoal/agent')).agentCommand,
  announcer: async () => (await import('@shoal/announcer')).announcerCommand,
  scheduler: async () => (await import('@shoal/scheduler')).schedulerCommand,
  discovery: async () => (await import('@shoal/discovery')).discoveryCommand,
  'node-setup': async () => (await import('@shoal/agent')).nodeSetupCommand,
};

/** Every command, loaded: for the usage text and the configuration reference. */
export async function allCommands(): Promise<[string, CommandDefinition<ConfigSpec>][]> {
  return Promise.all(Object.entries(commands).map(async ([name, load]) => [name, await load()] as const));
}
