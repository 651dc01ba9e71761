/** `shoal discovery`: wires discovery into the shared control-service start-up. */
import { type CommandDefinition, runControlService } from '@shoal/mesh';
import { createDiscovery } from './app.js';
import { discoverySpec } from './config.js';

export const discoveryCommand: CommandDefinition<typeof discoverySpec> = {
  command: 'shoal discovery',
  summary:
    'Keeps the node registry from agents’ heartbeats and publishes the configured registry endpoints with their health.',
  spec: discoverySpec,
  start: (config) =>
    runControlService({
      service: 'discovery',
      config,
      build: (context) => createDiscovery({ ...context, config }),
    }),
};
