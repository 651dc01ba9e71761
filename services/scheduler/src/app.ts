/**
 * The scheduler: keeps an index of manifests, holders and nodes rebuilt from KV, and answers schedule
 * requests in the scheduler queue group. It only joins the queue group once its index is loaded, so a
 * replica that is starting never answers from a partial view; the other replicas answer meanwhile.
 */
import {
  type Assignment,
  type BucketWatch,
  decode,
  encode,
  type EventPublisher,
  isShoalError,
  type Logger,
  type MeshBuckets,
  type MeshConnection,
  countDroppedEvents,
  natsEventPublisher,
  openBuckets,
  queueGroups,
  type ScheduleReply,
  type ScheduleRequest,
  scheduleRequest,
  subjects,
  watchBucket,
} from '@shoal/mesh';
import type { KvWatchEntry } from '@nats-io/kv';
import type { Msg, Subscription } from '@nats-io/transport-node';
import type { Registry } from 'prom-client';
import type { SchedulerSettings } from './config.js';
import {
  kvGrantStore,
  LeaseView,
  readLease,
  type Grant,
  type GrantStore,
  type OriginLeases,
} from './grants.js';
import { Suspects } from './suspects.js';
import {
  applyIndexEvent,
  chunkChangeToEvent,
  clearHolders,
  clearNodes,
  createIndexState,
  indexSizes,
  nodeChangeToEvent,
  type IndexEvent,
  type IndexSizes,
  type IndexState,
  type KvChange,
  type Translation,
} from './index-state.js';
import { createSchedulerMetrics, type RequestOutcome } from './metrics.js';
import { OriginBudget, OriginShares } from './origin-budget.js';
import {
  assignmentRecords,
  blobHexOf,
  gatedZone,
  inflightLoad,
  planRequest,
  type Plan,
  type PlanOptions,
} from './planner.js';

export interface SchedulerDeps {
  mesh: MeshConnection;
  log: Logger;
  registry: Registry;
  config: SchedulerSettings;
  /** The name this replica puts in replies and events. */
  instance: string;
  /** Buckets already opened by the caller; opened on start otherwise. */
  buckets?: MeshBuckets;
  /** Defaults to publishing on the events stream. */
  events?: EventPublisher;
  /** Grant store; defaults to the `grants` KV bucket. */
  grants?: GrantStore;
  now?: () => number;
}

export interface Scheduler {
  /** Resolves once the index is loaded and the replica has joined the queue group. */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** True while the replica answers requests. */
  serving(): boolean;
  sizes(): IndexSizes;
  health(): { ok: boolean; detail: { serving: boolean; index: IndexSizes } };
}

type BucketName = 'chunks' | 'nodes';

/**
 * Chunks of one request whose leases are looked at for renewal: a node fetches a few dozen at once (its
 * download slots); a request listing more is not let turn into as many lease writes.
 */
const RENEW_PER_REQUEST = 64;

const bucketTranslators: Record<BucketName, (change: KvChange) => Translation> = {
  chunks: chunkChangeToEvent,
  nodes: nodeChangeToEvent,
};

