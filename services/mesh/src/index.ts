export { Bitmap, MiB, chooseChunkSize, chunkCount, chunkRange, defaultChunkPolicy } from './chunks.js';
export type { ChunkPolicy } from './chunks.js';
export {
  eventsRetentionOptions,
  instanceOption,
  logOptions,
  metricsPortOption,
  natsAuth,
  natsOptions,
} from './common-options.js';
export type { NatsAuth } from './common-options.js';
export { envName, flagName, loadConfig, opt, renderHelp, renderReference } from './config.js';
export type { ConfigOf, ConfigSpec, LoadOptions, Loaded, OptionSpec } from './config.js';
export { assertReference, assertRepositoryName, formatDigest, isDigest, parseDigest } from './digest.js';
export type { Digest } from './digest.js';
export { ErrorCodes, ShoalError, isErrorCode, isShoalError, ociErrorBody } from './errors.js';
export type { ErrorCode, WireError } from './errors.js';
export { AssignmentReasons, ChunkSourceKinds, memoryEventPublisher, natsEventPublisher } from './events.js';
export type {
  AssignmentReason,
  AssignmentRecord,
  ChunkSourceKind,
  EventInput,
  EventPublisher,
  RankedCandidate,
  RankingRule,
  ShoalEvent,
  ShoalEventType,
  WaitReason,
} from './events.js';
export { defaultInstanceName, exitWithError, runService } from './lifecycle.js';
export type { CommandDefinition, Stoppable } from './lifecycle.js';
export { createLogger, loggerOptions, redactPaths } from './logger.js';
export type { Logger } from './logger.js';
export {
  announcement,
  assignment,
  chunkSource,
  chunksAnnouncement,
  decode,
  encode,
  endpointCandidate,
  endpointRecord,
  grantRecord,
  holderRecord,
  leaveMessage,
  manifestRecord,
  nodeRecord,
  scheduleReply,
  scheduleRequest,
  topologyRecord,
  withdrawAnnouncement,
} from './messages.js';
export type {
  Announcement,
  Assignment,
  ChunkSource,
  ChunksAnnouncement,
  EndpointCandidate,
  EndpointRecord,
  GrantRecord,
  HolderRecord,
  LeaveMessage,
  Locality,
  ManifestRecord,
  NodeRecord,
  TopologyRecord,
  ScheduleReply,
  ScheduleRequest,
} from './messages.js';
export { countDroppedEvents, createRegistry, metricsServer } from './metrics.js';
export {
  connectMesh,
  defaultStreamLimits,
  ensureStreams,
  jetStreamOf,
  natsConnectOptions,
  openBuckets,
} from './nats.js';
export type { MeshBuckets, MeshConnection, MeshConnectionOptions, StreamLimits } from './nats.js';
export {
  SUBJECT_PREFIX,
  buckets,
  chunkKeys,
  consumers,
  endpointKey,
  endpointKeyToRegistry,
  grantKey,
  isValidToken,
  nodeIdOf,
  queueGroups,
  streams,
  subjects,
} from './subjects.js';
export { formatBytes, formatDuration, parseBytes, parseDurationMs } from './units.js';
export { bucketEntries, bucketKeys, isCasConflict, watchBucket } from './kv.js';
export type { BucketWatch } from './kv.js';
export { runControlService } from './control-service.js';
export type { ControlServiceApp, ControlServiceConfig, ControlServiceContext } from './control-service.js';
export { createPeerToken, PEER_AUTH_SCHEME, peerTokenSource, verifyPeerAuthorization } from './peer-auth.js';
export { LIMIT_MAX_UPLOADS_PER_PEER, LIMIT_MIN_BURST, limitKinds, limitsPath } from './limits-api.js';
export type { AgentLimits, AgentLimitsView, LimitName } from './limits-api.js';
export { MESH_TOKEN_HEADER, PREHEAT_MAX_DIGESTS, PreheatStates, preheatPaths } from './preheat-api.js';
export type { PreheatBlobView, PreheatJobView, PreheatRequest, PreheatState } from './preheat-api.js';
export { chooseParent, compareCandidates, rankedLoad } from './ranking.js';
export type { RankInput } from './ranking.js';
