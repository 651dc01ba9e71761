/**
 * Blob downloads through the mesh. One download per blob however many clients ask (single flight); each
 * chunk comes from a peer or the origin as the scheduler plans, is verified against its sha256 in a
 * worker before it is stored, served or announced, and wakes the clients waiting for it, so bytes
 * stream to the runtime in order as soon as the next chunk is verified. Whenever the mesh cannot help
 * (no NATS, no scheduler, peers failing, waiting too long) the chunk is fetched from the origin directly:
 * a pull that works without Shoal never fails with it.
 */
import { createHash } from 'node:crypto';
import {
  type Assignment,
  type ChunkPolicy,
  chooseChunkSize,
  chunkCount,
  chunkRange,
  type EventPublisher,
  isShoalError,
  type Logger,
  ShoalError,
} from '@shoal/mesh';
import type { BufferPool } from './buffers.js';
import type { HashPool } from './hash-pool.js';
import type { MemoryTier } from './memory-tier.js';
import { isScheduleTimeout, type MeshClient } from './mesh-client.js';
import type { AgentMetrics } from './metrics.js';
import { PeerSpeeds } from './peer-speeds.js';
import { afterPendingReads } from './pending-reads.js';
import type { PeerClient } from './peers.js';
import type { ByteBudget, TokenBucket } from './rate-limit.js';
import { type ChunkStore, isDiskFull } from './store.js';
import type { RegistryTarget, Upstream } from './upstream.js';

export interface BlobRequest {
  target: RegistryTarget;
  repository: string;
  digest: string;
  size: number;
  authorization: string | undefined;
}

export interface TransferOptions {
  nodeId: string;
  chunkPolicy: ChunkPolicy;
  concurrency: number;
  /** Ask for more chunks once this many slots are free, or nothing is in flight. */
  askWhenFree: number;
  originWaitMs: number;
  originRetries: number;
  /** Blobs of at most this many bytes go to the registry directly, until it fails them (0: none). */
  originDirectMax: number;
  /** A peer this many times slower than the download's median peer is dropped (0: never). */
  peerSlowFactor: number;
  /** The shortest relative deadline for a peer chunk. */
  peerSlowMinMs: number;
}

export interface TransferDeps {
  store: ChunkStore;
  upstream: Upstream;
  peers: PeerClient;
  mesh: MeshClient;
  hashes: HashPool;
  buffers: BufferPool;
  metrics: AgentMetrics;
  events: EventPublisher;
  log: Logger;
  /** Hot chunks: those written while clients wait for them are kept here too. */
  memory: MemoryTier;
  /** Every chunk fetched waits for `download`; those from the registry for `registry` as well. */
  limits: { download: TokenBucket; registry: TokenBucket };
  /** Bytes of chunk buffers all downloads together may hold: with large chunks, fewer are in flight. */
  chunkMemory: ByteBudget;
}

type Waiter = { resolve: () => void; reject: (err: Error) => void };
export type FetchedFrom = 'peer' | 'origin';

/** How long to stop asking the control plane for this download after it failed to answer. */
const MESH_BACKOFF_MS = 3_000;
/**
 * Schedule requests of one download in a row left unanswered for scheduler.timeout before the scheduler is
 * taken for gone (MESH_BACKOFF_MS of the registry); fewer are a scheduler that is slow, not absent. Only an
 * answer starts the count again: once taken for gone, each further late reply is a back-off at once.
 */
const SCHEDULER_GONE_AFTER_TIMEOUTS = 3;
/** How often a peer transfer in flight is compared with the download's other parents. */
const SLOW_CHECK_MS = 100;
/** How often an otherwise idle download loop looks again. */
const IDLE_POLL_MS = 250;
/**
 * Told to wait again and again with nothing in flight, a download asks again after the scheduler's retry
 * time doubled each time, up to this many times it: at the start of a rollout every node waits for the
 * first copies from the registry, and asking ten times a second each would load the control plane most
 * when it matters most. A chunk that arrives, or an assignment, starts over from the scheduler's time.
 */
const IDLE_WAIT_BACKOFF_MAX = 8;
/**
 * How long a peer found unreachable is reported in this download's schedule requests: long enough to
 * reach each scheduler replica a few times, short enough that a peer back on its feet is not held dead.
 */
const UNREACHABLE_REPORT_MS = 3_000;
/** How many times origin.waitTimeout a download waits while told its chunks are queued for the origin. */
const QUEUED_WAIT_FACTOR = 4;
/**
 * How long chunks parked in memory (the disk full) outlive their last reader: long enough for the mesh to
 * have heard of every one (announcements are batched), so that the scheduler releases the leases taken
 * for them before it hears they are gone; otherwise the other nodes wait out the lease.
 */
const PARKED_LINGER_MS = 1_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));

