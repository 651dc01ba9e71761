/**
 * Node topology from the Kubernetes API: each node's zone, region, vSwitch and node pool from its labels,
 * whether the Shoal agent runs on it and, when it does not, why, in a sentence an operator can act on.
 *
 * Two informers (nodes, and the agent pods) keep the view current. The client library's ListWatch
 * re-lists by itself after a 410 Gone (an expired resourceVersion, as an ERROR event or as the HTTP
 * status) and then reports deletes for objects that vanished meanwhile, and it re-watches at once when a
 * watch ends cleanly; on any other failure (a dropped connection, an error status, a failed list) it
 * reports 'error' and stops, so each informer here is restarted after a doubling backoff.
 */
import { isDeepStrictEqual } from 'node:util';
import {
  ApiException,
  type ConfigurationOptions,
  CoreV1Api,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  ListWatch,
  Observable,
  type ObservableMiddleware,
  type V1Node,
  type V1NodeCondition,
  type V1Pod,
  type V1PodCondition,
  type V1Taint,
  type V1Toleration,
  Watch,
} from '@kubernetes/client-node';
import { type Logger, ShoalError } from '@shoal/mesh';

export interface KubeTopologyOptions {
  kubeConfig: KubeConfig;
  /** Node label holding the zone; default 'topology.kubernetes.io/zone'. */
  zoneLabel: string;
  /** Node label holding the region; default 'topology.kubernetes.io/region'. */
  regionLabel: string;
  /** Node label holding the vSwitch (configurable). */
  vswitchLabel: string;
  /** Node label holding the node pool (configurable, e.g. 'alibabacloud.com/nodepool-id'). */
  poolLabel: string;
  /** When non-empty, only nodes of this pool are in the mesh. */
  pool: string;
  /** Namespace of the agent pods ('' = all namespaces). */
  agentNamespace: string;
  /** Label selector of the agent pods, e.g. 'app.kubernetes.io/name=shoal,app.kubernetes.io/component=agent'. */
  agentSelector: string;
  log: Logger;
  /** Called (synchronously, after the internal state changed) whenever a node's topology changes or a node goes away (undefined). */
  onChange?: (name: string, topology: NodeTopology | undefined) => void;
  /** First delay before restarting a failed informer; doubles up to maxBackoffMs. Defaults 500 / 30000. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /**
   * How long start() keeps retrying failures that may pass (an unreachable API, a 5xx) before it
   * rejects; 401 and 403 reject at once. Default 30000.
   */
  startTimeoutMs?: number;
  /** Deadline of one list request. Default 30000. */
  requestTimeoutMs?: number;
  /**
   * How long the API server keeps one watch open before it ends it and the watch is re-established from
   * the last resourceVersion, so that no connection lives long enough to go stale unnoticed behind a
   * load balancer. Default: between 300 and 600 seconds, spread as client-go spreads it.
   */
  watchTimeoutSeconds?: number;
  now?: () => number;
}

/** Default node labels of the topology, as Kubernetes and the cloud providers set them. */
export const defaultTopologyLabels = {
  zoneLabel: 'topology.kubernetes.io/zone',
  regionLabel: 'topology.kubernetes.io/region',
} as const;

export type AgentState = 'running' | 'starting' | 'crashloop' | 'failed' | 'missing';

export interface NodeTopology {
  name: string;
  /** '' when the label is absent (as are region, vswitch and pool). */
  zone: string;
  region: string;
  vswitch: string;
  pool: string;
  /** Node condition Ready == True. */
  ready: boolean;
  /** Whether the node belongs to the mesh (passes the node-pool filter). */
  inMesh: boolean;
  agent: { state: AgentState; pod?: string; restarts: number; ready: boolean };
  /**
   * Why the node has no working agent in the mesh, in a sentence an operator can act on; absent when the
   * agent runs and the node is in the mesh.
   */
  reason?: string;
}

export interface KubeTopology {
  /**
   * Resolves after the first list of both nodes and pods has been applied. Rejects with a clear Error if
   * the API cannot be reached or refuses (401/403: the message says which permission is missing).
   */
  start(): Promise<void>;
  stop(): Promise<void>;
  nodes(): ReadonlyMap<string, NodeTopology>;
  /** Whether both watches are currently connected. */
  connected(): boolean;
}

