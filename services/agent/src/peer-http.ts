/**
 * The HTTP/1.1 client for the peer chunk API: GET only, keep-alive, and a body read by the kernel
 * straight into the caller's chunk buffer.
 *
 * A general client (undici, node:http) reads every socket read into a fresh buffer, and on a shaped
 * link each read is a packet or two. An agent receiving at link speed allocated tens of MB per second
 * that way, and the full garbage collections to free it cost more CPU than hashing what it received.
 * Here each connection reads through `onread`: headers into a small scratch buffer of its own, the body
 * directly at its place in the chunk, so a chunk is received without a copy or an allocation. Peers are
 * other Shoal agents, which answer with Content-Length; anything else is refused.
 */
import { connect, type Socket } from 'node:net';
import { afterPendingReads } from './pending-reads.js';

/**
 * Errors opening a connection that say the peer is not there: nothing listens, no route to it, or no
 * answer to connect. This node's own troubles (out of file descriptors or ports, no name resolution)
 * are not among them.
 */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ETIMEDOUT']);

/** Response headers larger than this are refused. */
const HEADER_LIMIT = 16 * 1024;

export type PeerHttpFailure =
  /** The peer answered with a body that is not the expected length. */
  | 'length'
  /** The connection failed, timed out or broke the protocol, or the request was aborted. */
  | 'transport'
  /**
   * No connection could be opened: refused, no route, or no answer to connect in time. The peer's
   * process or host is down, or cannot be reached from here.
   */
  | 'connect';

export class PeerHttpError extends Error {
  constructor(
    message: string,
    readonly failure: PeerHttpFailure,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'PeerHttpError';
  }

  /** Whether nothing came for the timeout: no connection, no answer, or no more of the body. */
  get timedOut(): boolean {
    return (this.cause as { timeout?: boolean } | undefined)?.timeout === true;
  }
}

export interface PeerHttpOptions {
  /** For a connection to open, for the answer to start, and between reads of the body. */
  timeoutMs: number;
  /** How long an idle connection is kept for the next request to the same peer. */
  keepAliveMs: number;
  /** Idle connections kept per peer. */
  maxIdlePerPeer: number;
}

interface Exchange {
  into: Buffer;
  resolve: (status: number) => void;
  reject: (err: Error) => void;
  /** Header bytes received into the scratch buffer so far. */
  headerBytes: number;
  /** Body bytes in `into` so far; undefined until the headers are in. */
  filled: number | undefined;
  reusable: boolean;
}

class Connection {
  readonly socket: Socket;
  private readonly scratch = Buffer.allocUnsafe(HEADER_LIMIT);
  private exchange: Exchange | undefined;
  /** Requests sent on this connection; a broken connection that has served one may merely have gone stale. */
  served = 0;
  /** Whether any byte of the answer to the latest request has arrived. */
  answered = false;
  /** Whether the connection was ever opened; a peer found absent before that is a `connect` failure. */
  private connected = false;
  /** Bytes read on this connection, headers included. */
  private bytesIn = 0;
  onIdle: (() => void) | undefined;
  onGone: (() => void) | undefined;

  constructor(host: string, port: number, connectTimeoutMs: number) {
    this.socket = connect({
      host,
      port,
      noDelay: true,
      onread: {
        buffer: () => this.nextBuffer(),
        callback: (count: number) => this.received(count),
      },
    });
    this.socket.setTimeout(connectTimeoutMs);
    this.socket.once('connect', () => {
      this.connected = true;
    });
    this.socket.on('timeout', () => this.timedOut());
    this.socket.on('error', (err: NodeJS.ErrnoException) =>
      this.fail(
        new PeerHttpError(
          err.message,
          !this.connected && UNREACHABLE.has(err.code ?? '') ? 'connect' : 'transport',
          { cause: err },
        ),
      ),
    );
    this.socket.on('end', () => this.fail(new PeerHttpError('the peer closed the connection', 'transport')));
    this.socket.on('close', () => {
      this.fail(new PeerHttpError('the connection closed', 'transport'));
      this.onGone?.();
    });
  }