export class Download {
  readonly hex: string;
  chunkSize = 0;
  count = 0;
  /** Where each chunk fetched by this download came from. */
  readonly fetchedFrom = new Map<number, FetchedFrom>();
  private readonly waiters = new Map<number, Waiter[]>();
  private failure: Error | undefined;
  private readonly avoid = new Set<string>();
  /**
   * Parents that went silent for this blob (connected, then nothing for peer.timeout) and were not
   * dropped for it, with when that was first found (performance.now()): see fetchChunk.
   */
  private readonly silentAt = new Map<string, number>();
  /**
   * Of `avoid`, the peers no connection could even be opened to (down, or cut off from this node), with
   * when that was found: each is reported to the scheduler for UNREACHABLE_REPORT_MS, not for ever, so a
   * peer that comes back is not held dead by an old report.
   */
  private readonly unreachable = new Map<string, number>();
  /** How fast this download's parents have been, to drop one far slower than the others. */
  private readonly speeds: PeerSpeeds;
  /** Credentials of the clients attached to this download, most recent first (kept in memory only). */
  private readonly credentials: (string | undefined)[];
  /** The sha256 of every chunk this download verified, for re-announcing a corrected manifest. */
  private readonly chunkHashes = new Map<number, string>();
  /** Set when the registry's bytes disagreed with the mesh's manifest, which is then suspect. */
  private manifestSuspect = false;
  /** Chunks the disk had no room for, parked in the memory tier for this download's clients. */
  private parked = 0;
  readonly ready: Promise<void>;
  readonly finished: Promise<void>;
  private markReady!: () => void;

  constructor(
    private readonly request: BlobRequest,
    private readonly options: TransferOptions,
    private readonly deps: TransferDeps,
  ) {
    this.hex = request.digest.slice('sha256:'.length);
    this.credentials = [request.authorization];
    this.speeds = new PeerSpeeds({ factor: options.peerSlowFactor, minMs: options.peerSlowMinMs });
    this.ready = new Promise<void>((resolve) => {
      this.markReady = resolve;
    });
    this.finished = this.run().then(
      () => undefined,
      (err: unknown) => {
        const error = err instanceof Error ? err : new Error(String(err));
        this.fail(error);
      },
    );
  }

  /** Whether this blob is small enough to be asked of the registry before the mesh (see origin.directMax). */
  private get registryFirst(): boolean {
    return this.request.size <= this.options.originDirectMax;
  }

  get digest(): string {
    return this.request.digest;
  }

  get size(): number {
    return this.request.size;
  }

  /**
   * Another client joined: its credential goes first, so a download outlives the short-lived token of
   * the client that started it; the others stay as fallbacks when the registry refuses one.
   */
  attach(authorization: string | undefined): void {
    const at = this.credentials.indexOf(authorization);
    if (at === 0) return;
    if (at > 0) this.credentials.splice(at, 1);
    this.credentials.unshift(authorization);
    this.credentials.length = Math.min(this.credentials.length, 8);
  }

  get failed(): Error | undefined {
    return this.failure;
  }

  /** Resolves once chunk `index` is verified and on disk (or parked in memory, the disk being full). */
  waitChunk(index: number): Promise<void> {
    if (this.deps.store.has(this.hex, index)) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    if (this.count > 0 && (index < 0 || index >= this.count)) {
      return Promise.reject(new ShoalError('SHOAL_ERR_RANGE_INVALID', `chunk ${index} is outside the blob`));
    }
    return new Promise<void>((resolve, reject) => {
      const list = this.waiters.get(index) ?? [];
      list.push({ resolve, reject });
      this.waiters.set(index, list);
    });
  }

  private notify(index: number): void {
    const list = this.waiters.get(index);
    this.waiters.delete(index);
    for (const waiter of list ?? []) waiter.resolve();
  }

  private fail(err: Error): void {
    this.failure = err;
    this.markReady();
    for (const list of this.waiters.values()) for (const waiter of list) waiter.reject(err);
    this.waiters.clear();
  }

  private async layout(): Promise<void> {
    const stored = this.deps.store.get(this.hex);
    if (stored && stored.meta.size === this.request.size) {
      this.chunkSize = stored.meta.chunkSize;
    } else {
      this.chunkSize = chooseChunkSize(this.request.size, this.options.chunkPolicy);
      // The blob's manifest in the mesh fixes the chunk size; an empty request just asks for it. A blob
      // fetched from the registry directly does not wait for that round trip: origin.directMax is at most
      // the smallest chunk size, so it is one chunk whatever the mesh would say.
      if (this.deps.mesh.usable && !this.registryFirst) {
        try {
          const plan = await this.deps.mesh.plan({
            blob: this.request.digest,
            size: this.request.size,
            chunkSize: this.chunkSize,
            need: [],
            avoid: [],
          });
          this.chunkSize = plan.chunkSize;
        } catch {
          // The control plane is unreachable: the local choice is as good as any.
        }
      }
      await this.deps.store.ensure({
        digest: this.request.digest,
        size: this.request.size,
        chunkSize: this.chunkSize,
      });
    }
    this.count = chunkCount(this.request.size, this.chunkSize);
    this.markReady();
  }

