import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import bcrypt from 'bcryptjs';
import { onFreePorts } from './ports.js';
import { startProcess, unlessExited, type ManagedProcess } from './process.js';
import { makeTempDir, removeTempDir } from './tmp.js';
import { waitForHttp } from './wait.js';

export interface RegistryAuth {
  /** User name to plain-text password; the kit writes bcrypt hashes into an htpasswd file. */
  users: Record<string, string>;
}

/**
 * Bearer token authentication (the distribution "token" access controller): clients are sent to
 * `realm` for a JWT, which the registry verifies against the certificates in rootCertBundlePath.
 * See startTokenServer for a matching token server.
 */
export interface RegistryTokenAuth {
  realm: string;
  service: string;
  issuer: string;
  rootCertBundlePath: string;
}

export interface StartRegistryOptions {
  /** Basic authentication against an htpasswd file; cannot be combined with tokenAuth. */
  auth?: RegistryAuth;
  /** Bearer token authentication; cannot be combined with auth. */
  tokenAuth?: RegistryTokenAuth;
  /** Label for logs and errors; "registry" unless given. */
  name?: string;
}

/** One request that reached the counting proxy in front of the registry. */
export interface RegistryRequest {
  method: string;
  /** Path and query string as the client sent them. */
  path: string;
  /** Status sent to the client; 0 when the connection was reset before a response. */
  status: number;
  /** The Range request header, if any. */
  range: string | undefined;
  /** Response body bytes sent to the client. */
  bytes: number;
  /** Whether the request carried an Authorization header (its value is never recorded). */
  auth: boolean;
  userAgent: string | undefined;
  /** Epoch milliseconds when the request arrived. */
  startedAt: number;
  /** Milliseconds from arrival until the response ended or the connection closed. */
  ms: number;
  /** Set when the proxy injected a fault instead of forwarding the request. */
  fault: 'reset' | '5xx' | undefined;
  /** False when the client or the registry dropped the connection before the body was complete. */
  complete: boolean;
}

export interface RegistryFault {
  /** Share of matching requests (0..1) answered with a 5xx OCI error instead of being forwarded. */
  status5xxRatio?: number;
  /** Status used for injected errors; 503 unless given. */
  status?: number;
  /** Delay added before each matching request is handled. */
  delayMs?: number;
  /** Share of matching requests (0..1) whose connection is destroyed without a response. */
  resetRatio?: number;
  /** Limits the response body rate of matching requests, to emulate a slow upstream registry. */
  bytesPerSecond?: number;
  /** Only requests whose path matches are affected; all requests unless given. */
  match?: RegExp;
  /** Only these methods are affected; all methods unless given. */
  methods?: readonly string[];
  /**
   * Only the first matching request for each method and path is affected (the ratios apply to it); the
   * ones after it pass. For faults a client must get past by asking again.
   */
  firstOnly?: boolean;
}

export interface Registry {
  /** http://127.0.0.1:PORT of the counting proxy; use this, not the backend, so requests are counted. */
  readonly url: string;
  /** 127.0.0.1:PORT of the proxy, the form used in image references and hosts.toml. */
  readonly host: string;
  readonly port: number;
  /** The docker-registry process itself, bypassing the proxy (requests there are not counted). */
  readonly backendUrl: string;
  readonly backendPort: number;
  /**
   * The first configured htpasswd user, for clients that need one set of credentials; undefined with
   * tokenAuth, whose users belong to the token server and whose registry refuses Basic credentials.
   */
  readonly credentials: { username: string; password: string } | undefined;
  readonly dir: string;
  readonly logFile: string;
  process(): ManagedProcess;
  /** Every request seen by the proxy so far, oldest first. */
  requests(): RegistryRequest[];
  /** Blob GETs that were forwarded to the registry (not faulted), optionally only for one digest. */
  blobGets(digest?: string): RegistryRequest[];
  /** Forgets the recorded requests, for example between the phases of a test. */
  clearRequests(): void;
  /** Replaces the active fault; call with no argument to stop injecting faults. */
  setFault(fault?: RegistryFault): void;
  /** Stops the proxy and the registry and removes the storage. Safe to call twice. */
  stop(): Promise<void>;
}

const BLOB_PATH = /^\/v2\/.+\/blobs\/(sha256:[0-9a-f]{64})(?:\?.*)?$/;

/** Headers that describe one hop of a connection and must not be copied to the next hop. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/**
 * Starts docker-registry with filesystem storage on a free loopback port, and a counting reverse
 * proxy in front of it whose address is the one handed out, so tests can assert how many requests
 * (and which blob downloads) actually reached the registry.
 */
