/**
 * The preheat API as a caller sees it (shoalctl preheat): where it lives, what goes in and comes out, and
 * how a request proves it comes from inside the mesh. The registry credential travels in `Authorization`
 * as it would to the registry, so the mesh token needs a header of its own.
 */
export { peerTokenSource } from './peer-auth.js';

/** Carries the mesh token (`Shoal-Peer <token>`, as signed by peerTokenSource) on preheat requests. */
export const MESH_TOKEN_HEADER = 'shoal-mesh-authorization';

export const preheatPaths = {
  /** POST: starts a job, answers 202 `{ id }`. */
  start: '/shoal/v1/preheat',
  /** GET: the job's progress; DELETE: cancels it. */
  job: (id: string) => `/shoal/v1/preheat/${encodeURIComponent(id)}`,
  jobRoute: '/shoal/v1/preheat/:id',
} as const;

/** Most digests one job may name: an image has tens of layers, not thousands. */
export const PREHEAT_MAX_DIGESTS = 1000;

export interface PreheatRequest {
  /** The registry as containerd names it (the mirror API's `ns`); the agent's first registry when absent. */
  registry?: string;
  repository: string;
  digests: string[];
}

export const PreheatStates = {
  /** Being authorised, or waiting for one of the job's download slots. */
  queued: 'queued',
  fetching: 'fetching',
  done: 'done',
  failed: 'failed',
} as const;
export type PreheatState = (typeof PreheatStates)[keyof typeof PreheatStates];

export interface PreheatBlobView {
  digest: string;
  /** The registry's size; 0 until the registry has been asked. */
  size: number;
  /** Bytes of the blob in this node's cache so far. */
  bytes: number;
  state: PreheatState;
  error?: string;
  /** The registry's status when it refused the blob (401, 403, 404). */
  status?: number;
}

export interface PreheatJobView {
  id: string;
  blobs: PreheatBlobView[];
}