  private async run(): Promise<void> {
    // The blob stays in the cache for the whole download, however full the cache gets meanwhile.
    const unpin = this.deps.store.pin(this.hex);
    try {
      await this.fetchAll();
    } finally {
      unpin();
      // Parked chunks serve the clients (and peers) still reading the blob; they go a little after the
      // last of them is done, and the mesh hears at once that this node no longer has them.
      if (this.parked > 0) {
        const { store, memory, mesh } = this.deps;
        const letGo = () => {
          setTimeout(() => {
            if (store.isPinned(this.hex)) {
              store.afterUnpinned(this.hex, letGo);
              return;
            }
            memory.unpark(this.hex);
            if (store.unpark(this.hex) === 0) return;
            mesh.withdraw(this.request.digest, false, { now: true });
            mesh.markDirty(this.request.digest);
          }, PARKED_LINGER_MS).unref();
        };
        store.afterUnpinned(this.hex, letGo);
      }
    }
  }

  private async fetchAll(): Promise<void> {
    await this.layout();
    const { store } = this.deps;
    const missing = new Set<number>();
    for (let i = 0; i < this.count; i++) if (!store.has(this.hex, i)) missing.add(i);
    const inflight = new Map<number, Promise<void>>();
    /** Chunks told to wait for a peer, and when to ask again. */
    const waitUntil = new Map<number, number>();
    const originFailures = new Map<number, number>();
    /**
     * Since when every reply has told this download to wait and no chunk has arrived; undefined while it
     * gets work.
     */
    let waitingSince: number | undefined;
    /**
     * Since when, within that, every reply has told it to wait for a peer rather than queued it for the
     * origin; undefined while queued.
     */
    let peerWaitingSince: number | undefined;
    /** Replies in a row that told this download, with nothing in flight, to wait. */
    let idleWaits = 0;
    /**
     * Chunks taken from the registry at the last fallback; 0 until this download waits out
     * origin.waitTimeout, and again once the scheduler assigns it work.
     */
    let fallbackWidth = 0;
    let meshDownUntil = 0;
    /** Schedule requests in a row that timed out. */
    let timeouts = 0;
    /** Whether the last schedule request timed out (its chunks are told to wait, see plan). */
    let unanswered = false;
    /** Whether the fallback ramp under way began because the scheduler did not answer. */
    let rampedUnanswered = false;
    /** Chunks being fetched from the registry under a scheduler's origin lease, and the lease's length. */
    const leased = new Map<number, number>();
    /** When this download last sent the scheduler a request (any request renews the leases it lists). */
    let askedAt = Date.now();

    const start = (assignment: Assignment) => {
      const index = assignment.index;
      waitUntil.delete(index);
      if (assignment.source.kind === 'origin' && assignment.source.leaseMs > 0)
        leased.set(index, assignment.source.leaseMs);
      const { start: from, end } = chunkRange(this.request.size, this.chunkSize, index);
      const release = this.deps.chunkMemory.reserve(end - from);
      const task = this.fetchChunk(assignment, originFailures)
        .finally(release)
        .then((ok) => {
          if (!ok) return;
          missing.delete(index);
          // A chunk arrived: the mesh is serving this node, however long it has been told to wait.
          waitingSince = peerWaitingSince = undefined;
          idleWaits = 0;
        })
        .finally(() => {
          inflight.delete(index);
          leased.delete(index);
        });
      inflight.set(index, task);
    };

    /**
     * Keeps the origin leases of a slow registry fetch: a download whose slots are all busy asks nothing,
     * so once a quarter of the shortest lease has passed since its last request it tells the scheduler
     * which chunks it is still fetching (needing nothing), and the scheduler extends their leases rather
     * than handing the chunks to another node as well.
     */
    const keepLeases = () => {
      if (leased.size === 0 || !this.deps.mesh.usable) return;
      if (Date.now() - askedAt < Math.min(...leased.values()) / 4) return;
      askedAt = Date.now();
      tellFetching([...this.avoid]);
    };

    /** Tells the scheduler which chunks are in flight, asking for nothing; the answer does not matter. */
    const tellFetching = (avoid: string[]) => {
      this.deps.mesh
        .plan({
          blob: this.request.digest,
          size: this.request.size,
          chunkSize: this.chunkSize,
          need: [],
          avoid,
          fetching: [...inflight.keys()],
        })
        .catch(() => undefined);
    };

    /**
     * Asks which of the ready chunks to fetch now: the scheduler sees every chunk this node could use and
     * chooses `free` of them (the next in order first, then the rarest), so nodes fetch different chunks
     * and trade. Without a scheduler, the next chunks in order come from the registry.
     */
    const plan = async (ready: number[], free: number): Promise<Assignment[]> => {
      const direct = () => ready.slice(0, free).map((index) => originAssignment(index));
      // A blob this small costs the registry next to nothing per node, and waiting for the mesh's leases
      // (the zone's, the origin's, this node's share) costs it seconds; once the registry fails it, the
      // mesh is asked as for any blob.
      if (this.registryFirst && originFailures.size === 0) return direct();
      const now = Date.now();
      if (now < meshDownUntil || !this.deps.mesh.usable) {
        if (now >= meshDownUntil) this.fallback('nats unavailable');
        meshDownUntil = Math.max(meshDownUntil, now + MESH_BACKOFF_MS);
        return direct();
      }
      unanswered = false;
      askedAt = now;
      try {
        const reply = await this.deps.mesh.plan({
          blob: this.request.digest,
          size: this.request.size,
          chunkSize: this.chunkSize,
          need: ready,
          avoid: [...this.avoid],
          ...this.unreachableNow(),
          max: free,
          fetching: [...inflight.keys()],
        });
        timeouts = 0;
        if (rampedUnanswered) {
          // The scheduler answers again: its word counts, and the registry is only for what it cannot place.
          rampedUnanswered = false;
          fallbackWidth = 0;
        }
        if (reply.chunkSize !== this.chunkSize) {
          // Chunks cut at other boundaries cannot be exchanged; this copy stays out of the mesh.
          meshDownUntil = Number.POSITIVE_INFINITY;
          this.fallback('chunk size differs from the mesh');
          return direct();
        }
        return reply.assignments;
      } catch (err) {
        if (isScheduleTimeout(err) && ++timeouts < SCHEDULER_GONE_AFTER_TIMEOUTS) {
          // A scheduler that answers late is busy, not gone: under load its round trips stretch past
          // scheduler.timeout now and then, and filling every fetch slot from the registry for the mesh
          // back-off each time cost a busy rollout several extra copies of the image. Its chunks wait
          // instead; a download with nothing in flight takes one from the registry (see fetchMissing).
          unanswered = true;
          return ready.map((index) => waitAssignment(index, IDLE_POLL_MS));
        }
        this.fallback(isShoalError(err) ? err.message : String(err));
        meshDownUntil = Date.now() + MESH_BACKOFF_MS;
        return direct();
      }
    };

    /** Whether the scheduler gave this download a peer, whose upload it counts until told otherwise. */
    let peerAssigned = false;
    /**
     * Tells the scheduler that none of this download's chunks are in flight any more, so it frees the
     * parents at once. A node that announces its chunks frees them that way too; one that does not share
     * (peer.share false) never announces, and its parents would look busy for the scheduler's
     * parent.expire after each of its downloads.
     */
    const nothingInFlight = () => {
      if (!peerAssigned || inflight.size > 0 || !this.deps.mesh.usable) return;
      peerAssigned = false;
      tellFetching([]);
    };

    const fetchMissing = async (): Promise<void> => {
      while (missing.size > 0) {
        const now = Date.now();
        for (const [index, until] of waitUntil)
          if (until <= now || !missing.has(index)) waitUntil.delete(index);
        // Slots: the configured concurrency, fewer where chunks are so large that the agent's chunk memory
        // holds fewer, and fewer still while other downloads hold part of it.
        const memory = this.deps.chunkMemory;
        const capacity = Math.min(this.options.concurrency, memory.capacity(this.chunkSize));
        const free = Math.min(capacity - inflight.size, memory.slots(this.chunkSize, inflight.size));
        const askWhenFree = Math.min(this.options.askWhenFree, capacity);
        const ready = [...missing].filter((i) => !inflight.has(i) && !waitUntil.has(i)).sort((x, y) => x - y);
        if (free > 0 && ready.length > 0 && (inflight.size === 0 || free >= askWhenFree)) {
          const assignments = await plan(ready, free);
          let started = 0;
          let retryMs = 0;
          /**
           * Told that chunks no one holds wait their turn for a registry as busy as the mesh allows, or for
           * the node that holds their lease.
           */
          let queued = false;
          for (const assignment of assignments) {
            if (started >= free) break;
            if (!missing.has(assignment.index) || inflight.has(assignment.index)) continue;
            if (assignment.source.kind === 'wait') {
              retryMs = Math.max(retryMs, assignment.source.retryMs);
              queued ||= assignment.source.queue === 'origin';
              continue;
            }
            peerAssigned ||= assignment.source.kind === 'peer';
            start(assignment);
            started++;
          }
          if (started > 0) {
            waitingSince = peerWaitingSince = undefined;
            idleWaits = 0;
            fallbackWidth = 0;
          } else if (inflight.size > 0) {
            // Chunks are still arriving: the mesh is serving this node, and its link is busy with them;
            // fetching the rest from the registry as well would only load it. The clock starts once
            // nothing is in flight.
            waitingSince = peerWaitingSince = undefined;
            const until = Date.now() + Math.max(retryMs, 1);
            for (const index of ready) waitUntil.set(index, until);
          } else {
            const now = Date.now();
            waitingSince ??= now;
            // Chunks queued for the origin wait their turn for a registry that is already as busy as the
            // mesh keeps it (its budget spent, or this node holding its share of it), or for another
            // node's fetch of them under its lease: going to the registry anyway would only slow
            // everyone's share, or copy them once more. They get longer, but not for ever, in case the turn
            // never comes. Told to wait for a peer, a download gives it origin.waitTimeout from the first
            // such reply, so that a holder that appears at the end of a long turn gets its time too; the
            // whole wait never exceeds the queue's.
            peerWaitingSince = queued ? undefined : (peerWaitingSince ?? now);
            const patience = this.originWaitMs;
            const deadline = Math.min(
              waitingSince + patience * QUEUED_WAIT_FACTOR,
              peerWaitingSince === undefined ? Infinity : peerWaitingSince + patience,
            );
            // Once it has gone to the registry itself, a download goes again at once while the scheduler
            // still has nothing for it, unless the chunks are queued for the origin: then it waits its
            // turn again first.
            if (unanswered || (fallbackWidth > 0 && !queued) || now >= deadline) {
              // Nobody has served this node for too long, or the scheduler did not answer at all: take the
              // next chunks from the registry itself, one at first and twice as many each time the
              // scheduler still has nothing once they are in, so that a node kept waiting a little too
              // long costs the registry a chunk, not a download's worth of them, and one the mesh cannot
              // serve at all still gets its full width.
              if (fallbackWidth === 0) {
                this.fallback(unanswered ? 'scheduler timeout' : 'waited too long for a peer');
                // Its parents are freed by the next request's `fetching` anyway; a scheduler that did not
                // answer is not sent one more request for it.
                if (!unanswered) nothingInFlight();
                rampedUnanswered = unanswered;
              }
              fallbackWidth = Math.min(fallbackWidth * 2 || 1, capacity);
              for (const index of ready.slice(0, Math.min(fallbackWidth, free)))
                start(originAssignment(index));
              waitingSince = peerWaitingSince = undefined;
            } else {
              const backoff = Math.min(2 ** idleWaits, IDLE_WAIT_BACKOFF_MAX);
              idleWaits++;
              // Never past the moment this download stops waiting for the mesh.
              const until = Math.min(
                now + Math.max(retryMs, 1) * backoff * (0.9 + Math.random() * 0.2),
                deadline,
              );
              for (const index of ready) waitUntil.set(index, until);
            }
          }
        }
        keepLeases();
        // Sleep until a fetch finishes or the waiting chunks may be asked for again, whichever comes first.
        const nextWake = waitUntil.size > 0 ? Math.min(...waitUntil.values()) - Date.now() : IDLE_POLL_MS;
        const pause = sleep(Math.min(Math.max(nextWake, 1), IDLE_POLL_MS));
        await (inflight.size > 0 ? Promise.race([...inflight.values(), pause]) : pause);
      }
    };
    try {
      await fetchMissing();
    } finally {
      // Also when the download failed: the fetches still running end first.
      void Promise.allSettled([...inflight.values()]).then(nothingInFlight);
    }
    await this.verifyWhole();
  }

