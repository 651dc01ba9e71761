/**
 * The agent's client for origin registries: manifest pass-through, blob authorisation with the client's
 * own credentials, and ranged chunk fetches. Only registries named in config or published by discovery
 * are reachable, so the agent cannot be used as an open proxy. Each request goes to the registry's best
 * endpoint, and on to the next when one is down.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, type Dispatcher } from 'undici';
import { ShoalError } from '@shoal/mesh';
import type { RegistryEndpoints, RegistryTarget } from './endpoints.js';

export { parseRegistries, type RegistryTarget } from './endpoints.js';

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

export type Authorization =
  { ok: true; size: number } | { ok: false; status: number; headers: Record<string, string>; body: string };

/** Headers worth passing back to the client from a registry answer. */
export const passHeaders = [
  'content-type',
  'content-length',
  'docker-content-digest',
  'docker-distribution-api-version',
  'www-authenticate',
  'etag',
  'link',
  'location',
  'oci-subject',
  'oci-filters-applied',
];

export function pickHeaders(
  headers: Record<string, string | string[] | undefined>,
  names = passHeaders,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of names) {
    const value = headers[name];
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

/** Answers that say this endpoint, not the request, is at fault: another endpoint may do better. */
const endpointFault = new Set([500, 502, 503, 504]);
/** Answers worth asking again after a pause: the registry's trouble, not the request's. */
const retryable = new Set([...endpointFault, 429]);
/** The longest `Retry-After` honoured before asking again; a longer one is answered as it came. */
const MAX_RETRY_AFTER_MS = 5_000;

export interface UpstreamOptions {
  endpoints: RegistryEndpoints;
  timeoutMs: number;
  authCacheMs: number;
  onRequest?: (kind: 'manifest' | 'authorize' | 'chunk' | 'base', status: number) => void;
  /**
   * Attempts for requests sent with `retry` (authorisations, manifests, passed-through blobs): a reset,
   * a timeout, 5xx or 429 is asked again after a backoff with jitter, up to this many times in all.
   */
  attempts?: number;
  /** The first backoff; each further one doubles, with ±50% jitter. */
  retryBaseMs?: number;
}

export class Upstream {
  private readonly dispatcher: Agent;
  private readonly authCache = new Map<string, { until: number; value: Authorization }>();

  constructor(private readonly options: UpstreamOptions) {
    this.dispatcher = new Agent({
      keepAliveTimeout: 30_000,
      connections: 64,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
      connectTimeout: Math.min(options.timeoutMs, 10_000),
    });
  }

  /** The registry a request is for: `ns` when given (containerd), else the first configured one. */
  resolve(ns: string | undefined): RegistryTarget {
    if (ns === undefined || ns === '') {
      const first = this.options.endpoints.first;
      if (!first)
        throw new ShoalError('SHOAL_ERR_REGISTRY_UNKNOWN', 'no registry is configured (set registries)');
      return first;
    }
    const target = this.options.endpoints.lookup(ns);
    if (!target) {
      throw new ShoalError(
        'SHOAL_ERR_REGISTRY_UNKNOWN',
        `registry "${ns.slice(0, 100)}" is not mirrored by this agent`,
      );
    }
    return target;
  }

  /**
   * Sends a request to the registry, following redirects; credentials never follow to another host. An
   * endpoint that cannot be reached or answers 5xx is marked failed and the next one is tried; the last
   * one's answer (or error) is what the caller gets, unless `retry` is set: then an error, 5xx or 429
   * from every endpoint is tried again after a backoff, up to `attempts` times in all. Only requests
   * that change nothing are sent here, so asking again is always safe.
   */
  async send(
    target: RegistryTarget,
    method: 'GET' | 'HEAD',
    path: string,
    headers: Record<string, string>,
    options: { followRedirects?: boolean; retry?: boolean } = {},
  ): Promise<UpstreamResponse> {
    const attempts = options.retry ? Math.max(1, this.options.attempts ?? 3) : 1;
    for (let attempt = 1; ; attempt++) {
      const final = attempt >= attempts;
      let res: UpstreamResponse;
      try {
        res = await this.sendOnce(target, method, path, headers, options);
      } catch (err) {
        if (final) throw err;
        await sleep(this.backoffMs(attempt));
        continue;
      }
      if (final || !retryable.has(res.status)) return res;
      const pause = this.backoffMs(attempt, res.headers['retry-after']);
      if (pause === undefined) return res;
      await res.body.dump();
      await sleep(pause);
    }
  }

  /**
   * The pause before attempt `attempt + 1`: the registry's `Retry-After` (in seconds) when it gave one
   * no longer than MAX_RETRY_AFTER_MS (undefined when longer: not worth holding the client for), else
   * exponential backoff with jitter, so that many agents refused at once do not come back at once.
   */
  private backoffMs(attempt: number): number;
  private backoffMs(attempt: number, retryAfter: string | string[] | undefined): number | undefined;
  private backoffMs(attempt: number, retryAfter?: string | string[]): number | undefined {
    const seconds =
      typeof retryAfter === 'string' && /^\d+$/.test(retryAfter) ? Number(retryAfter) : undefined;
    if (seconds !== undefined) return seconds * 1000 <= MAX_RETRY_AFTER_MS ? seconds * 1000 : undefined;
    const base = this.options.retryBaseMs ?? 100;
    return base * 2 ** (attempt - 1) * (0.5 + Math.random());
  }

  /** One walk over the registry's endpoints, best first (see `send`). */
  private async sendOnce(
    target: RegistryTarget,
    method: 'GET' | 'HEAD',
    path: string,
    headers: Record<string, string>,
    options: { followRedirects?: boolean },
  ): Promise<UpstreamResponse> {
    const { endpoints } = this.options;
    const urls = endpoints.order(target);
    if (urls.length === 0) {
      throw new ShoalError('SHOAL_ERR_UPSTREAM', `registry ${target.name} has no endpoint at the moment`);
    }
    for (let i = 0; ; i++) {
      const base = urls[i] as string;
      const last = i === urls.length - 1;
      let res: UpstreamResponse;
      try {
        res = await this.sendTo(target, base, method, path, headers, options);
      } catch (err) {
        endpoints.failed(target.name, base, err instanceof Error ? err.message : String(err));
        if (last) throw err;
        continue;
      }
      if (endpointFault.has(res.status) && !last) {
        endpoints.failed(target.name, base, `answered ${res.status}`);
        await res.body.dump();
        continue;
      }
      endpoints.succeeded(target.name, base);
      return res;
    }
  }

  private async sendTo(
    target: RegistryTarget,
    base: string,
    method: 'GET' | 'HEAD',
    path: string,
    headers: Record<string, string>,
    options: { followRedirects?: boolean },
  ): Promise<UpstreamResponse> {
    let url = new URL(path, `${base}/`);
    let sendHeaders = { ...headers };
    for (let hop = 0; hop < 6; hop++) {
      let res: Dispatcher.ResponseData;
      try {
        res = await this.dispatcher.request({
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method,
          headers: sendHeaders,
        });
      } catch (cause) {
        const timeout = cause instanceof Error && /timeout/i.test(cause.name + cause.message);
        throw new ShoalError(
          timeout ? 'SHOAL_ERR_UPSTREAM_TIMEOUT' : 'SHOAL_ERR_UPSTREAM',
          `registry ${target.name} at ${base}: ${cause instanceof Error ? cause.message : String(cause)}`,
          { cause },
        );
      }
      const location = res.headers.location;
      if (
        options.followRedirects !== false &&
        [301, 302, 303, 307, 308].includes(res.statusCode) &&
        typeof location === 'string'
      ) {
        await res.body.dump();
        const next = new URL(location, url);
        if (next.origin !== url.origin) {
          const { authorization: _dropped, ...rest } = sendHeaders;
          sendHeaders = rest;
        }
        url = next;
        continue;
      }
      return { status: res.statusCode, headers: res.headers, body: res.body };
    }
    throw new ShoalError('SHOAL_ERR_UPSTREAM', `registry ${target.name} at ${base}: too many redirects`);
  }

  /**
   * Asks the registry whether this credential may read the blob (a HEAD with the client's own
   * Authorization), remembering the answer briefly per credential, repository and digest.
   */
  async authorizeBlob(
    target: RegistryTarget,
    repository: string,
    digest: string,
    authorization: string | undefined,
  ): Promise<Authorization> {
    const credential = authorization ? createHash('sha256').update(authorization).digest('hex') : '-';
    const key = `${target.name}\n${repository}\n${digest}\n${credential}`;
    const now = Date.now();
    const cached = this.authCache.get(key);
    if (cached && cached.until > now) return cached.value;
    const headers: Record<string, string> = {};
    if (authorization) headers.authorization = authorization;
    // The registry's own answer decides: a redirect to blob storage means "allowed", and the storage
    // behind it (which often refuses HEAD) is not asked for a decision that is not its to make.
    const res = await this.send(target, 'HEAD', `/v2/${repository}/blobs/${digest}`, headers, {
      followRedirects: false,
      retry: true,
    });
    await res.body.dump();
    this.options.onRequest?.('authorize', res.status);
    if (res.status >= 300 && res.status < 400) {
      res.status = 200;
      res.headers['content-length'] = String(
        await this.sizeFromRange(target, repository, digest, authorization),
      );
    }
    let value: Authorization;
    if (res.status === 200) {
      const size = Number(res.headers['content-length']);
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new ShoalError('SHOAL_ERR_UPSTREAM', `registry ${target.name} gave no size for ${digest}`);
      }
      value = { ok: true, size };
    } else {
      const body =
        res.status === 404
          ? 'BLOB_UNKNOWN'
          : res.status === 401
            ? 'UNAUTHORIZED'
            : res.status === 403
              ? 'DENIED'
              : 'UNKNOWN';
      value = {
        ok: false,
        status: res.status,
        headers: pickHeaders(res.headers, ['www-authenticate', 'docker-distribution-api-version']),
        body: JSON.stringify({
          errors: [{ code: body, message: `registry answered ${res.status} for ${digest}` }],
        }),
      };
    }
    // Refusals are not cached: a client that just fetched a token retries at once and must succeed.
    if (value.ok) this.authCache.set(key, { until: now + this.options.authCacheMs, value });
    if (this.authCache.size > 10_000) this.pruneAuthCache(now);
    return value;
  }

  private pruneAuthCache(now: number): void {
    for (const [key, entry] of this.authCache) if (entry.until <= now) this.authCache.delete(key);
  }

  /** The size of a blob the registry redirects for, from the total in a one-byte range answer. */
  private async sizeFromRange(
    target: RegistryTarget,
    repository: string,
    digest: string,
    authorization: string | undefined,
  ): Promise<number> {
    const headers: Record<string, string> = { range: 'bytes=0-0' };
    if (authorization) headers.authorization = authorization;
    const res = await this.send(target, 'GET', `/v2/${repository}/blobs/${digest}`, headers, { retry: true });
    res.body.destroy();
    const total = /\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''))?.[1];
    const size = total === undefined ? Number(res.headers['content-length']) : Number(total);
    if (!(res.status === 206 || res.status === 200) || !Number.isSafeInteger(size)) {
      throw new ShoalError('SHOAL_ERR_UPSTREAM', `registry ${target.name} gave no size for ${digest}`);
    }
    return size;
  }

  /** Fetches bytes [start, start + into.length) of a blob from the registry into `into`, and returns it. */
  async fetchRange(
    target: RegistryTarget,
    repository: string,
    digest: string,
    start: number,
    into: Buffer,
    authorization: string | undefined,
  ): Promise<Buffer> {
    const end = start + into.length;
    const headers: Record<string, string> = { range: `bytes=${start}-${end - 1}` };
    if (authorization) headers.authorization = authorization;
    const res = await this.send(target, 'GET', `/v2/${repository}/blobs/${digest}`, headers);
    this.options.onRequest?.('chunk', res.status);
    if (res.status !== 206 && !(res.status === 200 && start === 0)) {
      await res.body.dump();
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `registry ${target.name} answered ${res.status} for a range of ${digest}`,
        {
          details: { status: res.status },
        },
      );
    }
    const length = into.length;
    let filled = 0;
    for await (const piece of res.body) {
      const buf = piece as Buffer;
      const take = Math.min(buf.length, length - filled);
      buf.copy(into, filled, 0, take);
      filled += take;
      if (filled >= length) break;
    }
    if (res.status === 200) res.body.destroy();
    if (filled !== length) {
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `registry ${target.name} sent ${filled} of ${length} bytes of ${digest}`,
      );
    }
    return into;
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}
