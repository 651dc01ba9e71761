/**
 * Discovery (local mode): keeps the node registry from agents' own heartbeats, and publishes the
 * configured registry endpoints with their health. Several instances may run: heartbeats are shared out
 * by a queue group, and every write that decides an event (a join, a removal) is compare-and-set, so
 * exactly one instance records each join and each removal.
 */
import {
  type BucketWatch,
  decode,
  encode,
  type EndpointRecord,
  type EventPublisher,
  isCasConflict,
  leaveMessage,
  type Logger,
  type MeshBuckets,
  type MeshConnection,
  countDroppedEvents,
  natsEventPublisher,
  nodeIdOf,
  nodeRecord,
  type NodeRecord,
  openBuckets,
  queueGroups,
  subjects,
  watchBucket,
} from '@shoal/mesh';
import type { KvWatchEntry } from '@nats-io/kv';
import type { Msg, Subscription } from '@nats-io/transport-node';
import type { Registry } from 'prom-client';
import type { DiscoverySettings } from './config.js';
import { createEndpointPublisher, type EndpointProvider } from './endpoint-publisher.js';
import { staticTargets } from './endpoints.js';
import type { KubeTopology, NodeTopology } from './kubernetes.js';
import { createTopologyPublisher } from './topology-publisher.js';
import { createDiscoveryMetrics } from './metrics.js';

export interface DiscoveryDeps {
  mesh: MeshConnection;
  log: Logger;
  registry: Registry;
  config: DiscoverySettings;
  /** The name this instance uses in events. */
  instance: string;
  /** Buckets already opened by the caller; opened on start otherwise. */
  buckets?: MeshBuckets;
  /** Defaults to publishing on the events stream. */
  events?: EventPublisher;
  /** Sources of registry endpoints beyond the configured ones (a registry instance's API). */
  providers?: EndpointProvider[];
  /**
   * Node topology from Kubernetes: given the change listener, the source to start. Without it, nodes'
   * zone, vSwitch and pool are what their agents report.
   */
  topology?: (onChange: (name: string, topology: NodeTopology | undefined) => void) => KubeTopology;
  now?: () => number;
}

export interface Discovery {
  /** Resolves once the node registry is loaded and heartbeats are being received. */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Live nodes as this instance knows them (from the nodes bucket). */
  nodes(): ReadonlyMap<string, NodeRecord>;
  /** Removes nodes whose heartbeat is older than node.ttl; resolves to how many this instance removed. */
  sweep(): Promise<number>;
  /** Health-checks every configured registry now and publishes the results. */
  checkEndpoints(): Promise<EndpointRecord[]>;
  health(): {
    ok: boolean;
    detail: { nodes: number; endpoints: Record<string, boolean>; kubernetes?: boolean };
  };
}

interface Known {
  /** The current record, or undefined when the last entry was a deletion. */
  record: NodeRecord | undefined;
  revision: number;
}

const heartbeatPrefix = subjects.heartbeatAll.slice(0, -1);
const leavePrefix = subjects.leaveAll.slice(0, -1);

