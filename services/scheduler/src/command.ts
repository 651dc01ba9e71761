/** `shoal scheduler`: wires the scheduler into the shared control-service start-up. */
import { type CommandDefinition, runControlService } from '@shoal/mesh';
import { createScheduler } from './app.js';
import { schedulerSpec } from './config.js';

export const schedulerCommand: CommandDefinition<typeof schedulerSpec> = {
  command: 'shoal scheduler',
  summary:
    'Decides, for a node that needs a blob, which parent serves each chunk and who may fetch it from the origin. Run any number of replicas.',
  spec: schedulerSpec,
  start: (config) =>
    runControlService({
      service: 'scheduler',
      config,
      build: (context) => createScheduler({ ...context, config }),
    }),
};