  get busy(): boolean {
    return this.exchange !== undefined;
  }

  /** Sends a GET and resolves with the status once the body is in `into` (200) or with any other status. */
  request(head: string, into: Buffer, timeoutMs: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.exchange = { into, resolve, reject, headerBytes: 0, filled: undefined, reusable: true };
      this.served++;
      this.answered = false;
      this.socket.setTimeout(timeoutMs);
      this.socket.write(head, 'latin1');
    });
  }

  /**
   * Nothing was read for the timeout, or so it seems: the verdict on a request waits for this turn's reads
   * (see afterPendingReads). Anything read by then, which also re-arms the socket's timeout, or the
   * connection opening, means the peer was answering all along. An idle kept connection that expires is
   * closed at once, before anything can take it from the pool for a new request.
   */
  private timedOut(): void {
    const exchange = this.exchange;
    if (!exchange && this.connected) {
      this.fail(new PeerHttpError('idle', 'transport'));
      return;
    }
    const seen = this.activity();
    afterPendingReads(() => {
      if (this.socket.destroyed || this.exchange !== exchange || this.activity() !== seen) return;
      this.fail(
        new PeerHttpError(
          this.connected ? 'no answer in time' : 'no connection in time',
          this.connected ? 'transport' : 'connect',
          { cause: { timeout: true } },
        ),
      );
    });
  }

  private activity(): number {
    return this.bytesIn + (this.connected ? 1 : 0);
  }

  /** Fails the request in progress, if any, and closes the connection. */
  fail(err: Error): void {
    const exchange = this.exchange;
    this.exchange = undefined;
    if (!this.socket.destroyed) this.socket.destroy();
    exchange?.reject(err);
  }

  /** Where the next read goes: the rest of the chunk once the headers are in, else the scratch buffer. */
  private nextBuffer(): Buffer {
    const exchange = this.exchange;
    if (exchange?.filled !== undefined && exchange.filled < exchange.into.length)
      return exchange.into.subarray(exchange.filled);
    return exchange ? this.scratch.subarray(exchange.headerBytes) : this.scratch;
  }

  private received(count: number): boolean {
    this.answered = true;
    this.bytesIn += count;
    const exchange = this.exchange;
    if (!exchange) {
      this.fail(new PeerHttpError('the peer sent bytes nobody asked for', 'transport'));
      return false;
    }
    if (exchange.filled !== undefined) {
      exchange.filled += count;
    } else {
      exchange.headerBytes += count;
      const end = this.scratch.subarray(0, exchange.headerBytes).indexOf('\r\n\r\n');
      if (end === -1) {
        if (exchange.headerBytes === HEADER_LIMIT)
          this.fail(new PeerHttpError(`response headers over ${HEADER_LIMIT} bytes`, 'transport'));
        return true;
      }
      if (!this.headers(exchange, end)) return false;
    }
    if (exchange.filled === exchange.into.length) this.finish(exchange);
    return true;
  }

  /** Parses the headers that end at `end`; false when the exchange is over (failed or not a 200). */
  private headers(exchange: Exchange, end: number): boolean {
    const lines = this.scratch.toString('latin1', 0, end).split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
    if (!status) {
      this.fail(
        new PeerHttpError(`not an HTTP response: ${JSON.stringify(lines[0]?.slice(0, 40))}`, 'transport'),
      );
      return false;
    }
    let length: number | undefined;
    let encoded = false;
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === 'content-length') length = /^\d+$/.test(value) ? Number(value) : Number.NaN;
      else if (name === 'connection' && value.toLowerCase() === 'close') exchange.reusable = false;
      else if (name === 'transfer-encoding') encoded = true;
    }
    // A transfer encoding overrides any length, wherever the headers put it; peers never send one.
    if (encoded) length = Number.NaN;
    const code = Number(status[1]);
    if (code !== 200) {
      // The body of a refusal is not needed; the connection goes rather than be drained.
      this.exchange = undefined;
      this.socket.destroy();
      exchange.resolve(code);
      return false;
    }
    const expected = exchange.into.length;
    if (length !== expected) {
      this.fail(
        new PeerHttpError(
          length === undefined || Number.isNaN(length)
            ? 'the peer sent no usable content-length'
            : `the peer would send ${length} bytes, not ${expected}`,
          'length',
        ),
      );
      return false;
    }
    // Body bytes that came with the headers are copied once; the rest are read into place.
    const early = exchange.headerBytes - (end + 4);
    if (early > expected) {
      this.fail(new PeerHttpError(`the peer sent more than ${expected} bytes`, 'length'));
      return false;
    }
    this.scratch.copy(exchange.into, 0, end + 4, exchange.headerBytes);
    exchange.filled = early;
    return true;
  }

  private finish(exchange: Exchange): void {
    this.exchange = undefined;
    if (exchange.reusable) this.onIdle?.();
    else this.socket.destroy();
    exchange.resolve(200);
  }
}