export async function startRegistry(options: StartRegistryOptions = {}): Promise<Registry> {
  const name = options.name ?? 'registry';
  // docker-registry accepts exactly one access controller, so asking for both is a test bug.
  if (options.auth !== undefined && options.tokenAuth !== undefined) {
    throw new Error('startRegistry: auth and tokenAuth cannot be combined');
  }
  const dir = await makeTempDir('registry');
  const logFile = join(dir, 'registry.log');
  const configFile = join(dir, 'config.yml');
  const storageDir = join(dir, 'storage');
  await mkdir(storageDir, { recursive: true });
  const config = [
    'version: 0.1',
    'log:',
    '  level: info',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(storageDir)}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    // The listen address is given to each attempt to start (see onFreePorts) as REGISTRY_HTTP_ADDR.
    'http:',
    // A fixed secret avoids the warning about a random one; uploads never outlive one instance anyway.
    `  secret: ${randomBytes(16).toString('hex')}`,
    'health:',
    '  storagedriver:',
    '    enabled: false',
  ];
  let credentials: Registry['credentials'];
  if (options.auth !== undefined) {
    const entries = Object.entries(options.auth.users);
    const first = entries[0];
    if (first === undefined) throw new Error('startRegistry: auth.users is empty');
    credentials = { username: first[0], password: first[1] };
    // The registry only accepts bcrypt in htpasswd; cost 4 is the minimum and keeps tests fast.
    const htpasswd = entries.map(([user, password]) => `${user}:${bcrypt.hashSync(password, 4)}`).join('\n');
    const htpasswdFile = join(dir, 'htpasswd');
    await writeFile(htpasswdFile, `${htpasswd}\n`);
    config.push('auth:', '  htpasswd:', '    realm: shoal-test', `    path: ${JSON.stringify(htpasswdFile)}`);
  }
  if (options.tokenAuth !== undefined) {
    const token = options.tokenAuth;
    config.push(
      'auth:',
      '  token:',
      `    realm: ${JSON.stringify(token.realm)}`,
      `    service: ${JSON.stringify(token.service)}`,
      `    issuer: ${JSON.stringify(token.issuer)}`,
      `    rootcertbundle: ${JSON.stringify(token.rootCertBundlePath)}`,
    );
  }
  await writeFile(configFile, `${config.join('\n')}\n`);

  let proc: ManagedProcess;
  let backendPort: number;
  try {
    [proc, backendPort] = await onFreePorts(1, async ([port = 0]) => {
      const started = await startProcess({
        name,
        cmd: 'docker-registry',
        args: ['serve', configFile],
        logFile,
        env: { REGISTRY_HTTP_ADDR: `127.0.0.1:${port}` },
      });
      try {
        // /v2/ answers 401 when auth is on, which still proves the registry is serving.
        await unlessExited(
          started,
          waitForHttp(`http://127.0.0.1:${port}/v2/`, 15_000, { accept: (s) => s === 200 || s === 401 }),
          'starting',
        );
      } catch (err) {
        await started.stop('SIGKILL');
        throw err;
      }
      return [started, port] as const;
    });
  } catch (err) {
    await removeTempDir(dir);
    throw err;
  }
  const backendUrl = `http://127.0.0.1:${backendPort}`;
  let proxy: CountingProxy | undefined;
  try {
    proxy = await CountingProxy.start(backendPort);
  } catch (err) {
    await proc.stop('SIGKILL');
    await removeTempDir(dir);
    throw err;
  }
  const activeProxy = proxy;
  let stopped = false;
  const host = `127.0.0.1:${activeProxy.port}`;

  return {
    url: `http://${host}`,
    host,
    port: activeProxy.port,
    backendUrl,
    backendPort,
    credentials,
    dir,
    logFile,
    process: () => proc,
    requests: () => [...activeProxy.log],
    blobGets: (digest) =>
      activeProxy.log.filter((r) => {
        if (r.method !== 'GET' || r.fault !== undefined) return false;
        const match = BLOB_PATH.exec(r.path);
        return match !== null && (digest === undefined || match[1] === digest);
      }),
    clearRequests: () => {
      activeProxy.log.length = 0;
    },
    setFault: (fault) => {
      activeProxy.fault = fault;
      activeProxy.faulted.clear();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await activeProxy.close();
      await proc.stop();
      await removeTempDir(dir);
    },
  };
}

/**
 * A streaming HTTP reverse proxy that forwards everything to one backend port and records each
 * request. Bodies are piped chunk by chunk in both directions, so multi-megabyte blobs are never
 * held in memory and timing stays close to what a client of the real registry would see.
 */