  /** The peers to report as unreachable in the next schedule request, if any. */
  private unreachableNow(): { unreachable?: string[] } {
    if (this.unreachable.size === 0) return {};
    const since = Date.now() - UNREACHABLE_REPORT_MS;
    const recent = [...this.unreachable].filter(([, at]) => at >= since).map(([node]) => node);
    return recent.length > 0 ? { unreachable: recent } : {};
  }

  /** How long a chunk may wait for a peer: a little longer than an origin lease, spread so waiters do not all give up at once. */
  private get originWaitMs(): number {
    return this.options.originWaitMs * (0.85 + Math.random() * 0.3);
  }

  private fallback(reason: string): void {
    this.deps.metrics.fallbacks.inc({ reason: reasonLabel(reason) });
    this.deps.events.publish({
      type: 'fallback',
      node: this.options.nodeId,
      blob: this.request.digest,
      reason,
    });
    this.deps.log.info({ blob: this.request.digest, reason }, 'fetching from the registry directly');
  }

  /** Fetches one chunk as assigned. Resolves true when stored, false when it must be planned again. */
  private async fetchChunk(assignment: Assignment, originFailures: Map<number, number>): Promise<boolean> {
    const { index, source } = assignment;
    const { start, end } = chunkRange(this.request.size, this.chunkSize, index);
    const length = end - start;
    if (source.kind === 'peer') {
      const candidates = [
        { node: source.node, url: source.url, locality: source.locality },
        ...assignment.alternates,
      ];
      for (const peer of candidates) {
        if (this.avoid.has(peer.node)) continue;
        // Waiting for a slot of the parent (one that said it was busy) and for the limiter comes before
        // the clock starts, so neither looks like a slow parent.
        const endSlot = await this.deps.peers.slot(peer.url);
        try {
          await this.deps.limits.download.take(length);
        } catch (err) {
          endSlot();
          throw err;
        }
        // Dropped by another fetch while this one waited: not asked again.
        if (this.avoid.has(peer.node)) {
          endSlot();
          continue;
        }
        const began = performance.now();
        let held = this.deps.buffers.take(length);
        try {
          if (!assignment.sha256)
            throw new ShoalError('SHOAL_ERR_CHUNK_CORRUPT', 'no known hash for this chunk');
          try {
            await this.fetchFromPeer(peer, index, held);
          } finally {
            endSlot();
          }
          const { sha256, chunk } = await this.deps.hashes.hashChunk(held, true);
          held = chunk;
          if (sha256 !== assignment.sha256) {
            this.deps.metrics.verifyFailures.inc({ source: 'peer' });
            throw new ShoalError(
              'SHOAL_ERR_CHUNK_CORRUPT',
              `chunk ${index} from ${peer.node} failed sha256 verification`,
            );
          }
        } catch (err) {
          endSlot();
          this.deps.buffers.give(held);
          const reason = err instanceof Error ? err.message : String(err);
          if (isShoalError(err) && err.details?.busy === true) {
            // The parent is serving this node all it allows one peer: not a fault, so it is not dropped;
            // the chunk goes to the next alternate (or is planned again).
            this.deps.metrics.chunkFailures.inc({ source: 'peer', reason: 'busy' });
            continue;
          }
          const silent = isShoalError(err) && err.details?.silent === true;
          const why = isShoalError(err, 'SHOAL_ERR_CHUNK_CORRUPT')
            ? 'corrupt'
            : isShoalError(err) && err.details?.slow === true
              ? 'slow'
              : 'failed';
          // A peer that fails (or is far slower than the others) once is not asked again for this blob;
          // the scheduler is told via `avoid`, and the chunk goes to the next parent. One that went silent
          // (connected, then nothing for peer.timeout) is let off once: a parent held up by its node
          // (descheduled on busy cores, a long garbage collection) is silent for a second or more, then
          // serves on, and dropping it sent its chunks to the registry whenever it was their only holder.
          // Every fetch from it begun before that first silence was found goes silent too and is let off
          // with it; one begun after, silent again, drops it.
          if (isShoalError(err) && err.details?.unreachable === true && !this.unreachable.has(peer.node))
            this.unreachable.set(peer.node, Date.now());
          const firstSilence = silent ? (this.silentAt.get(peer.node) ?? performance.now()) : undefined;
          if (firstSilence !== undefined) this.silentAt.set(peer.node, firstSilence);
          const letOff = firstSilence !== undefined && began < firstSilence;
          if (!letOff && !this.avoid.has(peer.node)) {
            this.avoid.add(peer.node);
            this.deps.events.publish({
              type: 'parent_dropped',
              node: this.options.nodeId,
              blob: this.request.digest,
              peer: peer.node,
              why,
              reason,
            });
          }
          this.deps.metrics.chunkFailures.inc({
            source: 'peer',
            reason: why === 'failed' ? 'unavailable' : why,
          });
          this.deps.events.publish({
            type: 'chunk_failed',
            node: this.options.nodeId,
            blob: this.request.digest,
            index,
            source: 'peer',
            peer: peer.node,
            reason,
          });
          continue;
        }
        try {
          await this.store(index, held, assignment.sha256, 'peer', began, peer.node);
          this.deps.metrics.peerFetchBytes.inc({ locality: peer.locality ?? 'unknown' }, length);
        } finally {
          this.deps.buffers.give(held);
        }
        return true;
      }
      return false;
    }
    if (source.kind === 'wait') return false;
    await this.deps.limits.registry.take(length);
    await this.deps.limits.download.take(length);
    const began = performance.now();
    let fetched: { sha256: string; chunk: Buffer };
    try {
      fetched = await this.fetchFromOrigin(index, start, end);
      if (assignment.sha256 && fetched.sha256 !== assignment.sha256) {
        // The registry and the mesh disagree. Ask the registry once more: if it answers the same bytes
        // again, it is the mesh's manifest that is wrong, and the whole-blob check will confirm it.
        this.deps.metrics.verifyFailures.inc({ source: 'origin' });
        this.deps.buffers.give(fetched.chunk);
        const again = await this.fetchFromOrigin(index, start, end);
        if (again.sha256 !== fetched.sha256) {
          this.deps.buffers.give(again.chunk);
          throw new ShoalError(
            'SHOAL_ERR_UPSTREAM',
            `the registry sent different bytes twice for chunk ${index}`,
          );
        }
        this.manifestSuspect = true;
        fetched = again;
      }
    } catch (err) {
      const failures = (originFailures.get(index) ?? 0) + 1;
      originFailures.set(index, failures);
      const reason = err instanceof Error ? err.message : String(err);
      this.deps.metrics.chunkFailures.inc({ source: 'origin', reason: 'error' });
      this.deps.events.publish({
        type: 'chunk_failed',
        node: this.options.nodeId,
        blob: this.request.digest,
        index,
        source: 'origin',
        reason,
      });
      // A blob fetched directly has one attempt more: the one before it asks the mesh.
      if (failures >= this.options.originRetries + (this.registryFirst ? 1 : 0)) {
        throw err instanceof ShoalError ? err : new ShoalError('SHOAL_ERR_UPSTREAM', reason, { cause: err });
      }
      await sleep(100 * 2 ** failures * (0.5 + Math.random()));
      return false;
    }
    try {
      await this.store(index, fetched.chunk, fetched.sha256, 'origin', began);
    } finally {
      this.deps.buffers.give(fetched.chunk);
    }
    return true;
  }

