/** Every shoalctl command, in the order --help lists them. Add a command here, once. */
import type { CtlCommand } from '../command.js';
import { eventsCommand } from './events.js';
import { nodesCommand } from './nodes.js';
import { pullsCommand } from './pulls.js';

export const ctlCommands: CtlCommand[] = [nodesCommand, eventsCommand, pullsCommand];