class CountingProxy {
  readonly log: RegistryRequest[] = [];
  fault: RegistryFault | undefined;
  /** Method and path of the requests a `firstOnly` fault has already been applied to. */
  readonly faulted = new Set<string>();
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 64 });

  private constructor(
    private readonly server: ReturnType<typeof createServer>,
    readonly port: number,
    private readonly backendPort: number,
  ) {}

  static async start(backendPort: number): Promise<CountingProxy> {
    const server = createServer();
    // Blob transfers through a slow fault can take long; Node's default request timeout would cut them.
    server.requestTimeout = 0;
    server.headersTimeout = 60_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port: 0 }, () => resolve());
    });
    const proxy = new CountingProxy(server, (server.address() as AddressInfo).port, backendPort);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      void proxy.handle(req, res);
    });
    return proxy;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    this.agent.destroy();
    await closed;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const startedAt = Date.now();
    const entry: RegistryRequest = {
      method: req.method ?? 'GET',
      path: req.url ?? '/',
      status: 0,
      range: req.headers.range,
      bytes: 0,
      auth: req.headers.authorization !== undefined,
      userAgent: req.headers['user-agent'],
      startedAt,
      ms: 0,
      fault: undefined,
      complete: false,
    };
    let recorded = false;
    const record = (): void => {
      if (recorded) return;
      recorded = true;
      entry.ms = Date.now() - startedAt;
      this.log.push(entry);
    };

    const fault = this.fault !== undefined && this.applies(this.fault, entry) ? this.fault : undefined;
    if (fault?.delayMs !== undefined && fault.delayMs > 0) {
      await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
    }
    if (fault !== undefined && Math.random() < (fault.resetRatio ?? 0)) {
      entry.fault = 'reset';
      record();
      req.socket.destroy();
      return;
    }
    if (fault !== undefined && Math.random() < (fault.status5xxRatio ?? 0)) {
      entry.fault = '5xx';
      const body = JSON.stringify({
        errors: [
          { code: 'UNAVAILABLE', message: 'service unavailable (injected by the test proxy)', detail: null },
        ],
      });
      entry.status = fault.status ?? 503;
      entry.bytes = Buffer.byteLength(body);
      res.once('close', () => {
        entry.complete = res.writableFinished;
        record();
      });
      // The request body is discarded; resuming lets the connection be reused for the next request.
      req.resume();
      res.writeHead(entry.status, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': entry.bytes,
        'docker-distribution-api-version': 'registry/2.0',
      });
      res.end(body);
      return;
    }

    const upstream = httpRequest({
      host: '127.0.0.1',
      port: this.backendPort,
      method: entry.method,
      path: entry.path,
      // The Host header stays the proxy's, so Location headers the registry builds point back here.
      headers: stripHopByHop(req.headers),
      agent: this.agent,
    });
    const counter = new CountingThrottle(fault?.bytesPerSecond, (n) => {
      entry.bytes += n;
    });
    res.once('finish', () => {
      entry.complete = true;
      record();
    });
    res.once('close', record);
    upstream.once('response', (upstreamRes: IncomingMessage) => {
      entry.status = upstreamRes.statusCode ?? 0;
      res.writeHead(entry.status, upstreamRes.statusMessage, stripHopByHop(upstreamRes.headers));
      pipeline(upstreamRes, counter, res).catch(() => {
        // Either side hung up mid-body; the entry stays marked incomplete and the sockets are gone.
        res.destroy();
      });
    });
    upstream.on('error', (err) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      entry.status = 502;
      const body = JSON.stringify({
        errors: [{ code: 'UNAVAILABLE', message: `proxy: ${err.message}`, detail: null }],
      });
      entry.bytes = Buffer.byteLength(body);
      res.writeHead(502, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': entry.bytes,
      });
      res.end(body);
    });
    pipeline(req, upstream).catch(() => {
      // The client went away while uploading; destroying the upstream request ends that exchange.
      upstream.destroy();
    });
  }

  private applies(fault: RegistryFault, entry: RegistryRequest): boolean {
    if (fault.methods !== undefined && !fault.methods.includes(entry.method)) return false;
    if (fault.match !== undefined) {
      fault.match.lastIndex = 0;
      if (!fault.match.test(entry.path)) return false;
    }
    if (fault.firstOnly) {
      const key = `${entry.method} ${entry.path}`;
      if (this.faulted.has(key)) return false;
      this.faulted.add(key);
    }
    return true;
  }
}

function stripHopByHop(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  const listed = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter((h) => h !== ''),
  );
  for (const [key, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(key) || listed.has(key)) continue;
    out[key] = value;
  }
  return out;
}

/** Passes chunks through unchanged, counting them and optionally pacing them to a byte rate. */
class CountingThrottle extends Transform {
  private readonly started = Date.now();
  private sent = 0;

  constructor(
    private readonly bytesPerSecond: number | undefined,
    private readonly onBytes: (n: number) => void,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.sent += chunk.length;
    const pass = (): void => {
      this.onBytes(chunk.length);
      callback(null, chunk);
    };
    if (this.bytesPerSecond === undefined || this.bytesPerSecond <= 0) {
      pass();
      return;
    }
    // Pacing against the total since the start keeps the average rate right despite timer jitter.
    const wait = this.started + (this.sent / this.bytesPerSecond) * 1000 - Date.now();
    if (wait <= 0) pass();
    else setTimeout(pass, wait);
  }
}