  /**
   * Fetches a chunk from a parent, watching it against the download's other parents: once the transfer
   * has taken `peer.slowFactor` times what their median rate needs (re-checked as their transfers finish,
   * so that a chunk started before anything was known to compare with is caught too), it is abandoned.
   */
  private async fetchFromPeer(
    peer: { node: string; url: string },
    index: number,
    into: Buffer,
  ): Promise<void> {
    const length = into.length;
    const began = performance.now();
    const slow = new AbortController();
    let over = false;
    const watch = setInterval(() => {
      const limit = this.speeds.deadlineMs(peer.node, length, this.chunkSize);
      const elapsed = performance.now() - began;
      if (limit !== undefined && elapsed > limit)
        afterPendingReads(() => {
          if (over) return;
          slow.abort(
            new Error(
              `chunk ${index} took over ${Math.round(elapsed)} ms, more than ${this.options.peerSlowFactor}× what the other parents need`,
            ),
          );
        });
    }, SLOW_CHECK_MS);
    try {
      await this.deps.peers.fetchChunk(peer.url, this.hex, index, into, slow.signal);
      this.speeds.record(peer.node, length, performance.now() - began, this.chunkSize);
    } finally {
      over = true;
      clearInterval(watch);
    }
  }

  /**
   * Fetches and hashes a chunk from the registry with the attached clients' credentials, the most
   * recent first; a refused credential is dropped and the next one tried.
   */
  private async fetchFromOrigin(
    index: number,
    start: number,
    end: number,
  ): Promise<{ sha256: string; chunk: Buffer }> {
    for (;;) {
      const authorization = this.credentials[0];
      let held = this.deps.buffers.take(end - start);
      try {
        await this.deps.upstream.fetchRange(
          this.request.target,
          this.request.repository,
          this.request.digest,
          start,
          held,
          authorization,
        );
        const hashed = await this.deps.hashes.hashChunk(held, true);
        held = hashed.chunk;
        return hashed;
      } catch (err) {
        this.deps.buffers.give(held);
        const status = isShoalError(err) ? err.details?.status : undefined;
        if ((status === 401 || status === 403) && this.credentials.length > 1) {
          this.credentials.shift();
          this.deps.log.debug(
            { blob: this.request.digest, index, status },
            'credential refused; trying another',
          );
          continue;
        }
        throw err;
      }
    }
  }