type TopologyLabels = Pick<
  KubeTopologyOptions,
  'zoneLabel' | 'regionLabel' | 'vswitchLabel' | 'poolLabel' | 'pool'
>;

/**
 * One node's topology from its Node object and the agent pods on it. `tolerations` are those of the
 * agent pods (any one of them: a DaemonSet's pods share its template), or undefined when there is no
 * agent pod in the cluster to take them from.
 */
export function nodeTopology(
  node: V1Node,
  pods: V1Pod[],
  options: TopologyLabels,
  tolerations: V1Toleration[] | undefined,
): NodeTopology {
  const labels = node.metadata?.labels ?? {};
  const label = (key: string): string => (key === '' ? '' : (labels[key] ?? ''));
  const pool = label(options.poolLabel);
  const readyCondition = condition(node.status?.conditions, 'Ready');
  const ready = readyCondition?.status === 'True';
  const inMesh = options.pool === '' || pool === options.pool;
  const pod = agentPodOf(pods);
  const health: AgentHealth = pod
    ? podHealth(pod)
    : {
        agent: { state: 'missing', restarts: 0, ready: false },
        reason: missingReason(node, readyCondition, tolerations),
      };
  let reason = health.reason;
  if (!inMesh) {
    reason =
      pool === ''
        ? `has no node pool label "${options.poolLabel}" (mesh restricted to pool "${options.pool}")`
        : `not in node pool "${pool}" (mesh restricted to pool "${options.pool}")`;
  }
  const topology: NodeTopology = {
    name: node.metadata?.name ?? '',
    zone: label(options.zoneLabel),
    region: label(options.regionLabel),
    vswitch: label(options.vswitchLabel),
    pool,
    ready,
    inMesh,
    agent: health.agent,
  };
  if (reason !== undefined) topology.reason = reason;
  return topology;
}

interface AgentHealth {
  agent: NodeTopology['agent'];
  reason: string | undefined;
}

/** The pod that speaks for the agent on a node: during a rollout, the newest one not being deleted. */
function agentPodOf(pods: readonly V1Pod[]): V1Pod | undefined {
  let best: V1Pod | undefined;
  for (const pod of pods) {
    if (best === undefined) best = pod;
    else {
      const deleting = pod.metadata?.deletionTimestamp !== undefined;
      const bestDeleting = best.metadata?.deletionTimestamp !== undefined;
      if (deleting !== bestDeleting) {
        if (!deleting) best = pod;
      } else if (newer(pod, best)) best = pod;
    }
  }
  return best;
}

function newer(a: V1Pod, b: V1Pod): boolean {
  // Objects from a list are deserialised (dates are Date) and objects from a watch are plain JSON
  // (dates are strings); new Date() reads both.
  const at = new Date(a.metadata?.creationTimestamp ?? 0).getTime();
  const bt = new Date(b.metadata?.creationTimestamp ?? 0).getTime();
  if (at !== bt) return at > bt;
  return (a.metadata?.name ?? '') > (b.metadata?.name ?? '');
}

