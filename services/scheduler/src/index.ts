export { createScheduler } from './app.js';
export type { Scheduler, SchedulerDeps } from './app.js';
export { schedulerCommand } from './command.js';
export { schedulerSpec } from './config.js';
export type { SchedulerConfig, SchedulerSettings } from './config.js';
export { kvGrantStore, memoryGrantStore, zoneGrantKey } from './grants.js';
export type { Grant, GrantStore, GrantStoreOptions } from './grants.js';
export {
  applyIndexEvent,
  chunkChangeToEvent,
  clearHolders,
  clearNodes,
  createIndexState,
  indexSizes,
  nodeChangeToEvent,
} from './index-state.js';
export type {
  HolderEntry,
  IndexEvent,
  IndexSizes,
  IndexState,
  KvChange,
  Translation,
} from './index-state.js';
export type { BlobHolderIndex, HolderGroup } from './holder-index.js';
export { createSchedulerMetrics } from './metrics.js';
export type { SchedulerMetrics } from './metrics.js';
export {
  assignmentRecords,
  blobHexOf,
  decayingLoad,
  inflightLoad,
  planRequest,
  recordLimits,
  topologyTier,
} from './planner.js';
export type { Explanation, LoadTracker, Plan, PlanOptions, Ranked } from './planner.js';