  private async store(
    index: number,
    chunk: Buffer,
    sha256: string,
    from: FetchedFrom,
    began: number,
    peer?: string,
  ): Promise<void> {
    const { store } = this.deps;
    // The download was admitted: its chunks are written even over cache.maxSize, and that is counted.
    if (!store.diskFull && !store.canStore(chunk.length))
      this.deps.metrics.cacheFull.inc({ action: 'overshoot' });
    let parked = false;
    try {
      await store.writeChunk(this.hex, index, chunk, sha256);
    } catch (cause) {
      // The disk is full and the store could make no room: the chunk is parked in memory and this
      // download's clients are served from there, uncached, rather than cut off mid-body. It is announced
      // like a stored chunk, so that a lease taken for it is released and peers may fetch it meanwhile.
      parked = isDiskFull(cause) && this.deps.memory.park(this.hex, index, chunk);
      if (!parked) {
        // Another local failure (permissions), or too much parked: not the peer's or the registry's fault.
        // Stop this download, and let the clients waiting on it be served by the registry directly.
        throw new ShoalError('SHOAL_ERR_CACHE', `cannot write to the cache: ${(cause as Error).message}`, {
          cause,
        });
      }
      store.markParked(this.hex, index, sha256);
      this.deps.metrics.cacheFull.inc({ action: 'uncached' });
      if (this.parked++ === 0) {
        this.deps.log.warn(
          { blob: this.request.digest, err: (cause as Error).message },
          'the cache disk is full: serving this blob without caching it',
        );
      }
    }
    const ms = performance.now() - began;
    this.chunkHashes.set(index, sha256);
    this.fetchedFrom.set(index, from);
    this.deps.metrics.fetchBytes.inc({ source: from }, chunk.length);
    this.deps.metrics.fetchDuration.observe({ source: from }, ms / 1000);
    this.deps.metrics.cacheBytes.set(this.deps.store.totalBytes);
    // Clients are waiting for this chunk: it is hot, and the memory tier serves them and the peers
    // that will ask for it soon without reading it back from disk.
    if (!parked && this.waiters.has(index)) this.deps.memory.put(this.hex, index, chunk);
    this.notify(index);
    // Hashes go to the manifest only for chunks fetched from the registry, and not while the manifest is
    // suspect: the corrected one is published after the whole blob has been verified.
    const announceHash = from === 'origin' && !this.manifestSuspect;
    this.deps.mesh.markDirty(this.request.digest, announceHash ? { [String(index)]: sha256 } : undefined);
    this.deps.events.publish({
      type: 'chunk_fetched',
      node: this.options.nodeId,
      blob: this.request.digest,
      index,
      source: from,
      ...(peer ? { peer } : {}),
      bytes: chunk.length,
      ms: Math.round(ms * 10) / 10,
    });
  }

