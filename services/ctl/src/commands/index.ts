/** Every shoalctl command, in the order --help lists them. Add a command here, once. */
import type { CtlCommand } from '../command.js';
import { doctorCommand } from './doctor.js';
import { eventsCommand } from './events.js';
import { explainCommand } from './explain.js';
import { limitsCommand } from './limits.js';
import { nodesCommand } from './nodes.js';
import { preheatCommand } from './preheat.js';
import { pullsCommand } from './pulls.js';
import { replayCommand } from './replay.js';
import { statusCommand } from './status.js';
import { traceCommand } from './trace.js';

export const ctlCommands: CtlCommand[] = [
  statusCommand,
  nodesCommand,
  eventsCommand,
  pullsCommand,
  replayCommand,
  explainCommand,
  traceCommand,
  preheatCommand,
  limitsCommand,
  doctorCommand,
];
