export { createAnnouncer, ensureAnnouncerConsumer, openTombstones } from './app.js';
export type { Announcer, AnnouncerDeps } from './app.js';
export { createApplier, TOMBSTONE_BUCKET, tombstoneKeys } from './apply.js';
export type { Applier, ApplierDeps, AnnouncementMeta, ApplyOutcome, RejectReason } from './apply.js';
export { announcerCommand } from './command.js';
export { announcerSpec } from './config.js';
export type { AnnouncerConfig, AnnouncerSettings } from './config.js';
export { createAnnouncerMetrics } from './metrics.js';
export type { AnnouncementType, AnnouncerMetrics } from './metrics.js';
