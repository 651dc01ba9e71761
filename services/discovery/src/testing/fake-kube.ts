/**
 * A small fake of the Kubernetes API server over real HTTP, enough for informers on nodes and pods:
 * lists with a resourceVersion, watches streamed as newline-delimited JSON from a resourceVersion on,
 * equality-based label selectors, bearer-token authentication, and controls to break it the ways the
 * real one breaks (dropped watches, expired history, error statuses).
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { V1ContainerStatus, V1Node, V1Pod, V1Taint, V1Toleration } from '@kubernetes/client-node';

export type Resource = 'nodes' | 'pods';

export interface FakeRequest {
  resource: Resource | 'other';
  watch: boolean;
  /** Path and query as received. */
  url: string;
  status: number;
  at: number;
}

export interface FakeKube {
  readonly url: string;
  readonly token: string;
  /** Every request received, in order. */
  readonly requests: readonly FakeRequest[];
  count(filter?: { resource?: Resource; watch?: boolean }): number;
  /** Watches currently streaming. */
  openWatches(resource?: Resource): number;
  /** Open TCP connections to the server. */
  connections(): Promise<number>;
  addNode(node: V1Node): void;
  updateNode(node: V1Node): void;
  deleteNode(name: string): void;
  addPod(pod: V1Pod): void;
  updatePod(pod: V1Pod): void;
  deletePod(namespace: string, name: string): void;
  /** Destroys the socket of every open watch, without ending the response. */
  dropWatches(): void;
  /**
   * Forgets the history up to now: a later watch from an older resourceVersion gets a 410, as an ERROR
   * event on a 200 stream (what the API server does) or, with 'status', as the HTTP status.
   */
  expireHistory(as?: 'event' | 'status'): void;
  /** Holds back the answer to every later watch request by `ms`. */
  delayWatches(ms: number): void;
  /** Answers the next `count` matching requests with `status` and a Status object. */
  failNext(count: number, status: number, match?: { resource?: Resource; watch?: boolean }): void;
  close(): Promise<void>;
}

export const agentLabels = {
  'app.kubernetes.io/name': 'shoal',
  'app.kubernetes.io/component': 'agent',
} as const;
export const agentSelector = 'app.kubernetes.io/name=shoal,app.kubernetes.io/component=agent';

/** The tolerations the DaemonSet controller adds to every pod it creates. */
export const daemonSetTolerations: V1Toleration[] = [
  { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute' },
  { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute' },
  { key: 'node.kubernetes.io/disk-pressure', operator: 'Exists', effect: 'NoSchedule' },
  { key: 'node.kubernetes.io/memory-pressure', operator: 'Exists', effect: 'NoSchedule' },
  { key: 'node.kubernetes.io/pid-pressure', operator: 'Exists', effect: 'NoSchedule' },
  { key: 'node.kubernetes.io/unschedulable', operator: 'Exists', effect: 'NoSchedule' },
];

export function makeNode(
  name: string,
  options: { labels?: Record<string, string>; taints?: V1Taint[]; ready?: boolean } = {},
): V1Node {
  const ready = options.ready ?? true;
  // The node lifecycle controller taints a node that is not Ready.
  const taints: V1Taint[] = ready
    ? []
    : [
        { key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' },
        { key: 'node.kubernetes.io/not-ready', effect: 'NoExecute' },
      ];
  taints.push(...(options.taints ?? []));
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name, ...options.labels } },
    spec: taints.length > 0 ? { taints } : {},
    status: {
      conditions: [
        ready
          ? {
              type: 'Ready',
              status: 'True',
              reason: 'KubeletReady',
              message: 'kubelet is posting ready status',
            }
          : {
              type: 'Ready',
              status: 'False',
              reason: 'KubeletNotReady',
              message: 'container runtime network not ready: NetworkReady=false',
            },
      ],
    },
  };
}