  /** The whole blob must match its digest before it is marked complete; a mismatch discards it. */
  private async verifyWhole(): Promise<void> {
    const parked = this.deps.store.parkedChunks(this.hex) > 0;
    const sha256 = parked
      ? await this.hashWithParked()
      : await this.deps.hashes.hashFiles(this.deps.store.chunkPaths(this.hex));
    if (sha256 === this.hex) {
      // With chunks parked in memory the blob is right but not all on disk: it stays incomplete.
      if (!parked) await this.deps.store.markComplete(this.hex);
      if (this.manifestSuspect) {
        // The registry's bytes were right and the mesh's manifest was not: drop it everywhere, then
        // announce this copy with every chunk's hash so the mesh has a correct manifest again.
        this.deps.mesh.withdraw(this.request.digest, true);
        const hashes: Record<string, string> = {};
        for (const [index, hash] of this.chunkHashes) hashes[String(index)] = hash;
        this.deps.mesh.markDirty(this.request.digest, hashes);
      } else {
        this.deps.mesh.markDirty(this.request.digest);
      }
      return;
    }
    this.deps.metrics.verifyFailures.inc({ source: 'blob' });
    this.deps.events.publish({
      type: 'blob_invalid',
      node: this.options.nodeId,
      blob: this.request.digest,
      reason: `content hashes to sha256:${sha256}`,
    });
    this.deps.memory.drop(this.hex);
    await this.deps.store.remove(this.hex);
    this.deps.mesh.withdraw(this.request.digest, true);
    throw new ShoalError('SHOAL_ERR_CHUNK_CORRUPT', `blob ${this.request.digest} failed digest verification`);
  }