export function createScheduler(deps: SchedulerDeps): Scheduler {
  const { mesh, log, config, instance } = deps;
  const now = deps.now ?? Date.now;
  const state: IndexState = createIndexState();
  const events = deps.events ?? natsEventPublisher(mesh, instance, countDroppedEvents(deps.registry));
  const suspects = new Suspects({
    forgetMs: Math.max(config.nodeTtl, config.originLease),
    record: (node) => state.nodes.get(node),
    onDead: (node, reporters) => {
      metrics.suspected.inc();
      log.warn(
        { node, reporters },
        'node unreachable for other nodes and missing its heartbeats: offered to nobody, its leases free',
      );
      events.publish({ type: 'node_suspected', scheduler: instance, node, reporters });
    },
  });
  const metrics = createSchedulerMetrics(
    deps.registry,
    () => indexSizes(state),
    () => suspects.count(now()),
  );
  // A parent's load is the transfers assigned to it that its children have not yet announced.
  const load = inflightLoad(config.parentExpire);
  const budget =
    config.originBudgetMax > 0
      ? new OriginBudget({
          min: Math.min(config.originBudgetMin, config.originBudgetMax),
          max: config.originBudgetMax,
          targetMs: config.originTarget,
        })
      : undefined;
  if (budget) metrics.originBudget.set(budget.limit);
  const shares = budget
    ? new OriginShares({
        start: config.originPerNode,
        budget: () => budget.limit,
        targetMs: config.originTarget,
        waitingMs: config.originTarget,
      })
    : undefined;
  const planOptions: PlanOptions = {
    ...(budget ? { originBudget: () => budget.limit } : {}),
    ...(shares
      ? {
          originShare: (node: string, live: OriginLeases, at: number) => {
            const share = shares.share(node, live, at);
            metrics.originContenders.set(shares.contenders);
            return share;
          },
        }
      : {}),
    nodeTtlMs: config.nodeTtl,
    suspected: (node) => suspects.gone(node, now()),
    retryMs: config.waitRetry,
    maxAlternates: config.alternates,
    originMaxPerRequest: config.originMaxPerRequest,
    parentSlots: config.parentSlots,
    inOrder: config.inOrder,
  };
  /** Peer assignments not yet announced by their child, by blob and child: which parent serves which chunk. */
  const serving = new Map<string, { index: number; parent: string; at: number }[]>();
  const watches = new Map<BucketName, BucketWatch>();
  const loaded = new Set<BucketName>();
  /**
   * Leases (origin and zone) this replica granted, by blob and node, so they can be released once the
   * chunk is announced: from then on the zone has a holder and the origin is no longer needed.
   */
  const issued = new Map<string, Grant[]>();
  let issuedCount = 0;
  let grants: GrantStore | undefined = deps.grants;
  let buckets: MeshBuckets | undefined = deps.buckets;
  let subscription: Subscription | undefined;
  let leaseWatch: BucketWatch | undefined;
  let stopping = false;
  const inflight = new Set<Promise<void>>();

  function applyChange(bucket: BucketName, entry: KvWatchEntry): void {
    const translation = bucketTranslators[bucket](entry);
    if ('ignored' in translation) {
      log.debug({ bucket, key: entry.key, reason: translation.ignored }, 'ignored KV entry');
      return;
    }
    if (translation.warning) {
      metrics.indexErrors.inc();
      log.warn(
        { bucket, key: entry.key, reason: translation.warning },
        'unreadable KV value taken as deleted',
      );
    }
    applyIndexEvent(state, translation.event);
    if (translation.event.type === 'node_deleted') suspects.nodeDeleted(translation.event.node, now());
    if (translation.event.type === 'node_put') suspects.heardFrom(translation.event.node.id, now());
    if (translation.event.type === 'holder_put') {
      releaseAnnounced(translation.event);
      releaseParents(translation.event);
    }
  }

  /** A child announced chunks it was fetching from parents: those parents have upload to spare again. */
  function releaseParents(event: Extract<IndexEvent, { type: 'holder_put' }>): void {
    const holder = state.holders.get(event.blobHex)?.get(event.holder.node);
    const at = now();
    settleServing(
      event.blobHex,
      event.holder.node,
      (p) => holder?.have.has(p.index) === true,
      (p) => at - p.at < config.parentExpire,
    );
  }

  /**
   * A child asking again says which chunks of the blob it is still fetching: every earlier peer assignment
   * not among them has finished or been given up, so its parent is free again now, without waiting for
   * the child's next announcement (batched, so tens of milliseconds later: a large share of a chunk's
   * transfer time, during which the parent would look busy and sit idle).
   */
  function releaseFinished(blobHex: string, child: string, fetching: readonly number[]): void {
    const still = new Set(fetching);
    settleServing(blobHex, child, (p) => !still.has(p.index));
  }

  /**
   * Frees the parents of a child's assignments for a blob that are `done`, and forgets them along with
   * those no longer worth keeping.
   */
  function settleServing(
    blobHex: string,
    child: string,
    done: (p: { index: number; at: number }) => boolean,
    keep: (p: { index: number; at: number }) => boolean = () => true,
  ): void {
    const key = `${blobHex}/${child}`;
    const pending = serving.get(key);
    if (!pending) return;
    const at = now();
    const left = pending.filter((p) => {
      if (!done(p)) return keep(p);
      load.release?.(p.parent, at);
      return false;
    });
    if (left.length) serving.set(key, left);
    else serving.delete(key);
  }

  function rememberServing(blobHex: string, child: string, assignments: Assignment[]): void {
    const key = `${blobHex}/${child}`;
    const at = now();
    const list = serving.get(key) ?? [];
    for (const a of assignments)
      if (a.source.kind === 'peer') list.push({ index: a.index, parent: a.source.node, at });
    if (list.length) serving.set(key, list);
  }

  function releaseAnnounced(event: Extract<IndexEvent, { type: 'holder_put' }>): void {
    const key = `${event.blobHex}/${event.holder.node}`;
    const mine = issued.get(key);
    if (!mine || !grants) return;
    const holder = state.holders.get(event.blobHex)?.get(event.holder.node);
    const keep: Grant[] = [];
    const at = now();
    for (const grant of mine) {
      if (holder?.have.has(grant.index)) {
        const store = grants;
        if (budget && grant.zone === undefined) {
          // From the first grant to the announcement, renewals included: how long the registry took.
          budget.arrived(at - grant.grantedAt, at);
          shares?.arrived(grant.node, at - grant.grantedAt, at);
          metrics.originBudget.set(budget.limit);
        }
        track(
          store.release(grant).catch((err: unknown) => {
            log.debug({ err, key: grant.key }, 'could not release a lease; it will expire');
          }),
        );
      } else {
        keep.push(grant);
      }
    }
    issuedCount -= mine.length - keep.length;
    if (keep.length) issued.set(key, keep);
    else issued.delete(key);
  }

  function remember(taken: Grant[]): void {
    for (const grant of taken) {
      const key = `${grant.blobHex}/${grant.node}`;
      const list = issued.get(key) ?? [];
      // A renewed lease replaces the earlier record of the same slot.
      const others = list.filter((g) => g.key !== grant.key);
      issuedCount += 1 - (list.length - others.length);
      issued.set(key, [...others, grant]);
    }
    if (issuedCount > 10_000) {
      const t = now();
      for (const [key, list] of issued) {
        const live = list.filter((g) => g.expiresAt > t);
        issuedCount -= list.length - live.length;
        if (live.length) issued.set(key, live);
        else issued.delete(key);
      }
    }
  }

  /**
   * Extends the leases (origin, and the node's zone lease) of chunks the node says it is still fetching,
   * once less than two thirds of a lease is left: a registry slower than origin.lease must not see the
   * chunk granted to a second node while the first is still receiving it. A node that stops asking (dead,
   * or done with the chunk) stops renewing, and its leases run out as before; so do leases kept for
   * MAX_RENEWED_LEASES leases. Chunks the node already announced are not renewed (a request sent just
   * before the announcement may arrive after it); at most RENEW_PER_REQUEST chunks are looked at.
   */
  async function renewFetching(
    store: GrantStore,
    blobHex: string,
    node: string,
    fetching: readonly number[],
  ): Promise<void> {
    const zone = gatedZone(planOptions, state.nodes.get(node));
    const have = state.holders.get(blobHex)?.get(node)?.have;
    const indices = [...new Set(fetching)].filter((index) => have?.has(index) !== true);
    const at = now();
    const renewals = await Promise.allSettled(
      indices
        .slice(0, RENEW_PER_REQUEST)
        .flatMap((index) => [
          store.renew(blobHex, index, node, at),
          ...(zone ? [store.renew(blobHex, index, node, at, zone)] : []),
        ]),
    );
    const renewed: Grant[] = [];
    for (const result of renewals) {
      if (result.status === 'rejected')
        log.debug({ err: result.reason as unknown, node }, 'could not renew a lease; it will expire');
      else if (result.value) renewed.push(result.value);
    }
    if (renewed.length === 0) return;
    metrics.leaseRenewals.inc(renewed.length);
    remember(renewed);
  }

  function track(promise: Promise<void>): void {
    inflight.add(promise);
    void promise.finally(() => inflight.delete(promise));
  }

  function clearBucket(bucket: BucketName): void {
    if (bucket === 'chunks') clearHolders(state);
    else clearNodes(state);
  }

  async function startWatch(bucket: BucketName): Promise<void> {
    if (!buckets) throw new Error('buckets are not open');
    loaded.delete(bucket);
    clearBucket(bucket);
    const watch = await watchBucket(buckets[bucket], (entry) => {
      try {
        applyChange(bucket, entry);
      } catch (err) {
        log.error({ err, bucket, key: entry.key }, 'failed to apply a KV change');
      }
    });
    watches.set(bucket, watch);
    void watch.ended.then(() => {
      if (stopping || watches.get(bucket) !== watch) return;
      // The connection closed under the watch. Stop answering from a view that no longer updates, and
      // rebuild it from scratch, which also picks up whatever changed in the meantime.
      log.error({ bucket }, 'KV watch ended; rebuilding the index');
      setServing(false);
      scheduleRewatch(bucket, 1_000);
    });
    await watch.initialized;
    loaded.add(bucket);
  }

  /**
   * Keeps the lease view current from a watch of the grants bucket. Only an optimisation: while the watch
   * is down the view is empty and every lease is read from the bucket, so requests are still answered.
   */
  async function watchLeases(view: LeaseView, delayMs = 1_000): Promise<void> {
    if (!buckets || stopping) return;
    view.reset();
    const watch = await watchBucket(buckets.grants, (entry) =>
      view.saw(
        entry.key,
        entry.revision,
        entry.operation === 'PUT' ? readLease(entry.key, entry.value) : undefined,
      ),
    );
    leaseWatch = watch;
    void watch.initialized.then(
      () => view.markLoaded(),
      () => undefined,
    );
    void watch.ended.then(() => {
      view.reset();
      if (stopping || leaseWatch !== watch) return;
      log.warn('lease watch ended; reading leases from the bucket until it is back');
      rewatchLeases(view, delayMs);
    });
  }

  function rewatchLeases(view: LeaseView, delayMs: number): void {
    const timer = setTimeout(() => {
      const next = Math.min(delayMs * 2, 30_000);
      watchLeases(view, next).catch((err: unknown) => {
        log.error({ err }, 'could not restart the lease watch');
        rewatchLeases(view, next);
      });
    }, delayMs);
    timer.unref();
  }

  function scheduleRewatch(bucket: BucketName, delayMs: number): void {
    const timer = setTimeout(() => {
      if (stopping) return;
      startWatch(bucket).then(
        () => {
          if (loaded.size === 2) setServing(true);
        },
        (err: unknown) => {
          log.error({ err, bucket }, 'could not restart the KV watch');
          scheduleRewatch(bucket, Math.min(delayMs * 2, 30_000));
        },
      );
    }, delayMs);
    timer.unref();
  }

  function setServing(on: boolean): void {
    if (on && !subscription && !stopping) {
      const nc = mesh.connection();
      if (!nc) {
        // Subscribing needs a connection; the next reconnect listener or watch restart tries again.
        log.warn('not connected; will join the scheduler queue group on reconnect');
        return;
      }
      subscription = nc.subscribe(subjects.schedule, {
        queue: queueGroups.scheduler,
        callback: (err, msg) => {
          if (err) {
            log.error({ err }, 'schedule subscription error');
            return;
          }
          track(handle(msg));
        },
      });
      log.info({ index: indexSizes(state) }, 'index loaded; answering schedule requests');
    } else if (!on && subscription) {
      subscription.unsubscribe();
      subscription = undefined;
    }
  }

  async function handle(msg: Msg): Promise<void> {
    const started = performance.now();
    let reply: ScheduleReply;
    let outcome: RequestOutcome;
    /** The decision, recorded once the reply is on its way so that recording it never delays the node. */
    let decided: { request: ScheduleRequest; plan: Plan } | undefined;
    try {
      const request = decode(scheduleRequest, msg.data, 'schedule request');
      if (!grants) throw new Error('grant store is not ready');
      if (request.fetching) {
        releaseFinished(blobHexOf(request.blob), request.node, request.fetching);
        if (request.fetching.length > 0)
          track(renewFetching(grants, blobHexOf(request.blob), request.node, request.fetching));
      }
      suspects.heardFrom(request.node, now());
      if (request.unreachable?.length)
        suspects.report(request.node, request.unreachable, request.avoid, now());
      const plan = await planRequest(state, request, grants, load, planOptions, now());
      if (budget) metrics.originLeases.set(grants.liveOrigin(now())?.total ?? 0);
      // Only a turn of its own counts: a chunk queued behind another node's lease needs no share.
      const waitedForShare = plan.explanations.some(
        (e) => e.source === 'wait' && (e.reason === 'origin_budget' || e.reason === 'origin_share'),
      );
      if (shares && waitedForShare) shares.waited(request.node, now());
      remember(plan.grants);
      rememberServing(blobHexOf(request.blob), request.node, plan.assignments);
      if (plan.grantErrors.length) {
        metrics.grantErrors.inc(plan.grantErrors.length);
        log.warn(
          { err: plan.grantErrors[0], count: plan.grantErrors.length },
          'origin leases unavailable; chunks told to wait',
        );
      }
      reply = { ok: true, chunkSize: plan.chunkSize, assignments: plan.assignments, scheduler: instance };
      outcome = 'ok';
      metrics.assignments.inc({ kind: 'peer' }, plan.counts.peer);
      metrics.assignments.inc({ kind: 'origin' }, plan.counts.origin);
      metrics.assignments.inc({ kind: 'wait' }, plan.counts.wait);
      metrics.crossZone.inc(plan.crossZone);
      events.publish({
        type: 'schedule_decided',
        scheduler: instance,
        node: request.node,
        blob: request.blob,
        peer: plan.counts.peer,
        originGrants: plan.counts.origin,
        wait: plan.counts.wait,
        ms: Math.round((performance.now() - started) * 1000) / 1000,
      });
      decided = { request, plan };
    } catch (err) {
      if (isShoalError(err, 'SHOAL_ERR_BAD_MESSAGE')) {
        outcome = 'bad_request';
        reply = { ok: false, error: { code: err.code, message: err.message } };
        log.debug({ err: err.message }, 'bad schedule request');
      } else {
        outcome = 'error';
        reply = {
          ok: false,
          error: { code: 'SHOAL_ERR_INTERNAL', message: 'the scheduler failed to plan this request' },
        };
        log.error({ err }, 'schedule request failed');
      }
    }
    metrics.requests.inc({ outcome });
    metrics.decisionSeconds.observe((performance.now() - started) / 1000);
    if (msg.reply) {
      try {
        msg.respond(encode(reply));
      } catch (err) {
        log.warn({ err }, 'could not send a schedule reply');
      }
    }
    if (decided) publishAssigned(decided.request, decided.plan);
  }

  /** Why each chunk of a decision went where it did; a request for the layout alone assigns nothing. */
  function publishAssigned(request: ScheduleRequest, plan: Plan): void {
    if (plan.assignments.length === 0) return;
    const avoid = request.avoid.slice(0, 8);
    events.publish({
      type: 'chunks_assigned',
      scheduler: instance,
      node: request.node,
      blob: request.blob,
      size: request.size,
      chunkSize: plan.chunkSize,
      ...assignmentRecords(plan),
      ...(avoid.length ? { avoid } : {}),
    });
  }

  return {
    async start() {
      const nc = await mesh.ready();
      buckets ??= await openBuckets(nc);
      if (!grants) {
        const leaseView = new LeaseView(config.originLease, now);
        grants = kvGrantStore(
          buckets.grants,
          {
            perChunk: config.originPerChunk,
            perZone: config.originPerZone,
            leaseMs: config.originLease,
            gone: (node) => suspects.gone(node, now()),
          },
          leaseView,
        );
        await watchLeases(leaseView);
      }
      await Promise.all([startWatch('chunks'), startWatch('nodes')]);
      setServing(true);
      // The queue subscription is registered asynchronously; once the server has answered a ping it is in
      // place, so that a started replica really receives requests.
      await nc.flush();
      mesh.onConnect(() => {
        if (loaded.size === 2) setServing(true);
      });
    },
    async stop() {
      stopping = true;
      // Draining lets requests already delivered to this replica be answered instead of timing out.
      const draining = subscription;
      subscription = undefined;
      if (draining) await draining.drain().catch(() => undefined);
      const all = [...watches.values(), ...(leaseWatch ? [leaseWatch] : [])];
      for (const watch of all) watch.stop();
      await Promise.all(all.map((w) => w.ended));
      await Promise.allSettled([...inflight]);
    },
    serving: () => subscription !== undefined,
    sizes: () => indexSizes(state),
    health() {
      const serving = subscription !== undefined;
      return { ok: serving, detail: { serving, index: indexSizes(state) } };
    },
  };
}
