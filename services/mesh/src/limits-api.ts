/**
 * The agent's run-time limits API: where it lives and what goes in and out. It needs a mesh token, in
 * `MESH_TOKEN_HEADER` (or `Authorization`), as the preheat API does.
 */

/** GET: the limits in force; PUT: changes any of them, answers the limits now in force. */
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