  /** The blob's sha256 over its chunks in order, from disk or parked in memory (some did not fit). */
  private async hashWithParked(): Promise<string> {
    const hash = createHash('sha256');
    for (let index = 0; index < this.count; index++) {
      hash.update(
        this.deps.memory.parkedChunk(this.hex, index) ?? (await this.deps.store.readChunk(this.hex, index)),
      );
    }
    return hash.digest('hex');
  }
}

function originAssignment(index: number, sha256: string | null = null): Assignment {
  return { index, sha256, source: { kind: 'origin', leaseMs: 0 }, alternates: [] };
}

function waitAssignment(index: number, retryMs: number): Assignment {
  return { index, sha256: null, source: { kind: 'wait', retryMs }, alternates: [] };
}

function reasonLabel(reason: string): string {
  if (/nats/i.test(reason)) return 'nats_unavailable';
  if (/no scheduler/i.test(reason)) return 'no_scheduler';
  if (/timeout/i.test(reason)) return 'scheduler_timeout';
  if (/waited/i.test(reason)) return 'peer_wait_timeout';
  return 'scheduler_error';
}

/** All downloads of this agent, one per blob. */
export class Transfers {
  private readonly running = new Map<string, Download>();

  constructor(
    private readonly options: TransferOptions,
    private readonly deps: TransferDeps,
  ) {}

  /** The running download of a blob, if any. */
  active(hex: string): Download | undefined {
    return this.running.get(hex);
  }

  /** Returns the running download of the blob, or starts one. */
  get(request: BlobRequest): Download {
    const hex = request.digest.slice('sha256:'.length);
    const existing = this.running.get(hex);
    if (existing && !existing.failed && existing.size === request.size) {
      existing.attach(request.authorization);
      return existing;
    }
    const download = new Download(request, this.options, this.deps);
    this.running.set(hex, download);
    this.deps.metrics.activeDownloads.set(this.running.size);
    void download.finished.finally(() => {
      if (this.running.get(hex) === download) this.running.delete(hex);
      this.deps.metrics.activeDownloads.set(this.running.size);
    });
    return download;
  }

  get size(): number {
    return this.running.size;
  }
}
