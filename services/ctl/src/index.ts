export { defineCommand } from './command.js';
export type { CtlCommand, CtlContext } from './command.js';
export { ctlCommands } from './commands/index.js';
export { commonSpec, eventFilterSpec } from './config.js';
export { matches, readEvents } from './events.js';
export type { EventFilter } from './events.js';
export { formatEvent, formatPulls, summarisePulls } from './report.js';
export type { PullSummary } from './report.js';