export function createDiscovery(deps: DiscoveryDeps): Discovery {
  const { mesh, log, config, instance } = deps;
  const now = deps.now ?? Date.now;
  const events = deps.events ?? natsEventPublisher(mesh, instance, countDroppedEvents(deps.registry));
  /** Every key of the nodes bucket seen, deleted ones included: their revision is what a re-join must expect. */
  const known = new Map<string, Known>();
  const liveNodes = new Map<string, NodeRecord>();
  const metrics = createDiscoveryMetrics(deps.registry, () => liveNodes.size);
  const endpoints = createEndpointPublisher({
    kv: () => buckets?.endpoints,
    static: staticTargets(config.registries, config.mirrors),
    providers: deps.providers ?? [],
    intervalMs: config.endpointsInterval,
    timeoutMs: config.endpointsTimeout,
    events,
    metrics,
    log,
    now,
  });
  const subscriptions: Subscription[] = [];
  const inflight = new Set<Promise<unknown>>();
  const timers: NodeJS.Timeout[] = [];
  let buckets: MeshBuckets | undefined = deps.buckets;
  let watch: BucketWatch | undefined;
  let sweeping: Promise<number> | undefined;
  let started = false;
  /** Kubernetes nodes by mesh node ID, as the topology source last reported them. */
  const topologyById = new Map<string, NodeTopology>();
  const topologyPublisher = createTopologyPublisher({ kv: () => buckets?.topology, events, log, now });
  const excludedLogged = new Set<string>();
  const kube = deps.topology?.((name, topology) => {
    const id = nodeIdOf(name);
    if (topology) topologyById.set(id, topology);
    else topologyById.delete(id);
    track(topologyPublisher.publish(name, topology));
    if (started) track(applyTopology(id, topology));
  });

  function remember(id: string, record: NodeRecord | undefined, revision: number): void {
    const current = known.get(id);
    // Our own writes are remembered at once; the watch delivers them again later, and an older entry
    // arriving after a newer one must not roll the view back.
    if (current && current.revision >= revision) return;
    known.set(id, { record, revision });
    if (record) liveNodes.set(id, record);
    else liveNodes.delete(id);
  }

  /** Marks a node removed by this instance at once, before the watch reports the deletion. */
  function forget(id: string): void {
    known.set(id, { record: undefined, revision: known.get(id)?.revision ?? 0 });
    liveNodes.delete(id);
  }

  function onEntry(entry: KvWatchEntry): void {
    if (entry.operation !== 'PUT') {
      remember(entry.key, undefined, entry.revision);
      return;
    }
    try {
      remember(entry.key, decode(nodeRecord, entry.value, `node ${entry.key}`), entry.revision);
    } catch (err) {
      // An unreadable record is no live node; the next heartbeat of that node overwrites it.
      log.warn({ err, key: entry.key }, 'unreadable node record');
      remember(entry.key, undefined, entry.revision);
    }
  }

  function track<T>(promise: Promise<T>): void {
    inflight.add(promise);
    void promise.finally(() => inflight.delete(promise));
  }

  async function onHeartbeat(msg: Msg): Promise<void> {
    if (!buckets) return;
    let record: NodeRecord;
    try {
      record = decode(nodeRecord, msg.data, 'heartbeat');
      const fromSubject = msg.subject.slice(heartbeatPrefix.length);
      if (fromSubject !== record.id) throw new Error(`heartbeat on ${msg.subject} names node ${record.id}`);
    } catch (err) {
      metrics.heartbeats.inc({ outcome: 'rejected' });
      log.warn(
        { subject: msg.subject, err: err instanceof Error ? err.message : String(err) },
        'heartbeat rejected',
      );
      return;
    }
    const placed = topologyById.get(record.id);
    if (placed && !placed.inMesh) {
      metrics.heartbeats.inc({ outcome: 'excluded' });
      if (!excludedLogged.has(record.id)) {
        excludedLogged.add(record.id);
        log.warn({ node: record.id, reason: placed.reason }, 'heartbeat refused: node is not in the mesh');
      }
      return;
    }
    excludedLogged.delete(record.id);
    if (placed) {
      // Kubernetes' labels are the truth about where a node stands; an agent's flags may be stale.
      record = {
        ...record,
        zone: placed.zone || record.zone,
        vswitch: placed.vswitch || record.vswitch,
        pool: placed.pool || record.pool,
      };
    }
    // The receipt time, on one clock for all nodes, is what liveness is judged by; an agent's clock is not.
    const stamped: NodeRecord = { ...record, seenAt: now() };
    const value = encode(stamped);
    const kv = buckets.nodes;
    try {
      const current = known.get(record.id);
      if (!current?.record) {
        // Only the instance whose write creates the record announces the join. The expected revision
        // may be out of date (a deletion not yet seen); then the key is read again to decide.
        let expected = current?.revision ?? 0;
        for (let attempt = 0; attempt < 3; attempt++) {
          try {
            const revision = await kv.put(record.id, value, { previousSeq: expected });
            remember(record.id, stamped, revision);
            metrics.joins.inc();
            events.publish({
              type: 'node_joined',
              node: record.id,
              zone: record.zone,
              vswitch: record.vswitch,
              url: record.url,
            });
            log.info(
              { node: record.id, zone: record.zone, vswitch: record.vswitch, url: record.url },
              'node joined',
            );
            metrics.heartbeats.inc({ outcome: 'accepted' });
            return;
          } catch (err) {
            if (!isCasConflict(err)) throw err;
          }
          const entry = await kv.get(record.id);
          if (entry?.operation === 'PUT') break;
          expected = entry?.revision ?? 0;
        }
      }
      remember(record.id, stamped, await kv.put(record.id, value));
      metrics.heartbeats.inc({ outcome: 'accepted' });
    } catch (err) {
      metrics.heartbeats.inc({ outcome: 'error' });
      log.warn({ err, node: record.id }, 'could not record a heartbeat');
    }
  }

  async function onLeave(msg: Msg): Promise<void> {
    if (!buckets) return;
    let leave;
    try {
      leave = decode(leaveMessage, msg.data, 'leave');
      const fromSubject = msg.subject.slice(leavePrefix.length);
      if (fromSubject !== leave.node) throw new Error(`leave on ${msg.subject} names node ${leave.node}`);
    } catch (err) {
      log.warn(
        { subject: msg.subject, err: err instanceof Error ? err.message : String(err) },
        'leave message rejected',
      );
      return;
    }
    const current = known.get(leave.node);
    try {
      await buckets.nodes.delete(leave.node);
    } catch (err) {
      // The node will still be removed when its heartbeat times out.
      log.warn({ err, node: leave.node }, 'could not remove a leaving node');
      return;
    }
    forget(leave.node);
    if (current?.record) {
      metrics.leaves.inc({ reason: 'left' });
      events.publish({ type: 'node_left', node: leave.node, reason: 'left' });
      log.info({ node: leave.node }, 'node left');
    }
  }

  /** Brings a live node's record in line with a change of its Kubernetes node. */
  async function applyTopology(id: string, topology: NodeTopology | undefined): Promise<void> {
    const current = known.get(id);
    if (!buckets || !current?.record) return;
    const { record, revision } = current;
    if (!topology || !topology.inMesh) {
      const reason = topology ? (topology.reason ?? 'not in the mesh') : 'node removed from the cluster';
      try {
        await buckets.nodes.delete(id, { previousSeq: revision });
      } catch (err) {
        if (!isCasConflict(err)) log.warn({ err, node: id }, 'could not remove a node');
        return;
      }
      forget(id);
      metrics.leaves.inc({ reason: topology ? 'excluded' : 'deleted' });
      events.publish({ type: 'node_left', node: id, reason });
      log.info({ node: id, reason }, 'node left');
      return;
    }
    const placed = {
      zone: topology.zone || record.zone,
      vswitch: topology.vswitch || record.vswitch,
      pool: topology.pool || record.pool,
    };
    if (placed.zone === record.zone && placed.vswitch === record.vswitch && placed.pool === record.pool)
      return;
    const updated = { ...record, ...placed };
    try {
      remember(id, updated, await buckets.nodes.put(id, encode(updated), { previousSeq: revision }));
    } catch (err) {
      // A heartbeat written meanwhile already carries the new placement.
      if (!isCasConflict(err)) log.warn({ err, node: id }, 'could not move a node');
    }
  }

  /**
   * Publishes every node's topology again (unchanged records are not rewritten) and brings live nodes in
   * line with it: a write lost to a NATS outage, or a node deleted while no replica ran, is made good.
   */
  async function resyncTopology(): Promise<void> {
    const pruned = await topologyPublisher.prune(new Set(topologyById.keys()));
    if (pruned) log.info({ pruned }, 'removed topology of nodes no longer in the cluster');
    await Promise.all(
      [...topologyById].map(([id, topology]) =>
        topologyPublisher.publish(topology.name, topology).then(() => applyTopology(id, topology)),
      ),
    );
  }

  async function sweepOnce(): Promise<number> {
    if (!buckets) return 0;
    const cutoff = now() - config.nodeTtl;
    let removed = 0;
    for (const [id, { record, revision }] of [...known]) {
      if (!record || record.seenAt >= cutoff) continue;
      try {
        // At the revision we judged: a heartbeat written since (by any instance) makes this fail, as it should.
        await buckets.nodes.delete(id, { previousSeq: revision });
      } catch (err) {
        if (!isCasConflict(err)) log.warn({ err, node: id }, 'could not remove a silent node');
        continue;
      }
      forget(id);
      removed++;
      metrics.leaves.inc({ reason: 'timeout' });
      events.publish({ type: 'node_left', node: id, reason: 'heartbeat timeout' });
      log.info({ node: id, seenAt: record.seenAt }, 'node timed out');
    }
    return removed;
  }

  /** Runs at most one sweep at a time; a caller during one gets that one's result. */
  const sweep = () => (sweeping ??= sweepOnce().finally(() => (sweeping = undefined)));

  function every(ms: number, run: () => Promise<unknown>, what: string): void {
    const timer = setInterval(() => {
      track(run().catch((err: unknown) => log.error({ err }, `${what} failed`)));
    }, ms);
    timer.unref();
    timers.push(timer);
  }

  return {
    async start() {
      const nc = await mesh.ready();
      buckets ??= await openBuckets(nc);
      // The registry is loaded before heartbeats are taken, so that a known node is not announced as new.
      watch = await watchBucket(buckets.nodes, onEntry);
      await watch.initialized;
      // So is the topology, so that the first heartbeat of a node is already placed by its labels.
      if (kube) {
        await kube.start();
        await resyncTopology();
        every(config.kubeResync, resyncTopology, 'topology resync');
        // Writes lost while NATS was away are made good as soon as it is back.
        mesh.onConnect(() => {
          if (started) track(resyncTopology());
        });
      }
      subscriptions.push(
        nc.subscribe(subjects.heartbeatAll, {
          queue: queueGroups.discovery,
          callback: (err, msg) => {
            if (err) log.error({ err }, 'heartbeat subscription error');
            else track(onHeartbeat(msg));
          },
        }),
        nc.subscribe(subjects.leaveAll, {
          queue: queueGroups.discovery,
          callback: (err, msg) => {
            if (err) log.error({ err }, 'leave subscription error');
            else track(onLeave(msg));
          },
        }),
      );
      // Subscriptions are registered asynchronously; once the server has answered a ping they are in place,
      // so that "started" really means "receiving heartbeats".
      await nc.flush();
      every(Math.max(100, Math.floor(config.nodeTtl / 3)), sweep, 'node sweep');
      await endpoints.start();
      started = true;
      log.info({ nodes: liveNodes.size, registries: Object.keys(endpoints.health()) }, 'discovery started');
    },
    async stop() {
      started = false;
      for (const timer of timers.splice(0)) clearInterval(timer);
      await endpoints.stop();
      await kube?.stop();
      await Promise.all(subscriptions.splice(0).map((s) => s.drain().catch(() => undefined)));
      watch?.stop();
      await watch?.ended;
      await Promise.allSettled([...inflight]);
    },
    nodes: () => liveNodes,
    sweep,
    checkEndpoints: () => endpoints.check(),
    health() {
      const ok = started && mesh.connection() !== undefined;
      return {
        ok,
        detail: {
          nodes: liveNodes.size,
          endpoints: endpoints.health(),
          ...(kube ? { kubernetes: kube.connected() } : {}),
        },
      };
    },
  };
}