function podHealth(pod: V1Pod): AgentHealth {
  const name = pod.metadata?.name ?? '';
  // Init containers come first: one that crash-loops or waits is what holds the pod back.
  const statuses = [...(pod.status?.initContainerStatuses ?? []), ...(pod.status?.containerStatuses ?? [])];
  const restarts = statuses.reduce((sum, status) => sum + (status.restartCount ?? 0), 0);
  const readyCondition = condition(pod.status?.conditions, 'Ready');
  const ready = readyCondition?.status === 'True';
  const agent = (state: AgentState): NodeTopology['agent'] => ({ state, pod: name, restarts, ready });
  const phase = pod.status?.phase ?? 'Pending';

  const crashing = statuses.find((status) => status.state?.waiting?.reason === 'CrashLoopBackOff');
  if (crashing) {
    const count = crashing.restartCount ?? 0;
    const last = crashing.lastState?.terminated;
    const exit = last ? `; last exit: ${last.reason ?? 'unknown'}, code ${last.exitCode}` : '';
    return {
      agent: agent('crashloop'),
      reason: `agent pod ${name} is crash-looping (${count} restart${count === 1 ? '' : 's'}${exit})`,
    };
  }

  const waiting = statuses.find((status) => status.state?.waiting !== undefined)?.state?.waiting;
  if (waiting && (phase === 'Pending' || phase === 'Running')) {
    const why = waiting.reason ?? 'waiting';
    return {
      agent: agent('starting'),
      reason: `agent pod ${name} is waiting: ${why}${waiting.message ? ` (${waiting.message})` : ''}`,
    };
  }
  if (phase === 'Pending') {
    const scheduled = condition(pod.status?.conditions, 'PodScheduled');
    const reason =
      scheduled?.status === 'False'
        ? `agent pod ${name} cannot be scheduled: ${scheduled.message ?? scheduled.reason ?? 'no reason given'}`
        : `agent pod ${name} is pending`;
    return { agent: agent('starting'), reason };
  }
  if (phase === 'Failed') {
    const why = [pod.status?.reason, pod.status?.message].filter(Boolean).join(': ');
    return { agent: agent('failed'), reason: `agent pod ${name} failed${why ? ` (${why})` : ''}` };
  }
  if (phase === 'Succeeded') {
    return { agent: agent('failed'), reason: `agent pod ${name} exited and will not be restarted` };
  }
  if (phase === 'Unknown') {
    return {
      agent: agent('failed'),
      reason: `agent pod ${name} is in phase Unknown (the node's kubelet cannot be reached)`,
    };
  }
  if (ready) return { agent: agent('running'), reason: undefined };
  const detail = readyCondition?.message ?? readyCondition?.reason;
  return {
    agent: agent('starting'),
    reason: `agent pod ${name} is running but not ready${detail ? ` (${detail})` : ''}`,
  };
}

/** Taints Kubernetes itself sets from a node's conditions; they go when the condition does. */
function isConditionTaint(taint: V1Taint): boolean {
  return (
    taint.key.startsWith('node.kubernetes.io/') ||
    taint.key === 'node.cloudprovider.kubernetes.io/uninitialized'
  );
}

function missingReason(
  node: V1Node,
  readyCondition: V1NodeCondition | undefined,
  tolerations: V1Toleration[] | undefined,
): string {
  // Only these effects keep a pod off a node; PreferNoSchedule does not.
  const blocking = (node.spec?.taints ?? []).filter(
    (taint) => taint.effect === 'NoSchedule' || taint.effect === 'NoExecute',
  );
  if (tolerations === undefined) {
    const suspects = blocking.filter((taint) => !isConditionTaint(taint));
    const note =
      suspects.length === 0
        ? ''
        : `; ${suspects.length === 1 ? 'taint' : 'taints'} ${suspects.map(formatTaint).join(', ')} would also need ${suspects.length === 1 ? 'a toleration' : 'tolerations'}`;
    return `no agent pod on this node, and none in the cluster to compare tolerations with (is the agent DaemonSet installed?)${note}`;
  }
  const untolerated = blocking.filter(
    (taint) => !tolerations.some((toleration) => tolerates(toleration, taint)),
  );
  const configured = untolerated.filter((taint) => !isConditionTaint(taint));
  if (configured.length === 1) {
    return `taint ${formatTaint(configured[0]!)} is not tolerated by the agent DaemonSet (add a toleration)`;
  }
  if (configured.length > 1) {
    return `taints ${configured.map(formatTaint).join(', ')} are not tolerated by the agent DaemonSet (add tolerations)`;
  }
  if (readyCondition?.status !== 'True') {
    const why = readyCondition
      ? [readyCondition.reason, readyCondition.message].filter(Boolean).join(': ') ||
        `Ready is ${readyCondition.status}`
      : 'it reports no Ready condition';
    return `node is not Ready (${why}), and no agent pod runs on it`;
  }
  const conditionTaint = untolerated[0];
  if (conditionTaint) {
    return `taint ${formatTaint(conditionTaint)} keeps the agent off this node (Kubernetes removes it when the node's condition clears)`;
  }
  return "no agent pod scheduled on this node (check the agent DaemonSet's events)";
}

/** Whether a toleration tolerates a taint, by the rules of the Kubernetes scheduler (ToleratesTaint). */
function tolerates(toleration: V1Toleration, taint: V1Taint): boolean {
  if (toleration.effect && toleration.effect !== taint.effect) return false;
  // An empty key with operator Exists tolerates every taint; validation allows an empty key only then.
  if (toleration.key && toleration.key !== taint.key) return false;
  switch (toleration.operator ?? '') {
    case '':
    case 'Equal':
      return (toleration.value ?? '') === (taint.value ?? '');
    case 'Exists':
      return true;
    default:
      return false;
  }
}