export function makeAgentPod(
  name: string,
  node: string,
  options: {
    state?: 'running' | 'crashloop' | 'pending';
    restarts?: number;
    tolerations?: V1Toleration[];
    namespace?: string;
    labels?: Record<string, string>;
    /** Seconds since the epoch; orders pods during a rollout. */
    created?: number;
    waiting?: { reason: string; message?: string };
  } = {},
): V1Pod {
  const state = options.state ?? 'running';
  const restarts = options.restarts ?? 0;
  const container: V1ContainerStatus = {
    name: 'agent',
    image: 'registry.example/shoal/agent:test',
    imageID: '',
    ready: state === 'running',
    restartCount: restarts,
  };
  if (state === 'running') container.state = { running: { startedAt: new Date(0) } };
  if (state === 'crashloop') {
    container.state = {
      waiting: {
        reason: 'CrashLoopBackOff',
        message: `back-off 5m0s restarting failed container=agent pod=${name}`,
      },
    };
    container.lastState = { terminated: { reason: 'Error', exitCode: 1 } };
  }
  if (state === 'pending') {
    container.state = {
      waiting: options.waiting ?? {
        reason: 'ImagePullBackOff',
        message: 'Back-off pulling image "registry.example/shoal/agent:test"',
      },
    };
  }
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace: options.namespace ?? 'shoal',
      labels: { ...agentLabels, ...options.labels },
      creationTimestamp: new Date((options.created ?? 1_700_000_000) * 1000),
    },
    spec: {
      nodeName: node,
      containers: [{ name: 'agent', image: 'registry.example/shoal/agent:test' }],
      tolerations: options.tolerations ?? daemonSetTolerations,
    },
    status: {
      phase: state === 'pending' ? 'Pending' : 'Running',
      conditions: [
        { type: 'PodScheduled', status: 'True' },
        { type: 'Ready', status: state === 'running' ? 'True' : 'False' },
      ],
      containerStatuses: [container],
    },
  };
}

/** An object as it travels on the wire: plain JSON. */
interface Wire {
  metadata: { name: string; namespace?: string; resourceVersion?: string; labels?: Record<string, string> };
  [key: string]: unknown;
}

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';

interface Change {
  rv: number;
  resource: Resource;
  type: EventType;
  /** The object before the change; undefined for an addition. */
  old: Wire | undefined;
  obj: Wire;
}

interface OpenWatch {
  resource: Resource;
  namespace: string | undefined;
  selector: Selector;
  res: ServerResponse;
  socket: Socket;
  timer: NodeJS.Timeout | undefined;
}

type Requirement = { key: string; op: '=' | '!=' | 'exists' | '!exists'; value: string };
type Selector = Requirement[];

function parseSelector(text: string | null): Selector {
  if (!text) return [];
  return text
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '')
    .map((part): Requirement => {
      const neq = part.indexOf('!=');
      if (neq >= 0) return { key: part.slice(0, neq), op: '!=', value: part.slice(neq + 2) };
      const eq = part.indexOf('=');
      if (eq >= 0) return { key: part.slice(0, eq), op: '=', value: part.slice(eq).replace(/^==?/, '') };
      if (part.startsWith('!')) return { key: part.slice(1), op: '!exists', value: '' };
      return { key: part, op: 'exists', value: '' };
    });
}

function matchesSelector(selector: Selector, labels: Record<string, string> | undefined): boolean {
  return selector.every((req) => {
    const value = labels?.[req.key];
    switch (req.op) {
      case '=':
        return value === req.value;
      case '!=':
        return value !== req.value;
      case 'exists':
        return value !== undefined;
      case '!exists':
        return value === undefined;
    }
  });
}

