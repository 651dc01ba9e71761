/**
 * Preheat jobs: blobs brought into this node's cache before anyone pulls them, so a rollout finds its
 * layers in the mesh. Each blob is first authorised by the registry with the caller's own credential, as
 * a pull would be, then fetched through the same single-flight download clients use (scheduler, peers
 * and the origin budget all apply; blobs of at most origin.directMax come from the registry, as for a
 * pull); nothing is streamed anywhere. The credential is held in memory only, and only while the job runs.
 */
import { randomUUID } from 'node:crypto';
import type { AgentMetrics } from './metrics.js';
import {
  assertRepositoryName,
  type Logger,
  parseDigest,
  ShoalError,
  PREHEAT_MAX_DIGESTS,
  type PreheatBlobView,
  type PreheatJobView,
  type PreheatRequest,
  type PreheatState,
  PreheatStates,
} from '@shoal/mesh';
import type { ChunkStore, StoredBlob } from './store.js';
import type { Transfers } from './transfer.js';
import type { Authorization, RegistryTarget, Upstream } from './upstream.js';

export interface PreheatDeps {
  store: ChunkStore;
  upstream: Upstream;
  transfers: Transfers;
  metrics: AgentMetrics;
  log: Logger;
}

export interface PreheatOptions {
  /** How long a finished job can still be read. */
  retainMs: number;
  /** Blobs of one job downloaded at once; the rest wait, queued. */
  parallel: number;
  /** Jobs running at once on this agent; more are refused until some finish. */
  maxRunning: number;
}

export interface PreheatJobs {
  /** Starts a job and returns its ID at once; the blobs are authorised and fetched in the background. */
  start(target: RegistryTarget, repository: string, digests: string[], authorization?: string): string;
  view(id: string): PreheatJobView | undefined;
  /** Stops waiting for the job's blobs; downloads that clients also wait on continue. */
  cancel(id: string): PreheatJobView | undefined;
  close(): void;
}

export const defaultPreheatOptions: PreheatOptions = { retainMs: 10 * 60_000, parallel: 3, maxRunning: 64 };

/** Checks a preheat request body; anything malformed is a 400 in the OCI error format. */
export function parsePreheatRequest(body: unknown): PreheatRequest {
  const bad = (message: string) => new ShoalError('SHOAL_ERR_BAD_MESSAGE', message);
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw bad('the body must be a JSON object { registry?, repository, digests }');
  }
  const { registry, repository, digests, ...rest } = body as Record<string, unknown>;
  const unknown = Object.keys(rest);
  if (unknown.length > 0) throw bad(`unknown field "${unknown[0]?.slice(0, 40)}"`);
  if (registry !== undefined && (typeof registry !== 'string' || registry.length > 255)) {
    throw bad('registry must be a registry name such as registry.example.com:5000');
  }
  if (typeof repository !== 'string') throw bad('repository must be a string such as team/app');
  assertRepositoryName(repository);
  if (!Array.isArray(digests) || digests.length === 0 || digests.length > PREHEAT_MAX_DIGESTS) {
    throw bad(`digests must be a list of 1 to ${PREHEAT_MAX_DIGESTS} blob digests`);
  }
  for (const digest of digests) {
    if (typeof digest !== 'string') throw bad('digests must be strings such as sha256:<64 hex>');
    parseDigest(digest);
  }
  return {
    ...(registry === undefined || registry === '' ? {} : { registry }),
    repository,
    digests: digests as string[],
  };
}

export function createPreheatJobs(deps: PreheatDeps, options = defaultPreheatOptions): PreheatJobs {
  return new Jobs(deps, options);
}

interface BlobTask {
  digest: string;
  hex: string;
  size: number;
  state: PreheatState;
  error?: string;
  status?: number;
}

interface Job {
  id: string;
  target: RegistryTarget;
  repository: string;
  /** The caller's registry credential; dropped as soon as the job is over. */
  authorization: string | undefined;
  blobs: BlobTask[];
  cancelled: boolean;
  /** Resolves when the job is cancelled, so waits on downloads end at once. */
  stopped: Promise<void>;
  stop: () => void;
  forget?: NodeJS.Timeout;
}

const settled = (blob: BlobTask) => blob.state === PreheatStates.done || blob.state === PreheatStates.failed;

function heldBytes(stored: StoredBlob | undefined, size: number): number {
  if (!stored || stored.meta.size !== size) return 0;
  const { chunkSize } = stored.meta;
  let bytes = 0;
  for (const index of stored.have.indices()) bytes += Math.min(chunkSize, size - index * chunkSize);
  return bytes;
}

class Jobs implements PreheatJobs {
  private readonly jobs = new Map<string, Job>();
  private running = 0;
  private closed = false;

  constructor(
    private readonly deps: PreheatDeps,
    private readonly options: PreheatOptions,
  ) {}

  start(target: RegistryTarget, repository: string, digests: string[], authorization?: string): string {
    if (this.running >= this.options.maxRunning) {
      throw new ShoalError(
        'SHOAL_ERR_MESH_UNAVAILABLE',
        `${this.running} preheat jobs are running on this agent already; try again once some finish`,
      );
    }
    let stop!: () => void;
    const stopped = new Promise<void>((resolve) => {
      stop = resolve;
    });
    const unique = [...new Set(digests)];
    const job: Job = {
      id: randomUUID(),
      target,
      repository,
      authorization,
      blobs: unique.map((digest) => ({
        digest,
        hex: digest.slice('sha256:'.length),
        size: 0,
        state: PreheatStates.queued,
      })),
      cancelled: false,
      stopped,
      stop,
    };
    this.jobs.set(job.id, job);
    this.running++;
    this.deps.log.info(
      { job: job.id, registry: target.name, repository, blobs: unique.length },
      'preheat started',
    );
    void this.run(job)
      .catch((err: unknown) => {
        // Each blob's failure is recorded on the blob; anything else is a bug, kept visible on the job.
        const reason = err instanceof Error ? err.message : String(err);
        for (const blob of job.blobs) this.settle(blob, PreheatStates.failed, reason);
        this.deps.log.error({ job: job.id, err }, 'preheat failed');
      })
      .finally(() => this.finish(job));
    return job.id;
  }