function formatTaint(taint: V1Taint): string {
  return `${taint.key}${taint.value ? `=${taint.value}` : ''}:${taint.effect}`;
}

function condition<C extends V1NodeCondition | V1PodCondition>(
  conditions: C[] | undefined,
  type: string,
): C | undefined {
  return conditions?.find((c) => c.type === type);
}

/** The node a pod is on, or is meant for: an unscheduled DaemonSet pod names its node in its affinity. */
function podNodeName(pod: V1Pod): string {
  if (pod.spec?.nodeName) return pod.spec.nodeName;
  const terms =
    pod.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms ?? [];
  for (const term of terms) {
    for (const field of term.matchFields ?? []) {
      if (field.key === 'metadata.name' && field.operator === 'In' && field.values?.length === 1) {
        return field.values[0] ?? '';
      }
    }
  }
  return '';
}

/** Tolerations as plain objects: a list yields class instances, a watch plain JSON, and both must compare equal. */
function plainTolerations(pod: V1Pod): V1Toleration[] {
  return (pod.spec?.tolerations ?? []).map((t) => ({
    key: t.key ?? '',
    operator: t.operator ?? 'Equal',
    value: t.value ?? '',
    effect: t.effect ?? '',
  }));
}

export function createKubeTopology(options: KubeTopologyOptions): KubeTopology {
  const { kubeConfig, log } = options;
  const now = options.now ?? Date.now;
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) throw new ShoalError('SHOAL_ERR_CONFIG', 'the kubeconfig names no current cluster');
  const api = kubeConfig.makeApiClient(CoreV1Api);
  const context: FeedContext = {
    kubeConfig,
    server: cluster.server,
    log,
    now,
    backoffMs: options.backoffMs ?? 500,
    maxBackoffMs: options.maxBackoffMs ?? 30_000,
    requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
    watchTimeoutSeconds: options.watchTimeoutSeconds ?? 300 + Math.floor(Math.random() * 300),
  };
  const startTimeoutMs = options.startTimeoutMs ?? 30_000;

  const nodeObjects = new Map<string, V1Node>();
  /** Agent pods by the node they are on ('' for none yet), each by namespace/name. */
  const podsByNode = new Map<string, Map<string, V1Pod>>();
  const podNode = new Map<string, string>();
  const topologies = new Map<string, NodeTopology>();
  let tolerations: V1Toleration[] | undefined;
  /** Until both first lists are in, nothing is computed, so no node is reported without its agent pod. */
  let loaded = false;
  let started = false;
  let stopped = false;

  function notify(name: string, topology: NodeTopology | undefined): void {
    try {
      options.onChange?.(name, topology);
    } catch (err) {
      log.error({ node: name, err: messageOf(err) }, 'topology change handler failed');
    }
  }

  function recompute(name: string | undefined): void {
    if (!loaded || name === undefined || name === '') return;
    const node = nodeObjects.get(name);
    if (!node) return;
    const next = nodeTopology(node, [...(podsByNode.get(name)?.values() ?? [])], options, tolerations);
    if (isDeepStrictEqual(topologies.get(name), next)) return;
    topologies.set(name, next);
    notify(name, next);
  }

  function recomputeAll(): void {
    for (const name of nodeObjects.keys()) recompute(name);
  }

  /** Takes the tolerations from the newest agent pod; says whether they changed. */
  function refreshTolerations(): boolean {
    let newest: V1Pod | undefined;
    for (const pods of podsByNode.values()) {
      for (const pod of pods.values()) if (newest === undefined || newer(pod, newest)) newest = pod;
    }
    const next = newest ? plainTolerations(newest) : undefined;
    if (isDeepStrictEqual(next, tolerations)) return false;
    tolerations = next;
    return true;
  }

  function podChanged(pod: V1Pod, present: boolean): void {
    const key = `${pod.metadata?.namespace ?? ''}/${pod.metadata?.name ?? ''}`;
    const before = podNode.get(key);
    if (before !== undefined) {
      const pods = podsByNode.get(before);
      pods?.delete(key);
      if (pods?.size === 0) podsByNode.delete(before);
      podNode.delete(key);
    }
    const after = present ? podNodeName(pod) : undefined;
    if (after !== undefined) {
      let pods = podsByNode.get(after);
      if (!pods) podsByNode.set(after, (pods = new Map<string, V1Pod>()));
      pods.set(key, pod);
      podNode.set(key, after);
    }
    if (refreshTolerations()) recomputeAll();
    else {
      recompute(before);
      if (after !== before) recompute(after);
    }
  }

  const nodes = createFeed<V1Node>(
    {
      what: 'nodes',
      grant: 'list and watch on nodes in a ClusterRole (nodes are cluster-scoped)',
      path: '/api/v1/nodes',
      labelSelector: undefined,
      list: (request) => api.listNode({}, request),
      upsert: (node) => {
        if (stopped) return;
        const name = node.metadata?.name ?? '';
        nodeObjects.set(name, node);
        recompute(name);
      },
      remove: (node) => {
        if (stopped) return;
        const name = node.metadata?.name ?? '';
        nodeObjects.delete(name);
        if (topologies.delete(name)) notify(name, undefined);
      },
    },
    context,
  );

  const namespace = options.agentNamespace;
  const labelSelector = options.agentSelector === '' ? undefined : options.agentSelector;
  const pods = createFeed<V1Pod>(
    {
      what: namespace ? `pods in namespace "${namespace}"` : 'pods in all namespaces',
      grant: namespace
        ? `list and watch on pods in a Role in namespace "${namespace}"`
        : 'list and watch on pods in a ClusterRole (the agent pods are watched in all namespaces)',
      path: namespace ? `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods` : '/api/v1/pods',
      labelSelector,
      list: (request) =>
        namespace
          ? api.listNamespacedPod({ namespace, labelSelector }, request)
          : api.listPodForAllNamespaces({ labelSelector }, request),
      upsert: (pod) => {
        if (!stopped) podChanged(pod, true);
      },
      remove: (pod) => {
        if (!stopped) podChanged(pod, false);
      },
    },
    context,
  );

  async function stop(): Promise<void> {
    stopped = true;
    await Promise.all([nodes.stop(), pods.stop()]);
  }

  return {
    async start() {
      if (started || stopped) {
        throw new ShoalError('SHOAL_ERR_INTERNAL', 'a Kubernetes topology can be started only once');
      }
      started = true;
      const deadline = now() + startTimeoutMs;
      try {
        await Promise.all([nodes.start(deadline), pods.start(deadline)]);
      } catch (err) {
        await stop();
        throw err;
      }
      loaded = true;
      refreshTolerations();
      recomputeAll();
      log.info(
        {
          nodes: topologies.size,
          withAgent: [...topologies.values()].filter((t) => t.reason === undefined).length,
        },
        'kubernetes topology loaded',
      );
    },
    stop,
    nodes: () => topologies,
    connected: () => !stopped && nodes.connected() && pods.connected(),
  };
}