function status(code: number, reason: string, message: string): Record<string, unknown> {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

const reasons: Record<number, string> = {
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  410: 'Expired',
  500: 'InternalError',
  503: 'ServiceUnavailable',
};

export async function startFakeKube(options: { token?: string } = {}): Promise<FakeKube> {
  const token = options.token ?? 't';
  const stores: Record<Resource, Map<string, Wire>> = { nodes: new Map(), pods: new Map() };
  const history: Change[] = [];
  const watches = new Set<OpenWatch>();
  const requests: FakeRequest[] = [];
  const failures: { count: number; status: number; resource?: Resource; watch?: boolean }[] = [];
  let revision = 1;
  /** Watches from a resourceVersion below this one get a 410. */
  let compactedBefore = 0;
  let expiredAs: 'event' | 'status' = 'event';
  let watchDelayMs = 0;

  const keyOf = (obj: Wire): string => `${obj.metadata.namespace ?? ''}/${obj.metadata.name}`;

  function send(res: ServerResponse, code: number, body: unknown): void {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  function visible(watch: OpenWatch, obj: Wire | undefined): boolean {
    if (!obj) return false;
    if (watch.namespace !== undefined && obj.metadata.namespace !== watch.namespace) return false;
    return matchesSelector(watch.selector, obj.metadata.labels);
  }

  /** The event a watch sees for a change: a change into or out of its selector is an addition or a deletion. */
  function eventFor(watch: OpenWatch, change: Change): { type: EventType; object: Wire } | undefined {
    if (change.resource !== watch.resource) return undefined;
    const before = change.type !== 'ADDED' && visible(watch, change.old);
    const after = change.type !== 'DELETED' && visible(watch, change.obj);
    if (before && after) return { type: 'MODIFIED', object: change.obj };
    if (after) return { type: 'ADDED', object: change.obj };
    if (before) return { type: 'DELETED', object: change.obj };
    return undefined;
  }

  function write(watch: OpenWatch, event: unknown): void {
    if (!watch.res.writableEnded && !watch.socket.destroyed) watch.res.write(`${JSON.stringify(event)}\n`);
  }

  function record(resource: Resource, type: EventType, old: Wire | undefined, obj: Wire): void {
    revision += 1;
    const stored = JSON.parse(JSON.stringify(obj)) as Wire;
    stored.metadata.resourceVersion = String(revision);
    if (type === 'DELETED') stores[resource].delete(keyOf(stored));
    else stores[resource].set(keyOf(stored), stored);
    const change: Change = { rv: revision, resource, type, old, obj: stored };
    history.push(change);
    for (const watch of watches) {
      const event = eventFor(watch, change);
      if (event) write(watch, event);
    }
  }

  function add(resource: Resource, obj: object): void {
    const wire = JSON.parse(JSON.stringify(obj)) as Wire;
    if (stores[resource].has(keyOf(wire))) throw new Error(`${resource} ${keyOf(wire)} already exists`);
    record(resource, 'ADDED', undefined, wire);
  }

  function update(resource: Resource, obj: object): void {
    const wire = JSON.parse(JSON.stringify(obj)) as Wire;
    const old = stores[resource].get(keyOf(wire));
    if (!old) throw new Error(`${resource} ${keyOf(wire)} does not exist`);
    record(resource, 'MODIFIED', old, wire);
  }

  function remove(resource: Resource, key: string): void {
    const old = stores[resource].get(key);
    if (!old) throw new Error(`${resource} ${key} does not exist`);
    record(resource, 'DELETED', old, old);
  }

  function closeWatch(watch: OpenWatch): void {
    clearTimeout(watch.timer);
    watches.delete(watch);
  }

  function serveWatch(res: ServerResponse, query: URLSearchParams, watch: OpenWatch): void {
    const from = query.get('resourceVersion') ?? '';
    if (from !== '' && from !== '0' && Number(from) < compactedBefore) {
      const gone = status(410, 'Expired', `too old resource version: ${from} (${compactedBefore})`);
      if (expiredAs === 'status') {
        send(res, 410, gone);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`${JSON.stringify({ type: 'ERROR', object: gone })}\n`);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.flushHeaders();
    watches.add(watch);
    res.on('close', () => closeWatch(watch));
    if (from === '' || from === '0') {
      for (const obj of stores[watch.resource].values()) {
        if (visible(watch, obj)) write(watch, { type: 'ADDED', object: obj });
      }
    } else {
      for (const change of history) {
        if (change.rv <= Number(from)) continue;
        const event = eventFor(watch, change);
        if (event) write(watch, event);
      }
    }
    if (query.get('allowWatchBookmarks') === 'true') {
      const kind = watch.resource === 'nodes' ? 'Node' : 'Pod';
      write(watch, {
        type: 'BOOKMARK',
        object: { kind, apiVersion: 'v1', metadata: { resourceVersion: String(revision) } },
      });
    }
    const seconds = Number(query.get('timeoutSeconds') ?? '0');
    if (seconds > 0) {
      watch.timer = setTimeout(() => {
        closeWatch(watch);
        res.end();
      }, seconds * 1000);
      watch.timer.unref();
    }
  }

  function route(path: string): { resource: Resource; namespace: string | undefined } | undefined {
    if (path === '/api/v1/nodes') return { resource: 'nodes', namespace: undefined };
    if (path === '/api/v1/pods') return { resource: 'pods', namespace: undefined };
    const match = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(path);
    if (match) return { resource: 'pods', namespace: decodeURIComponent(match[1]!) };
    return undefined;
  }

  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://fake');
    const target = route(url.pathname);
    const watching = url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1';
    const entry: FakeRequest = {
      resource: target?.resource ?? 'other',
      watch: watching,
      url: `${url.pathname}${url.search}`,
      status: 200,
      at: Date.now(),
    };
    requests.push(entry);
    const answer = (code: number, body: unknown): void => {
      entry.status = code;
      send(res, code, body);
    };

    const failure = failures.find(
      (f) =>
        (f.resource === undefined || f.resource === target?.resource) &&
        (f.watch === undefined || f.watch === watching),
    );
    if (failure) {
      failure.count -= 1;
      if (failure.count <= 0) failures.splice(failures.indexOf(failure), 1);
      const what = target?.resource ?? 'resource';
      const message =
        failure.status === 403
          ? `${what} is forbidden: User "system:serviceaccount:shoal:discovery" cannot ${watching ? 'watch' : 'list'} resource "${what}" in API group "" at the cluster scope`
          : `injected failure ${failure.status}`;
      answer(failure.status, status(failure.status, reasons[failure.status] ?? 'Unknown', message));
      return;
    }
    if (req.headers.authorization !== `Bearer ${token}`) {
      answer(401, status(401, 'Unauthorized', 'Unauthorized'));
      return;
    }
    if (req.method !== 'GET' || !target) {
      answer(404, status(404, 'NotFound', `the server could not find the requested resource`));
      return;
    }
    const selector = parseSelector(url.searchParams.get('labelSelector'));
    if (watching) {
      const watch: OpenWatch = { ...target, selector, res, socket: req.socket, timer: undefined };
      const serve = (): void => {
        // A client that gave up while the answer was held back is gone.
        if (req.socket.destroyed) return;
        serveWatch(res, url.searchParams, watch);
        entry.status = res.statusCode;
      };
      if (watchDelayMs > 0) setTimeout(serve, watchDelayMs).unref();
      else serve();
      return;
    }
    const probe: OpenWatch = { ...target, selector, res, socket: req.socket, timer: undefined };
    const items = [...stores[target.resource].values()].filter((obj) => visible(probe, obj));
    answer(200, {
      kind: target.resource === 'nodes' ? 'NodeList' : 'PodList',
      apiVersion: 'v1',
      metadata: { resourceVersion: String(revision) },
      items,
    });
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    token,
    requests,
    count: (filter = {}) =>
      requests.filter(
        (r) =>
          (filter.resource === undefined || r.resource === filter.resource) &&
          (filter.watch === undefined || r.watch === filter.watch),
      ).length,
    openWatches: (resource) =>
      [...watches].filter((w) => resource === undefined || w.resource === resource).length,
    connections: () =>
      new Promise<number>((resolve, reject) =>
        server.getConnections((err, count) => (err ? reject(err) : resolve(count))),
      ),
    addNode: (node) => add('nodes', node),
    updateNode: (node) => update('nodes', node),
    deleteNode: (name) => remove('nodes', `/${name}`),
    addPod: (pod) => add('pods', pod),
    updatePod: (pod) => update('pods', pod),
    deletePod: (namespace, name) => remove('pods', `${namespace}/${name}`),
    dropWatches() {
      for (const watch of [...watches]) {
        closeWatch(watch);
        watch.socket.destroy();
      }
    },
    expireHistory(as = 'event') {
      expiredAs = as;
      compactedBefore = revision;
      history.splice(0, history.length);
    },
    delayWatches(ms) {
      watchDelayMs = ms;
    },
    failNext(count, code, match = {}) {
      failures.push({ count, status: code, ...match });
    },
    async close() {
      for (const watch of [...watches]) {
        closeWatch(watch);
        watch.res.end();
      }
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
    },
  };
}
