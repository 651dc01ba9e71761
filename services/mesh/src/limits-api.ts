/**
 * The agent's run-time limits API: where it lives and what goes in and out. It needs a mesh token, in
 * `MESH_TOKEN_HEADER` (or `Authorization`), as the preheat API does.
 */

/**
 * GET: the limits in force; PUT: changes any of them (the change is kept across restarts); DELETE: drops
 * every change made through the API, back to the configured values. Each answers an `AgentLimitsView`.
 */
export const limitsPath = '/shoal/v1/limits';

/** Every limit an agent applies at run time, in bytes, bytes per second, or a count; 0: unlimited/off. */
export interface AgentLimits {
  downloadRate: number;
  downloadBurst: number;
  uploadRate: number;
  uploadBurst: number;
  uploadsPerPeer: number;
  registryRate: number;
  registryBurst: number;
  share: boolean;
  cacheMaxSize: number;
  memory: number;
}

export type LimitName = keyof AgentLimits;

/** What each limit measures, so a client can read and write it in human units. */
export const limitKinds = {
  downloadRate: 'rate',
  downloadBurst: 'size',
  uploadRate: 'rate',
  uploadBurst: 'size',
  uploadsPerPeer: 'count',
  registryRate: 'rate',
  registryBurst: 'size',
  share: 'boolean',
  cacheMaxSize: 'size',
  memory: 'size',
} as const satisfies Record<LimitName, 'rate' | 'size' | 'count' | 'boolean'>;

/** The smallest burst an agent accepts, at run time as in its configuration. */
export const LIMIT_MIN_BURST = 64 * 1024;

/** The most upload slots per peer an agent accepts at run time. */
export const LIMIT_MAX_UPLOADS_PER_PEER = 1024;

/** The answer of every limits request: the limits in force, and which of them the API set. */
export interface AgentLimitsView extends AgentLimits {
  /** Limits changed through the API, in force instead of the configured values until a DELETE. */
  overridden: LimitName[];
}