interface FeedContext {
  kubeConfig: KubeConfig;
  server: string;
  log: Logger;
  now: () => number;
  backoffMs: number;
  maxBackoffMs: number;
  requestTimeoutMs: number;
  watchTimeoutSeconds: number;
}

interface FeedSpec<T extends KubernetesObject> {
  /** What is watched, as messages name it: 'nodes', 'pods in namespace "shoal"'. */
  what: string;
  /** The RBAC rule that grants it, for the message of a 403. */
  grant: string;
  path: string;
  labelSelector: string | undefined;
  list: (request: ConfigurationOptions<ObservableMiddleware>) => Promise<KubernetesListObject<T>>;
  upsert: (obj: T) => void;
  remove: (obj: T) => void;
}

/** One informer kept alive: restarted after a failure, with a doubling backoff. */
interface Feed {
  /** Resolves once the first list was applied and the watch is open; rejects by the deadline or on 401/403. */
  start(deadline: number): Promise<void>;
  stop(): Promise<void>;
  connected(): boolean;
}

/** A failed list, told apart from a failed watch because the library reports both as 'error'. */
class ListFailure extends Error {
  constructor(
    override readonly cause: unknown,
    readonly timedOut: boolean,
  ) {
    super(messageOf(cause));
  }
}

/**
 * A Watch that can be closed for good. ListWatch.stop() aborts only a watch that is already open: one
 * whose request is still in flight would otherwise open after stop() and stay open. It also asks the
 * server to end each watch after a while and to send bookmarks, and turns a request that cannot even be
 * built into an error the informer reports instead of an unhandled rejection.
 */