  view(id: string): PreheatJobView | undefined {
    const job = this.jobs.get(id);
    if (!job) return undefined;
    return {
      id,
      blobs: job.blobs.map((blob): PreheatBlobView => {
        const bytes =
          blob.state === PreheatStates.done ? blob.size : heldBytes(this.deps.store.get(blob.hex), blob.size);
        return {
          digest: blob.digest,
          size: blob.size,
          bytes,
          state: blob.state,
          ...(blob.error === undefined ? {} : { error: blob.error }),
          ...(blob.status === undefined ? {} : { status: blob.status }),
        };
      }),
    };
  }

  cancel(id: string): PreheatJobView | undefined {
    const job = this.jobs.get(id);
    if (!job) return undefined;
    if (!job.cancelled) {
      job.cancelled = true;
      for (const blob of job.blobs) this.settle(blob, PreheatStates.failed, 'cancelled');
      job.stop();
    }
    return this.view(id);
  }

  close(): void {
    this.closed = true;
    for (const job of this.jobs.values()) {
      job.cancelled = true;
      job.authorization = undefined;
      job.stop();
      clearTimeout(job.forget);
    }
    this.jobs.clear();
  }

  private settle(blob: BlobTask, state: PreheatState, error?: string, status?: number): void {
    if (settled(blob)) return;
    blob.state = state;
    if (error !== undefined) blob.error = error;
    if (status !== undefined) blob.status = status;
  }

  private async run(job: Job): Promise<void> {
    // Every blob is authorised up front, while the caller's credential (often a short-lived token) is
    // fresh; the downloads then take turns.
    await Promise.all(job.blobs.map((blob) => this.authorize(job, blob)));
    const waiting = job.blobs.filter((blob) => !settled(blob));
    const worker = async () => {
      for (let blob = waiting.shift(); blob && !job.cancelled; blob = waiting.shift()) {
        await this.fetch(job, blob);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, this.options.parallel) }, worker));
  }

  private async authorize(job: Job, blob: BlobTask): Promise<void> {
    let auth: Authorization;
    try {
      auth = await this.deps.upstream.authorizeBlob(
        job.target,
        job.repository,
        blob.digest,
        job.authorization,
      );
    } catch (err) {
      this.settle(blob, PreheatStates.failed, err instanceof Error ? err.message : String(err));
      return;
    }
    this.deps.metrics.originRequests.inc({
      kind: 'authorize',
      status: auth.ok ? '2xx' : `${Math.floor(auth.status / 100)}xx`,
    });
    if (!auth.ok) {
      const what =
        auth.status === 404
          ? `not in repository ${job.repository}`
          : auth.status === 401 || auth.status === 403
            ? 'the credential was refused'
            : 'refused';
      this.settle(blob, PreheatStates.failed, `registry answered ${auth.status}: ${what}`, auth.status);
      return;
    }
    blob.size = auth.size;
    const stored = this.deps.store.get(blob.hex);
    // An empty blob needs no download, and a complete copy of the registry's size is already here.
    if (auth.size === 0 || (stored?.complete && stored.meta.size === auth.size)) {
      this.settle(blob, PreheatStates.done);
    }
  }

  private async fetch(job: Job, blob: BlobTask): Promise<void> {
    if (settled(blob)) return;
    const stored = this.deps.store.get(blob.hex);
    if (stored?.complete && stored.meta.size === blob.size) {
      this.settle(blob, PreheatStates.done);
      return;
    }
    const active = this.deps.transfers.active(blob.hex);
    // The registry's size is the truth, and a copy or download that disagrees is not this job's to
    // replace: pulls pass such blobs through to the registry.
    if ((stored && stored.meta.size !== blob.size) || (active && active.size !== blob.size)) {
      this.settle(
        blob,
        PreheatStates.failed,
        `the registry's size (${blob.size}) differs from this node's copy of the blob`,
      );
      return;
    }
    blob.state = PreheatStates.fetching;
    const download = this.deps.transfers.get({
      target: job.target,
      repository: job.repository,
      digest: blob.digest,
      size: blob.size,
      authorization: job.authorization,
    });
    await Promise.race([download.finished, job.stopped]);
    if (job.cancelled) return;
    if (download.failed) {
      this.settle(blob, PreheatStates.failed, download.failed.message);
    } else if (this.deps.store.get(blob.hex)?.complete) {
      this.settle(blob, PreheatStates.done);
    } else {
      this.settle(blob, PreheatStates.failed, 'the download ended without the whole blob');
    }
  }

  private finish(job: Job): void {
    this.running--;
    job.authorization = undefined;
    const done = job.blobs.filter((blob) => blob.state === PreheatStates.done).length;
    this.deps.log.info(
      { job: job.id, done, failed: job.blobs.length - done, cancelled: job.cancelled },
      'preheat finished',
    );
    if (this.closed) return;
    job.forget = setTimeout(() => this.jobs.delete(job.id), this.options.retainMs);
    job.forget.unref();
  }
}
