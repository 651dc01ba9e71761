/**
 * The NATS connection every service and agent uses: connects in the background and keeps reconnecting,
 * reports whether it is usable right now (so callers fall back at once instead of waiting on timeouts),
 * creates the streams and buckets it needs, and drains on shutdown.
 */
import {
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { readFileSync } from 'node:fs';
import {
  connect,
  type ConnectionOptions,
  credsAuthenticator,
  type NatsConnection,
} from '@nats-io/transport-node';
import type { NatsAuth } from './common-options.js';
import { ShoalError } from './errors.js';
import type { Logger } from './logger.js';
import { buckets, streams, subjects } from './subjects.js';

export interface MeshConnectionOptions {
  servers: string[];
  name: string;
  log: Logger;
  user?: string | undefined;
  pass?: string | undefined;
  token?: string | undefined;
  /** TLS and credentials-file authentication (see natsAuth). */
  auth?: NatsAuth;
  /** How often the server is pinged; a dead server is noticed after two missed pings. */
  pingIntervalMs?: number;
}

export interface MeshConnection {
  /** The connection if it is up right now, else undefined: callers then take their fallback path. */
  connection(): NatsConnection | undefined;
  /** Resolves on the first successful connection (retrying forever until close). */
  ready(): Promise<NatsConnection>;
  /** Called on every (re)connect, e.g. to re-create streams or re-announce. */
  onConnect(listener: (nc: NatsConnection) => void): void;
  close(): Promise<void>;
}

export function connectMesh(options: MeshConnectionOptions): MeshConnection {
  let nc: NatsConnection | undefined;
  let connected = false;
  let closed = false;
  const listeners: ((nc: NatsConnection) => void)[] = [];
  const connectOptions: ConnectionOptions = {
    servers: options.servers,
    name: options.name,
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    reconnectJitter: 200,
    waitOnFirstConnect: true,
    pingInterval: options.pingIntervalMs ?? 2_000,
    maxPingOut: 2,
    timeout: 1_000,
    // Each request would otherwise build an Error for its call site's stack, in case it fails; agents
    // make thousands per rollout, and callers wrap a failed request with their own context.
    noAsyncTraces: true,
  };
  if (options.user !== undefined) connectOptions.user = options.user;
  if (options.pass !== undefined) connectOptions.pass = options.pass;
  if (options.token !== undefined) connectOptions.token = options.token;
  const auth = options.auth ?? {};
  Object.assign(connectOptions, natsConnectOptions(auth));

  const notify = (conn: NatsConnection) => {
    for (const listener of listeners) {
      try {
        listener(conn);
      } catch (err) {
        options.log.error({ err }, 'nats connect listener failed');
      }
    }
  };

  const readyPromise = (async () => {
    const conn = await connect(connectOptions);
    nc = conn;
    connected = true;
    options.log.info({ server: conn.getServer() }, 'nats connected');
    if (closed) {
      await conn.close();
      return conn;
    }
    notify(conn);
    void (async () => {
      for await (const status of conn.status()) {
        if (status.type === 'disconnect') {
          connected = false;
          options.log.warn({ server: status.server }, 'nats disconnected');
        } else if (status.type === 'reconnect') {
          connected = true;
          options.log.info({ server: status.server }, 'nats reconnected');
          notify(conn);
        }
      }
    })();
    void conn.closed().then(() => {
      connected = false;
    });
    return conn;
  })();
  // Callers that never await ready() must not see an unhandled rejection when close() races the connect.
  readyPromise.catch(() => undefined);

  return {
    connection: () => (connected && nc && !nc.isClosed() && !nc.isDraining() ? nc : undefined),
    ready: () => readyPromise,
    onConnect(listener) {
      listeners.push(listener);
      if (connected && nc) listener(nc);
    },
    async close() {
      closed = true;
      if (nc && !nc.isClosed()) {
        try {
          await nc.drain();
        } catch {
          await nc.close();
        }
      }
    },
  };
}

/** NATS client options for the given authentication: credentials from a file, TLS from PEM files. */
export function natsConnectOptions(auth: NatsAuth): Partial<ConnectionOptions> {
  const out: Partial<ConnectionOptions> = {};
  if (auth.user !== undefined) {
    out.user = auth.user;
    out.pass = auth.pass ?? '';
  }
  if (auth.token !== undefined) out.token = auth.token;
  if (auth.tls) out.tls = { ...auth.tls };
  const credsFile = auth.credsFile;
  if (credsFile) {
    // Checked now, so that a wrong path is one clear error at start rather than a connection that never
    // authenticates; read again at every (re)connect, so that a rotated file is used.
    readCreds(credsFile);
    out.authenticator = credsAuthenticator(() => readCreds(credsFile));
  }
  return out;
}

function readCreds(file: string): Uint8Array {
  try {
    const bytes = readFileSync(file);
    if (!/-----BEGIN NATS USER JWT-----/.test(bytes.toString('utf8'))) {
      throw new Error('it holds no NATS user JWT (expected a .creds file as nsc writes it)');
    }
    return bytes;
  } catch (cause) {
    throw new ShoalError(
      'SHOAL_ERR_CONFIG',
      `nats.credsFile: cannot use ${file}: ${cause instanceof Error ? cause.message : String(cause)}`,
      { cause },
    );
  }
}

export interface StreamLimits {
  eventsMaxAgeMs: number;
  eventsMaxBytes: number;
  announceMaxAgeMs: number;
  /** Servers each stream and bucket is kept on: 1, or the size of a clustered NATS (at most 5). */
  replicas: number;
}

export const defaultStreamLimits: StreamLimits = {
  eventsMaxAgeMs: 7 * 24 * 3_600_000,
  eventsMaxBytes: 1024 ** 3,
  announceMaxAgeMs: 10 * 60_000,
  replicas: 1,
};

const nanos = (ms: number) => ms * 1_000_000;

/** Creates (or updates) the streams Shoal uses. Idempotent: every service calls it on connect. */
export async function ensureStreams(
  jsm: JetStreamManager,
  limits: StreamLimits = defaultStreamLimits,
): Promise<void> {
  const wanted = [
    {
      name: streams.announce,
      subjects: [subjects.announceAll],
      retention: RetentionPolicy.Limits,
      max_age: nanos(limits.announceMaxAgeMs),
      num_replicas: limits.replicas,
    },
    {
      name: streams.events,
      subjects: [subjects.eventsAll],
      retention: RetentionPolicy.Limits,
      max_age: nanos(limits.eventsMaxAgeMs),
      max_bytes: limits.eventsMaxBytes,
      num_replicas: limits.replicas,
    },
  ];
  for (const config of wanted) {
    try {
      await jsm.streams.info(config.name);
      await jsm.streams.update(config.name, config);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      await jsm.streams.add(config);
    }
  }
}

function isNotFound(err: unknown): boolean {
  const text = err instanceof Error ? err.message : String(err);
  return /not found/i.test(text);
}

export interface MeshBuckets {
  nodes: KV;
  chunks: KV;
  grants: KV;
  endpoints: KV;
  topology: KV;
}

/**
 * Opens (creating if needed) every KV bucket, kept on `replicas` servers. A bucket that exists with fewer
 * replicas (created before the cluster grew, or by an older version) is raised to that many.
 */
export async function openBuckets(nc: NatsConnection, replicas = 1): Promise<MeshBuckets> {
  const kvm = new Kvm(nc);
  const open = async (name: string) => {
    const kv = await kvm.create(name, { history: 1, replicas });
    if (replicas > 1) {
      const jsm = await jetstreamManager(nc);
      const stream = `KV_${name}`;
      const info = await jsm.streams.info(stream);
      if ((info.config.num_replicas ?? 1) < replicas) {
        await jsm.streams.update(stream, { ...info.config, num_replicas: replicas });
      }
    }
    return kv;
  };
  const [nodes, chunks, grants, endpoints, topology] = await Promise.all([
    open(buckets.nodes),
    open(buckets.chunks),
    open(buckets.grants),
    open(buckets.endpoints),
    open(buckets.topology),
  ]);
  return { nodes, chunks, grants, endpoints, topology };
}

export function jetStreamOf(nc: NatsConnection): { js: JetStreamClient; jsm: Promise<JetStreamManager> } {
  return { js: jetstream(nc), jsm: jetstreamManager(nc) };
}