class ClosableWatch extends Watch {
  private closed = false;
  private readonly timeoutSeconds: number;

  constructor(config: KubeConfig, timeoutSeconds: number) {
    super(config);
    this.timeoutSeconds = timeoutSeconds;
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: Parameters<Watch['watch']>[2],
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    if (this.closed) return abortedController();
    let controller: AbortController;
    try {
      const params = { ...queryParams, allowWatchBookmarks: true, timeoutSeconds: this.timeoutSeconds };
      controller = await super.watch(path, params, callback, done);
    } catch (err) {
      done(err);
      return abortedController();
    }
    if (this.closed) controller.abort();
    return controller;
  }

  close(): void {
    this.closed = true;
  }
}

function abortedController(): AbortController {
  const controller = new AbortController();
  controller.abort();
  return controller;
}

/** Request options that abort a list on the given signal. */
function withSignal(signal: AbortSignal): ConfigurationOptions<ObservableMiddleware> {
  return {
    middleware: [
      {
        pre: (request) => {
          request.setSignal(signal);
          return new Observable(Promise.resolve(request));
        },
        post: (response) => new Observable(Promise.resolve(response)),
      },
    ],
    middlewareMergeStrategy: 'append',
  };
}

function createFeed<T extends KubernetesObject>(spec: FeedSpec<T>, context: FeedContext): Feed {
  const { log, now } = context;
  const watch = new ClosableWatch(context.kubeConfig, context.watchTimeoutSeconds);
  const aborter = new AbortController();
  const attempts = new Set<Promise<void>>();
  let stopped = false;
  let live = false;
  /** Consecutive failures: the exponent of the next backoff. */
  let failures = 0;
  /** Every failure reported, to tell whether an attempt failed while it ran. */
  let errors = 0;
  let retry: NodeJS.Timeout | undefined;
  let downSince: number | undefined;
  let first:
    { resolve: () => void; reject: (err: Error) => void; deadline: number; since: number } | undefined;

  async function list(): Promise<KubernetesListObject<T>> {
    const timeout = AbortSignal.timeout(context.requestTimeoutMs);
    try {
      return await spec.list(withSignal(AbortSignal.any([aborter.signal, timeout])));
    } catch (err) {
      throw new ListFailure(err, timeout.aborted);
    }
  }

  const informer = new ListWatch<T>(spec.path, watch, list, false, spec.labelSelector);
  const guard =
    (handler: (obj: T) => void) =>
    (obj: T): void => {
      try {
        handler(obj);
      } catch (err) {
        log.error(
          { resource: spec.what, object: obj.metadata?.name, err: messageOf(err) },
          'kubernetes event not applied',
        );
      }
    };
  informer.on('add', guard(spec.upsert));
  informer.on('update', guard(spec.upsert));
  informer.on('delete', guard(spec.remove));
  informer.on('error', (err?: unknown) => failed(err));

  function failed(err: unknown): void {
    errors += 1;
    // Stopping aborts the open watch, which the library reports as an error too.
    if (stopped) return;
    live = false;
    downSince ??= now();
    const error = describeFailure(err, spec, context);
    const delay = Math.min(context.backoffMs * 2 ** failures, context.maxBackoffMs);
    failures += 1;
    if (first) {
      const permanent = error.code === 'SHOAL_ERR_UNAUTHORIZED' || error.code === 'SHOAL_ERR_DENIED';
      if (permanent || now() + delay > first.deadline) {
        first.reject(
          permanent
            ? error
            : new ShoalError(error.code, `${error.message} (gave up after ${now() - first.since} ms)`, {
                cause: error.cause,
                ...(error.details ? { details: error.details } : {}),
              }),
        );
        first = undefined;
        return;
      }
    }
    log.warn(
      { resource: spec.what, err: error.message, retryInMs: delay },
      first ? 'kubernetes API not ready; retrying' : 'kubernetes watch failed; restarting it',
    );
    if (retry === undefined) {
      retry = setTimeout(() => {
        retry = undefined;
        if (!stopped) run();
      }, delay);
    }
  }

  async function attempt(): Promise<void> {
    const before = errors;
    try {
      await informer.start();
    } catch (err) {
      failed(err);
      return;
    }
    if (stopped || errors !== before) return;
    live = true;
    failures = 0;
    if (downSince !== undefined && !first) {
      log.info({ resource: spec.what, downForMs: now() - downSince }, 'kubernetes watch re-established');
    }
    downSince = undefined;
    first?.resolve();
    first = undefined;
  }

  function run(): void {
    const running = attempt();
    attempts.add(running);
    void running.finally(() => attempts.delete(running));
  }

  return {
    start(deadline) {
      if (stopped)
        return Promise.reject(new ShoalError('SHOAL_ERR_INTERNAL', `${spec.what}: already stopped`));
      return new Promise<void>((resolve, reject) => {
        first = { resolve, reject, deadline, since: now() };
        run();
      });
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      live = false;
      clearTimeout(retry);
      retry = undefined;
      watch.close();
      aborter.abort();
      first?.reject(new ShoalError('SHOAL_ERR_INTERNAL', `stopped before ${spec.what} were loaded`));
      first = undefined;
      await informer.stop();
      await Promise.allSettled([...attempts]);
    },
    connected: () => live,
  };
}

