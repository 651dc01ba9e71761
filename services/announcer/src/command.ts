/** `shoal announcer`: wires the announcer into the shared control-service start-up. */
import { type CommandDefinition, runControlService } from '@shoal/mesh';
import { createAnnouncer, ensureAnnouncerConsumer } from './app.js';
import { announcerSpec } from './config.js';

export const announcerCommand: CommandDefinition<typeof announcerSpec> = {
  command: 'shoal announcer',
  summary:
    'Keeps the chunk index (which node holds which chunks, and each blob’s chunk manifest) from agents’ announcements. Run any number of replicas.',
  spec: announcerSpec,
  start: (config) =>
    runControlService({
      service: 'announcer',
      config,
      build: (context) => createAnnouncer({ ...context, config }),
      // The consumer's pull loop recovers by itself once its durable consumer exists again.
      restore: (jsm) => ensureAnnouncerConsumer(jsm, config),
    }),
};
