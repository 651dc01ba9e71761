/**
 * The announcer: applies agents' announcements to the chunk index in KV. Every replica pulls from one
 * durable consumer, so each announcement is applied by one replica; it is acknowledged only after it has
 * been applied, handed back with a delay on a transient KV error, and terminated if it can never apply.
 */
import {
  announcement as announcementSchema,
  consumers,
  decode,
  countDroppedEvents,
  natsEventPublisher,
  openBuckets,
  streams,
  subjects,
  type Announcement,
  type EventPublisher,
  type Logger,
  type MeshBuckets,
  type MeshConnection,
} from '@shoal/mesh';
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  type ConsumerMessages,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Registry } from 'prom-client';
import { createApplier, TOMBSTONE_BUCKET, type Applier } from './apply.js';
import type { AnnouncerSettings } from './config.js';
import { createAnnouncerMetrics, type AnnouncementType } from './metrics.js';

export interface AnnouncerDeps {
  mesh: MeshConnection;
  log: Logger;
  registry: Registry;
  config: AnnouncerSettings;
  /** The name this replica uses in events. */
  instance: string;
  /** Buckets already opened by the caller; opened on start otherwise. */
  buckets?: MeshBuckets;
  /** Defaults to publishing on the events stream. */
  events?: EventPublisher;
  now?: () => number;
}

export interface Announcer {
  start(): Promise<void>;
  /** Stops pulling, finishes what was already delivered, and returns. */
  stop(): Promise<void>;
  health(): { ok: boolean; detail: { consuming: boolean; inflight: number } };
}

const nanos = (ms: number) => ms * 1_000_000;
const announcePrefix = subjects.announceAll.slice(0, -1);

/** The shared durable consumer; created if missing, its timing updated if the configuration changed. */
export async function ensureAnnouncerConsumer(
  jsm: JetStreamManager,
  settings: Pick<AnnouncerSettings, 'ackWait' | 'batch' | 'concurrency'>,
): Promise<void> {
  const wanted = {
    durable_name: consumers.announcer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(settings.ackWait),
    max_ack_pending: Math.max(1_000, settings.batch * 4),
  };
  try {
    const info = await jsm.consumers.info(streams.announce, consumers.announcer);
    if (info.config.ack_wait !== wanted.ack_wait || info.config.max_ack_pending !== wanted.max_ack_pending) {
      await jsm.consumers.update(streams.announce, consumers.announcer, {
        ack_wait: wanted.ack_wait,
        max_ack_pending: wanted.max_ack_pending,
      });
    }
  } catch (err) {
    if (!/not found/i.test(err instanceof Error ? err.message : String(err))) throw err;
    await jsm.consumers.add(streams.announce, wanted);
  }
}

/** Opens the tombstone bucket; its TTL is kept equal to the configured one. */
export async function openTombstones(nc: NatsConnection, ttlMs: number): Promise<KV> {
  const kv = await new Kvm(nc).create(TOMBSTONE_BUCKET, { history: 1, ttl: ttlMs });
  const jsm = await jetstreamManager(nc);
  const stream = `KV_${TOMBSTONE_BUCKET}`;
  const info = await jsm.streams.info(stream);
  if (info.config.max_age !== nanos(ttlMs))
    await jsm.streams.update(stream, { ...info.config, max_age: nanos(ttlMs) });
  return kv;
}