function describeFailure(
  err: unknown,
  spec: Pick<FeedSpec<KubernetesObject>, 'what' | 'grant'>,
  context: Pick<FeedContext, 'server' | 'requestTimeoutMs'>,
): ShoalError {
  const verb = err instanceof ListFailure ? 'list' : 'watch';
  const cause = err instanceof ListFailure ? err.cause : err;
  const api = `the Kubernetes API at ${context.server}`;
  if (err instanceof ListFailure && err.timedOut) {
    return new ShoalError(
      'SHOAL_ERR_UPSTREAM_TIMEOUT',
      `listing ${spec.what} from ${api} took longer than ${context.requestTimeoutMs} ms`,
      { cause, details: { resource: spec.what, verb } },
    );
  }
  const status = statusOf(cause);
  const detail = statusMessage(cause);
  const options = { cause, details: { resource: spec.what, verb, status } };
  if (status === 401) {
    return new ShoalError(
      'SHOAL_ERR_UNAUTHORIZED',
      `${api} rejected the credentials when asked to ${verb} ${spec.what} (401 Unauthorized): check the service account token or the kubeconfig`,
      options,
    );
  }
  if (status === 403) {
    return new ShoalError(
      'SHOAL_ERR_DENIED',
      `not allowed to ${verb} ${spec.what} (403 Forbidden${detail ? `: ${detail}` : ''}): grant the service account ${spec.grant}`,
      options,
    );
  }
  if (status !== undefined) {
    return new ShoalError(
      'SHOAL_ERR_UPSTREAM',
      `${api} answered HTTP ${status} when asked to ${verb} ${spec.what}${detail ? `: ${detail}` : ''}`,
      options,
    );
  }
  return new ShoalError(
    'SHOAL_ERR_UPSTREAM',
    `cannot ${verb} ${spec.what} from ${api}: ${messageOf(cause)}`,
    options,
  );
}

/** The HTTP status of a failure: an ApiException from a list carries `code`, a failed watch `statusCode`. */
function statusOf(err: unknown): number | undefined {
  if (err instanceof ApiException) return typeof err.code === 'number' ? err.code : undefined;
  if (typeof err === 'object' && err !== null && 'statusCode' in err && typeof err.statusCode === 'number') {
    return err.statusCode;
  }
  return undefined;
}

/** The message of the Status object the API server answered a list with, when there is one. */
function statusMessage(err: unknown): string | undefined {
  if (!(err instanceof ApiException)) return undefined;
  // The generated client hands the body of an unexpected status over as text, not parsed.
  let body: unknown = err.body;
  if (typeof body === 'string') {
    const text = body;
    try {
      body = JSON.parse(text) as unknown;
    } catch {
      return text === '' ? undefined : text.slice(0, 300);
    }
  }
  if (typeof body === 'object' && body !== null && 'message' in body && typeof body.message === 'string') {
    return body.message;
  }
  return undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
