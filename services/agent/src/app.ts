/**
 * The agent's HTTP face: the registry mirror API for the container runtime (containerd hosts.toml with
 * `?ns=`, or clients naming the agent directly), the peer chunk API, the preheat API, the limits API,
 * /metrics and /healthz. The builder never listens, so tests drive it with inject() or listen on a port of their
 * choosing.
 */
import type { OutgoingHttpHeaders } from 'node:http';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Registry } from 'prom-client';
import {
  assertRepositoryName,
  chunkRange,
  type ChunkSourceKind,
  type EventPublisher,
  isShoalError,
  limitsPath,
  type Logger,
  ociErrorBody,
  parseDigest,
  ShoalError,
  MESH_TOKEN_HEADER,
  PREHEAT_MAX_DIGESTS,
  preheatPaths,
  verifyPeerAuthorization,
} from '@shoal/mesh';
import type { BufferPool } from './buffers.js';
import { FileSender } from './file-sender.js';
import { type AgentLimiters, parseLimitsChange } from './limits.js';
import type { MemoryTier } from './memory-tier.js';
import type { AgentMetrics } from './metrics.js';
import {
  createPreheatJobs,
  defaultPreheatOptions,
  parsePreheatRequest,
  type PreheatOptions,
} from './preheat.js';
import { type ByteRange, parseRange } from './ranges.js';
import type { ChunkStore } from './store.js';
import type { Download, Transfers } from './transfer.js';
import { passHeaders, pickHeaders, type RegistryTarget, type Upstream } from './upstream.js';

export interface HttpDeps {
  nodeId: string;
  /** When set, the peer API serves only requests carrying a token signed with it. */
  peerSecret: string;
  store: ChunkStore;
  upstream: Upstream;
  transfers: Transfers;
  /** Buffers for sending chunk files, shared with the downloads. */
  buffers: BufferPool;
  metrics: AgentMetrics;
  registry: Registry;
  events: EventPublisher;
  log: Logger;
  health: () => Record<string, unknown> & { ok: boolean };
  /** Limits of the preheat API; the defaults unless given. */
  preheat?: PreheatOptions;
  /** Hot chunks, served before the disk cache. */
  memory: MemoryTier;
  /** Rate limits, upload slots and peer.share, all changeable at run time through the limits API. */
  limits: AgentLimiters;
  /** Brings the metrics fed from counters elsewhere up to date; run before every scrape. */
  refreshMetrics?: () => void;
}

const blobPath = /^\/v2\/(.+)\/blobs\/([^/]+)$/;
const otherPath = /^\/v2\/(.+)\/(manifests\/[^/]+|tags\/list|referrers\/[^/]+)$/;

interface ParsedV2 {
  kind: 'blob' | 'passthrough' | 'base';
  repository?: string;
  digest?: string;
  upstreamPath: string;
}

function parseV2Path(rawPath: string, search: string): ParsedV2 {
  let path: string;
  try {
    path = decodeURIComponent(rawPath);
  } catch {
    throw new ShoalError('SHOAL_ERR_NAME_INVALID', 'malformed URL encoding in path');
  }
  if (path === '/v2' || path === '/v2/') return { kind: 'base', upstreamPath: '/v2/' };
  const blob = blobPath.exec(path);
  if (blob?.[1] && blob[2]) {
    assertRepositoryName(blob[1]);
    parseDigest(blob[2]);
    return {
      kind: 'blob',
      repository: blob[1],
      digest: blob[2],
      upstreamPath: `/v2/${blob[1]}/blobs/${blob[2]}`,
    };
  }
  const other = otherPath.exec(path);
  if (other?.[1] && other[2]) {
    assertRepositoryName(other[1]);
    const rest = other[2];
    // Only digests may follow referrers/: anything else could walk out of the repository's path.
    if (rest.startsWith('referrers/')) parseDigest(rest.slice('referrers/'.length));
    if (rest.startsWith('manifests/')) {
      const reference = rest.slice('manifests/'.length);
      if (!/^([A-Za-z0-9_][A-Za-z0-9._-]{0,127}|sha256:[a-f0-9]{64})$/.test(reference)) {
        throw new ShoalError(
          'SHOAL_ERR_NAME_INVALID',
          `invalid manifest reference "${reference.slice(0, 80)}"`,
        );
      }
    }
    // Query parameters other than the mirror's own `ns` belong to the registry (tag pagination).
    const params = new URLSearchParams(search);
    params.delete('ns');
    const query = params.toString();
    return {
      kind: 'passthrough',
      repository: other[1],
      upstreamPath: `/v2/${other[1]}/${rest}${query ? `?${query}` : ''}`,
    };
  }
  throw new ShoalError('SHOAL_ERR_NAME_INVALID', 'not a registry API path this mirror serves');
}