export function createAnnouncer(deps: AnnouncerDeps): Announcer {
  const { mesh, log, config, instance } = deps;
  const metrics = createAnnouncerMetrics(deps.registry);
  const events = deps.events ?? natsEventPublisher(mesh, instance, countDroppedEvents(deps.registry));
  const inflight = new Set<Promise<void>>();
  /** The tail of each node's queue: one node's announcements are applied in order, nodes in parallel. */
  const tails = new Map<string, Promise<void>>();
  let applier: Applier | undefined;
  let messages: ConsumerMessages | undefined;
  let loop: Promise<void> | undefined;
  let slotsFree = config.concurrency;
  const slotWaiters: (() => void)[] = [];
  /**
   * Announcements handed to this replica and not yet settled, each told "still working" every third of
   * consumer.ackWait: the stream redelivers only what a replica that died held, and does so soon.
   */
  const held = new Set<JsMsg>();
  let heartbeat: NodeJS.Timeout | undefined;

  async function acquireSlot(): Promise<void> {
    if (slotsFree > 0) {
      slotsFree--;
      return;
    }
    await new Promise<void>((resolve) => slotWaiters.push(resolve));
  }

  function releaseSlot(): void {
    const next = slotWaiters.shift();
    if (next) next();
    else slotsFree++;
  }

  function reject(m: JsMsg, type: AnnouncementType, reason: string, message: string): void {
    metrics.rejected.inc({ type, reason });
    log.warn({ subject: m.subject, reason, message }, 'announcement rejected');
    // No reason is passed to term(): servers before 2.10.4 do not recognise "+TERM <reason>" and would
    // leave the message unacknowledged. The reason is in the log and the metric instead.
    m.term();
  }

  async function handle(m: JsMsg): Promise<void> {
    let parsed: Announcement;
    try {
      parsed = decode(announcementSchema, m.data, 'announcement');
    } catch (err) {
      reject(m, 'unknown', 'invalid', err instanceof Error ? err.message : String(err));
      return;
    }
    const type = parsed.type;
    // The subject is the sender's identity as far as NATS permissions go; a payload naming another node is refused.
    if (m.subject.slice(announcePrefix.length) !== parsed.node) {
      reject(m, type, 'node_mismatch', `subject ${m.subject} does not match node ${parsed.node}`);
      return;
    }
    if (!applier) throw new Error('announcer is not started');
    const started = performance.now();
    try {
      const outcome = await applier.apply(parsed, { publishedAt: m.time.getTime() });
      metrics.applySeconds.observe({ type }, (performance.now() - started) / 1000);
      switch (outcome.status) {
        case 'applied':
          metrics.applied.inc({ type });
          metrics.conflicts.inc(outcome.conflicts.length);
          m.ack();
          return;
        case 'stale':
          metrics.stale.inc({ type });
          log.debug(
            { node: parsed.node, blob: parsed.blob, reason: outcome.reason },
            'stale announcement ignored',
          );
          m.ack();
          return;
        case 'rejected':
          reject(m, type, outcome.reason, outcome.message);
          return;
        default: {
          const unreachable: never = outcome;
          throw new TypeError(`unknown outcome ${JSON.stringify(unreachable)}`);
        }
      }
    } catch (err) {
      metrics.retried.inc({ type });
      log.warn(
        { err, node: parsed.node, blob: parsed.blob },
        'announcement failed; it will be delivered again',
      );
      m.nak(config.retryDelay);
    }
  }

  function dispatch(m: JsMsg): Promise<void> {
    const key = m.subject;
    const previous = tails.get(key) ?? Promise.resolve();
    const run = previous
      .then(() => handle(m))
      .catch((err: unknown) => {
        // handle() settles every message itself; this only guards against a bug leaving one unacknowledged.
        log.error({ err, subject: m.subject }, 'announcement handler failed');
        m.nak(config.retryDelay);
      });
    tails.set(key, run);
    void run.finally(() => {
      if (tails.get(key) === run) tails.delete(key);
    });
    return run;
  }

  return {
    async start() {
      const nc = await mesh.ready();
      const buckets = deps.buckets ?? (await openBuckets(nc));
      const tombstones = await openTombstones(nc, config.tombstoneTtl);
      applier = createApplier({
        chunks: buckets.chunks,
        tombstones,
        events,
        log,
        casAttempts: config.casAttempts,
        ...(deps.now ? { now: deps.now } : {}),
      });
      await ensureAnnouncerConsumer(await jetstreamManager(nc), config);
      const consumer = await jetstream(nc).consumers.get(streams.announce, consumers.announcer);
      const consumed = await consumer.consume({ max_messages: config.batch });
      messages = consumed;
      heartbeat = setInterval(
        () => {
          for (const m of held) {
            try {
              m.working();
            } catch {
              // The connection is gone: the stream delivers the announcement again, here or elsewhere.
            }
          }
        },
        Math.max(100, config.ackWait / 3),
      ).unref();
      loop = (async () => {
        for await (const m of consumed) {
          held.add(m);
          await acquireSlot();
          const run = dispatch(m).finally(() => {
            held.delete(m);
            releaseSlot();
          });
          inflight.add(run);
          void run.finally(() => inflight.delete(run));
        }
      })().catch((err: unknown) => {
        log.error({ err }, 'announcement consumer stopped');
      });
      log.info({ consumer: consumers.announcer }, 'consuming announcements');
    },
    async stop() {
      // close() lets the iterator hand out what was already delivered before it ends, so those
      // announcements are applied and acknowledged rather than left to time out.
      await messages?.close();
      await loop;
      await Promise.allSettled([...inflight]);
      clearInterval(heartbeat);
      heartbeat = undefined;
      messages = undefined;
    },
    health() {
      const consuming = messages !== undefined && mesh.connection() !== undefined;
      return { ok: consuming, detail: { consuming, inflight: inflight.size } };
    },
  };
}