/** Keep-alive connections to peers, by host:port. */
export class PeerHttp {
  private readonly idle = new Map<string, Connection[]>();
  private closed = false;

  constructor(private readonly options: PeerHttpOptions) {}

  /**
   * GETs `path` from `origin` (http://host:port), reading a 200's body into `into`, which must be exactly
   * its length. Resolves with the status; the body of any other status is not read.
   */
  async get(
    origin: URL,
    path: string,
    headers: Record<string, string>,
    into: Buffer,
    signal: AbortSignal,
  ): Promise<number> {
    signal.throwIfAborted();
    let head = `GET ${path} HTTP/1.1\r\nhost: ${origin.host}\r\n`;
    for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`;
    head += '\r\n';
    const key = `${origin.hostname}:${origin.port || '80'}`;
    for (;;) {
      const connection = this.take(key) ?? this.open(key, origin);
      const reused = connection.served > 0;
      const abort = () =>
        connection.fail(
          new PeerHttpError(
            String(signal.reason instanceof Error ? signal.reason.message : signal.reason),
            'transport',
            {
              cause: signal.reason,
            },
          ),
        );
      signal.addEventListener('abort', abort, { once: true });
      try {
        return await connection.request(head, into, this.options.timeoutMs);
      } catch (err) {
        // A kept connection the peer has just closed fails before any answer; that is not the peer
        // failing, so the request is sent again on a new connection. A peer that is merely slow to
        // answer (a timeout) is not asked twice.
        if (
          reused &&
          !signal.aborted &&
          err instanceof PeerHttpError &&
          err.failure === 'transport' &&
          !connection.answered &&
          !err.timedOut
        )
          continue;
        throw err;
      } finally {
        signal.removeEventListener('abort', abort);
      }
    }
  }

  /** Closes every idle connection; requests in progress finish or fail on their own, and are not kept. */
  close(): void {
    this.closed = true;
    for (const connections of this.idle.values()) for (const c of connections) c.socket.destroy();
    this.idle.clear();
  }

  private take(key: string): Connection | undefined {
    const connections = this.idle.get(key);
    const connection = connections?.pop();
    if (connections?.length === 0) this.idle.delete(key);
    return connection;
  }

  private open(key: string, origin: URL): Connection {
    // An IPv6 address is bracketed in a URL, and not in a socket address.
    const host = origin.hostname.replace(/^\[(.*)\]$/, '$1');
    const connection = new Connection(host, Number(origin.port || 80), this.options.timeoutMs);
    connection.onIdle = () => {
      const connections = this.idle.get(key) ?? [];
      if (this.closed || connections.length >= this.options.maxIdlePerPeer) {
        connection.socket.destroy();
        return;
      }
      connection.socket.setTimeout(this.options.keepAliveMs);
      connections.push(connection);
      this.idle.set(key, connections);
    };
    connection.onGone = () => {
      const connections = this.idle.get(key);
      const at = connections?.indexOf(connection) ?? -1;
      if (connections && at !== -1) connections.splice(at, 1);
      if (connections?.length === 0) this.idle.delete(key);
    };
    return connection;
  }
}