export function buildAgentApp(deps: HttpDeps): FastifyInstance {
  const app = Fastify({
    logger: false,
    // Registry paths carry slashes inside repository names; they are parsed by hand below.
    routerOptions: { ignoreDuplicateSlashes: false, maxParamLength: 1024 },
    bodyLimit: 1024,
    exposeHeadRoutes: false,
    // Errors found before routing (a URL that does not decode) get the OCI error format like all others.
    frameworkErrors: (error, _request, reply) => {
      const shoal = new ShoalError(
        error.code === 'FST_ERR_BAD_URL' ? 'SHOAL_ERR_NAME_INVALID' : 'SHOAL_ERR_BAD_MESSAGE',
        error.code === 'FST_ERR_BAD_URL' ? 'malformed URL encoding in path' : error.message,
      );
      // The reply's generic types describe routes; this one answers before any route.
      const plain = reply as unknown as FastifyReply;
      void plain.code(shoal.status).header('content-type', 'application/json').send(ociErrorBody(shoal));
    },
  });

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    deps.metrics.requestDuration.observe(
      { route, method: request.method, status: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });

  app.setErrorHandler(async (error, request, reply) => {
    const statusCode = (error as { statusCode?: number }).statusCode ?? 500;
    const shoal = isShoalError(error)
      ? error
      : statusCode === 404
        ? new ShoalError('SHOAL_ERR_BLOB_UNKNOWN', 'not found')
        : statusCode >= 400 && statusCode < 500
          ? // A body fastify could not take (not JSON, too large, wrong content type) is the client's error.
            new ShoalError('SHOAL_ERR_BAD_MESSAGE', error instanceof Error ? error.message : 'bad request')
          : new ShoalError('SHOAL_ERR_INTERNAL', 'internal error', { cause: error });
    if (shoal.code === 'SHOAL_ERR_INTERNAL')
      deps.log.error({ err: error, url: request.url }, 'request failed');
    if (shoal.code === 'SHOAL_ERR_RANGE_INVALID' && typeof shoal.details?.size === 'number') {
      void reply.header('content-range', `bytes */${shoal.details.size}`);
    }
    void reply.code(shoal.status).header('content-type', 'application/json');
    return ociErrorBody(shoal);
  });

  app.setNotFoundHandler(async (_request, reply) => {
    void reply.code(404).header('content-type', 'application/json');
    return ociErrorBody(new ShoalError('SHOAL_ERR_BLOB_UNKNOWN', 'not found'));
  });

  app.get('/metrics', async (_request, reply) => {
    deps.refreshMetrics?.();
    void reply.header('content-type', deps.registry.contentType);
    return deps.registry.metrics();
  });

  app.get('/healthz', async (_request, reply) => {
    const state = deps.health();
    void reply.code(state.ok ? 200 : 503);
    return state;
  });

  app.get<{ Params: { hex: string; index: string } }>(
    '/peer/v1/blobs/sha256/:hex/chunks/:index',
    async (request, reply) => {
      const { hex, index: indexText } = request.params;
      if (!/^[a-f0-9]{64}$/.test(hex) || !/^\d{1,7}$/.test(indexText)) {
        throw new ShoalError('SHOAL_ERR_DIGEST_INVALID', 'invalid blob or chunk index');
      }
      const peer = deps.peerSecret
        ? verifyPeerAuthorization(deps.peerSecret, request.headers.authorization)
        : request.ip;
      if (peer === undefined) {
        throw new ShoalError('SHOAL_ERR_UNAUTHORIZED', 'the peer API needs a valid mesh token');
      }
      if (!deps.limits.share) {
        throw new ShoalError('SHOAL_ERR_NOT_SHARING', 'this node does not serve peers (peer.share is false)');
      }
      // A peer gets a few uploads at once; asking for more, it is told to try another holder.
      const release = deps.limits.uploadsPerPeer.tryAcquire(peer);
      if (!release) {
        deps.metrics.peerUploadsRefused.inc();
        void reply.header('retry-after', '1');
        throw new ShoalError(
          'SHOAL_ERR_BUSY',
          `this node is already serving ${deps.limits.uploadsPerPeer.limit} chunks to ${peer}`,
        );
      }
      // Pinned before the lookup, so an eviction cannot take the files between the lookup and the read.
      const unpin = deps.store.pin(hex);
      try {
        const index = Number(indexText);
        const blob = deps.store.get(hex);
        if (!blob?.have.has(index))
          throw new ShoalError('SHOAL_ERR_CHUNK_UNAVAILABLE', 'chunk not held by this node');
        const { start, end } = chunkRange(blob.meta.size, blob.meta.chunkSize, index);
        const hot = deps.memory.get(hex, index);
        // Written through reused buffers, as blobs to clients are (see FileSender).
        reply.hijack();
        const res = reply.raw;
        res.writeHead(200, {
          'content-type': 'application/octet-stream',
          'content-length': String(end - start),
        });
        const sender = new FileSender(res, deps.buffers, deps.limits.peerUploads);
        const counted = (count: number) => deps.metrics.peerUploadBytes.inc(count);
        try {
          if (hot) {
            await sender.sendBuffer(hot, 0, end - start, counted);
          } else {
            deps.metrics.diskTierHits.inc();
            await sender.send({ path: deps.store.chunkPath(hex, index), from: 0, to: end - start }, counted);
          }
          await sender.flushed();
          res.end();
        } catch {
          // The child went away or the file could not be read; it sees a short body and tries elsewhere.
          res.destroy();
        }
        return reply;
      } finally {
        unpin();
        release();
      }
    },
  );

  const preheats = createPreheatJobs(
    {
      store: deps.store,
      upstream: deps.upstream,
      transfers: deps.transfers,
      metrics: deps.metrics,
      log: deps.log,
    },
    deps.preheat ?? defaultPreheatOptions,
  );
  app.addHook('onClose', async () => preheats.close());

  /**
   * The preheat API makes this node download and the limits API changes how it behaves: only members of
   * the mesh may ask. The limits API carries no registry credential, so its token may come in
   * `Authorization` too.
   */
  const meshTokenCheck = (api: string, orAuthorization: boolean) => async (request: FastifyRequest) => {
    if (!deps.peerSecret) return;
    const header = request.headers[MESH_TOKEN_HEADER];
    const value =
      (Array.isArray(header) ? header[0] : header) ??
      (orAuthorization ? request.headers.authorization : undefined);
    if (value === undefined) {
      throw new ShoalError(
        'SHOAL_ERR_UNAUTHORIZED',
        `the ${api} API needs a mesh token in the ${MESH_TOKEN_HEADER} header`,
      );
    }
    if (verifyPeerAuthorization(deps.peerSecret, value) === undefined) {
      throw new ShoalError('SHOAL_ERR_DENIED', 'the mesh token is not valid: wrong peer.secret, or expired');
    }
  };
  const requireMeshToken = meshTokenCheck('preheat', false);
  const limitsAuth = meshTokenCheck('limits', true);
  // Reading the limits is harmless; changing them (and keeping the change across restarts) is not left
  // open to anyone who reaches the port, as a mesh without peer.secret leaves its other APIs.
  const limitsChangeAuth = async (request: FastifyRequest) => {
    if (!deps.peerSecret) {
      throw new ShoalError(
        'SHOAL_ERR_UNAUTHORIZED',
        'this agent has no peer.secret, so its limits cannot be changed through the API; set peer.secret (or change its configuration)',
      );
    }
    await limitsAuth(request);
  };

  app.get(limitsPath, { onRequest: limitsAuth }, async () => deps.limits.view());
  // Applied at once: waiting transfers are re-timed, a smaller cache is swept before the answer. The
  // change is saved first, so it is in force after a restart too.
  app.put(limitsPath, { onRequest: limitsChangeAuth }, async (request) => {
    const change = parseLimitsChange(request.body);
    const applied = await deps.limits.change(change);
    deps.log.info({ change, limits: applied }, 'limits changed');
    return applied;
  });
  app.delete(limitsPath, { onRequest: limitsChangeAuth }, async () => {
    const applied = await deps.limits.reset();
    deps.log.info({ limits: applied }, 'limits overrides dropped: the configured limits apply');
    return applied;
  });
  const unknownJob = (id: string) =>
    new ShoalError(
      'SHOAL_ERR_BLOB_UNKNOWN',
      `no preheat job "${id.slice(0, 40)}" on this agent (finished jobs are forgotten after a while)`,
    );

  // The client's Authorization is the registry credential: it is used for this job only, never stored.
  app.post(
    preheatPaths.start,
    // Room for the most digests a job may name, each about 75 bytes of JSON.
    { bodyLimit: 16_384 + PREHEAT_MAX_DIGESTS * 80, onRequest: requireMeshToken },
    async (request, reply) => {
      const body = parsePreheatRequest(request.body);
      const target = deps.upstream.resolve(body.registry);
      const id = preheats.start(target, body.repository, body.digests, request.headers.authorization);
      void reply.code(202);
      return { id };
    },
  );
  app.get<{ Params: { id: string } }>(
    preheatPaths.jobRoute,
    { onRequest: requireMeshToken },
    async (request) => {
      const view = preheats.view(request.params.id);
      if (!view) throw unknownJob(request.params.id);
      return view;
    },
  );
  app.delete<{ Params: { id: string } }>(
    preheatPaths.jobRoute,
    { onRequest: requireMeshToken },
    async (request) => {
      const view = preheats.cancel(request.params.id);
      if (!view) throw unknownJob(request.params.id);
      return view;
    },
  );

  const unsupported = async () => {
    throw new ShoalError('SHOAL_ERR_UNSUPPORTED', 'this mirror is read-only; push to the registry itself');
  };
  for (const method of ['PUT', 'POST', 'PATCH', 'DELETE'] as const) {
    app.route({ method, url: '/v2/*', handler: unsupported });
  }

  const handleV2 = async (request: FastifyRequest<{ Querystring: { ns?: string } }>, reply: FastifyReply) => {
    const queryIndex = request.url.indexOf('?');
    const rawPath = queryIndex === -1 ? request.url : request.url.slice(0, queryIndex);
    const search = queryIndex === -1 ? '' : request.url.slice(queryIndex);
    const parsed = parseV2Path(rawPath, search);
    const target = deps.upstream.resolve(request.query.ns ?? registryOfDistributedHost(request.headers.host));
    const authorization = request.headers.authorization;
    if (parsed.kind === 'blob' && parsed.repository && parsed.digest) {
      return serveBlob(request, reply, target, parsed.repository, parsed.digest, authorization);
    }
    return passThrough(
      request,
      reply,
      target,
      parsed.upstreamPath,
      parsed.kind === 'base' ? 'base' : 'manifest',
    );
  };
  app.get('/v2/*', handleV2);
  app.head('/v2/*', handleV2);
  app.get('/v2', handleV2);

  async function passThrough(
    request: FastifyRequest,
    reply: FastifyReply,
    target: RegistryTarget,
    path: string,
    kind: 'manifest' | 'base',
  ) {
    const headers: Record<string, string> = {};
    for (const name of ['accept', 'authorization', 'if-none-match', 'user-agent'] as const) {
      const value = request.headers[name];
      if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    }
    const method = request.method === 'HEAD' ? 'HEAD' : 'GET';
    const res = await deps.upstream.send(target, method, path, headers, { retry: true });
    deps.metrics.originRequests.inc({ kind, status: `${Math.floor(res.status / 100)}xx` });
    void reply.code(res.status).headers(pickHeaders(res.headers));
    if (method === 'HEAD') {
      await res.body.dump();
      return reply.send();
    }
    return reply.send(res.body);
  }

  async function serveBlob(
    request: FastifyRequest,
    reply: FastifyReply,
    target: RegistryTarget,
    repository: string,
    digest: string,
    authorization: string | undefined,
  ) {
    // Every blob read is authorised by the registry with the client's own credentials, even when the
    // bytes are cached here: a private layer never reaches a client the registry would refuse.
    const auth = await deps.upstream.authorizeBlob(target, repository, digest, authorization);
    deps.metrics.originRequests.inc({
      kind: 'authorize',
      status: auth.ok ? '2xx' : `${Math.floor(auth.status / 100)}xx`,
    });
    if (!auth.ok) {
      void reply.code(auth.status).headers(auth.headers).header('content-type', 'application/json');
      return reply.send(auth.body);
    }
    const size = auth.size;
    const range = parseRange(request.headers.range, size);
    const { start, end } = range ?? { start: 0, end: size };
    void reply
      .header('docker-content-digest', digest)
      .header('accept-ranges', 'bytes')
      .header('content-type', 'application/octet-stream')
      .header('content-length', String(end - start));
    if (range) void reply.code(206).header('content-range', `bytes ${start}-${end - 1}/${size}`);
    if (request.method === 'HEAD' || size === 0) return reply.send();

    const hex = digest.slice('sha256:'.length);
    // Held until the last byte is out (or the request is passed through), so eviction keeps the blob.
    const unpin = deps.store.pin(hex);
    try {
      return await streamBlob(
        request,
        reply,
        target,
        repository,
        digest,
        authorization,
        hex,
        size,
        start,
        end,
      );
    } finally {
      unpin();
    }
  }

  async function streamBlob(
    request: FastifyRequest,
    reply: FastifyReply,
    target: RegistryTarget,
    repository: string,
    digest: string,
    authorization: string | undefined,
    hex: string,
    size: number,
    start: number,
    end: number,
  ) {
    const began = performance.now();
    deps.events.publish({
      type: 'pull_started',
      node: deps.nodeId,
      blob: digest,
      registry: target.name,
      repository,
      size,
    });
    const stored = deps.store.get(hex);
    const active = deps.transfers.active(hex);
    // The registry's size is the truth. A copy here or a download under way that disagrees cannot serve
    // this client: pass the request through to the registry rather than guess.
    if ((stored && stored.meta.size !== size) || (active && active.size !== size)) {
      return passBlobThrough(
        request,
        reply,
        target,
        repository,
        digest,
        authorization,
        'size differs from the cache',
      );
    }
    if (!stored?.complete && !active) {
      let held = 0;
      if (stored) {
        for (const i of stored.have.indices()) {
          const range = chunkRange(size, stored.meta.chunkSize, i);
          held += range.end - range.start;
        }
      }
      // The cache is full of blobs in use: serve this one from the registry rather than grow it further.
      if (!deps.store.canStore(size - held)) {
        deps.metrics.cacheFull.inc({ action: 'passthrough' });
        return passBlobThrough(
          request,
          reply,
          target,
          repository,
          digest,
          authorization,
          'the cache is full of blobs in use',
        );
      }
    }
    const cachedAtStart = new Set(stored ? stored.have.indices() : []);
    const download = stored?.complete
      ? undefined
      : deps.transfers.get({ target, repository, digest, size, authorization });
    if (download) await download.ready;
    const chunkSize = download ? download.chunkSize : (stored?.meta.chunkSize ?? 0);
    const first = Math.floor(start / chunkSize);
    const last = Math.floor((end - 1) / chunkSize);
    // Wait for the first chunk before answering: if the mesh cannot deliver it at all (registry refusing
    // the download's credentials, cache not writable), the client is served by the registry directly.
    if (download) {
      try {
        await download.waitChunk(first);
      } catch (err) {
        const reason = err instanceof Error ? err.message : String(err);
        return passBlobThrough(request, reply, target, repository, digest, authorization, reason);
      }
    }

    const bytes: Record<ChunkSourceKind, number> = { peer: 0, origin: 0, cache: 0 };
    const chunks: Record<ChunkSourceKind, number> = { peer: 0, origin: 0, cache: 0 };
    const finish = (ok: boolean, error?: string) => {
      deps.events.publish({
        type: 'pull_finished',
        node: deps.nodeId,
        blob: digest,
        size: end - start,
        ms: Math.round(performance.now() - began),
        ok,
        bytes,
        chunks,
        ...(error ? { error } : {}),
      });
    };
    // The bytes are written to the socket from the chunk files through a few reused buffers (see
    // FileSender), so serving allocates nothing per chunk; onResponse still records the request.
    reply.hijack();
    const res = reply.raw;
    res.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);
    const sender = new FileSender(res, deps.buffers);
    let ok = false;
    let error: string | undefined;
    try {
      for (let index = first; index <= last; index++) {
        if (download) await download.waitChunk(index);
        const chunkStart = index * chunkSize;
        const from = Math.max(start, chunkStart) - chunkStart;
        const to = Math.min(end, chunkStart + chunkSize) - chunkStart;
        const source: ChunkSourceKind = cachedAtStart.has(index)
          ? 'cache'
          : (sourceOf(download, index) ?? 'cache');
        const counted = (count: number) => {
          bytes[source] += count;
          deps.metrics.clientBytes.inc({ source }, count);
        };
        const hot = deps.memory.get(hex, index);
        if (hot) {
          await sender.sendBuffer(hot, from, to, counted);
        } else {
          deps.metrics.diskTierHits.inc();
          await sender.send({ path: deps.store.chunkPath(hex, index), from, to }, counted);
        }
        deps.store.touch(hex);
        chunks[source] += 1;
      }
      await sender.flushed();
      res.end();
      ok = true;
    } catch (err) {
      // Headers are out: all that can be said to the client is that the body is short.
      error = err instanceof Error ? err.message : String(err);
      res.destroy();
    } finally {
      // Also reached when the client goes away mid-stream, so every pull is accounted for.
      finish(ok, ok ? undefined : error);
    }
    return reply;
  }

  /** Streams a blob straight from the registry, for when the mesh path cannot serve this client. */
  async function passBlobThrough(
    request: FastifyRequest,
    reply: FastifyReply,
    target: RegistryTarget,
    repository: string,
    digest: string,
    authorization: string | undefined,
    reason: string,
  ) {
    deps.metrics.fallbacks.inc({ reason: 'passthrough' });
    deps.events.publish({
      type: 'fallback',
      node: deps.nodeId,
      blob: digest,
      reason: `passed through: ${reason}`,
    });
    const headers: Record<string, string> = {};
    if (authorization) headers.authorization = authorization;
    if (request.headers.range) headers.range = request.headers.range;
    const res = await deps.upstream.send(target, 'GET', `/v2/${repository}/blobs/${digest}`, headers, {
      retry: true,
    });
    deps.metrics.originRequests.inc({ kind: 'passthrough', status: `${Math.floor(res.status / 100)}xx` });
    reply.removeHeader('content-length');
    reply.removeHeader('content-range');
    void reply
      .code(res.status)
      .headers(pickHeaders(res.headers, [...passHeaders, 'content-range', 'accept-ranges']));
    res.body.on('data', (piece: Buffer) => deps.metrics.clientBytes.inc({ source: 'origin' }, piece.length));
    return reply.send(res.body);
  }

  return app;
}

function sourceOf(download: Download | undefined, index: number): ChunkSourceKind | undefined {
  return download?.fetchedFrom.get(index);
}

export type { ByteRange };

/**
 * The registry a Docker node means by a "distributed" host name: `<label>-distributed.<rest>` (any port)
 * is registry `<label>.<rest>`. Docker cannot name a mirror per registry, so nodes resolve that name to
 * themselves and pull from it.
 */
export function registryOfDistributedHost(host: string | undefined): string | undefined {
  if (!host) return undefined;
  const name = host.replace(/:\d+$/, '').toLowerCase();
  const dot = name.indexOf('.');
  const label = dot === -1 ? name : name.slice(0, dot);
  if (!label.endsWith('-distributed') || label === '-distributed') return undefined;
  return `${label.slice(0, -'-distributed'.length)}${dot === -1 ? '' : name.slice(dot)}`;
}
