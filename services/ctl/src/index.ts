export { ctlSpec } from './config.js';
export type { CtlConfig } from './config.js';
export { matches, readEvents } from './events.js';
export type { EventFilter } from './events.js';
export { formatEvent, formatPulls, summarisePulls } from './report.js';
export type { PullSummary } from './report.js';
