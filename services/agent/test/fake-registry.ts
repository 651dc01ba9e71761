/**
 * A small registry over real HTTP for the agent's unit tests: blobs by digest (HEAD, GET, Range),
 * manifests by tag, optional basic auth, and a log of every request it served.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeRegistry {
  url: string;
  host: string;
  blobs: Map<string, Buffer>;
  addBlob(data: Buffer): string;
  /** Sizes HEAD reports instead of the real one, to play a registry that disagrees with the cache. */
  headSizes: Map<string, number>;
  requests: { method: string; path: string; range?: string; authorized: boolean }[];
  /** The most range GETs answered at once so far (each is held `rangeDelayMs` before its answer). */
  peakRanges(): number;
  close(): Promise<void>;
}

export async function startFakeRegistry(
  options: { user?: string; password?: string; rangeDelayMs?: number } = {},
): Promise<FakeRegistry> {
  const blobs = new Map<string, Buffer>();
  let activeRanges = 0;
  let peakRanges = 0;
  const headSizes = new Map<string, number>();
  const requests: FakeRegistry['requests'] = [];
  const expected = options.user
    ? `Basic ${Buffer.from(`${options.user}:${options.password}`).toString('base64')}`
    : undefined;
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    layers: [],
  });

  const authorized = (req: IncomingMessage) =>
    expected === undefined || req.headers.authorization === expected;
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    requests.push({
      method: req.method ?? 'GET',
      path,
      authorized: req.headers.authorization !== undefined,
      ...(req.headers.range ? { range: req.headers.range } : {}),
    });
    if (!authorized(req)) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"', 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
      return;
    }
    if (path === '/v2/') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      return;
    }
    const manifestMatch = /^\/v2\/(.+)\/manifests\/(.+)$/.exec(path);
    if (manifestMatch) {
      res.writeHead(200, {
        'content-type': 'application/vnd.oci.image.manifest.v1+json',
        'content-length': Buffer.byteLength(manifest),
        'docker-content-digest': `sha256:${createHash('sha256').update(manifest).digest('hex')}`,
      });
      res.end(req.method === 'HEAD' ? undefined : manifest);
      return;
    }
    const blobMatch = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(path);
    const blob = blobMatch?.[2] ? blobs.get(blobMatch[2]) : undefined;
    if (!blob) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown' }] }));
      return;
    }
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (range) {
      const start = Number(range[1]);
      const end = Math.min(Number(range[2]) + 1, blob.length);
      activeRanges++;
      peakRanges = Math.max(peakRanges, activeRanges);
      setTimeout(() => {
        activeRanges--;
        res.writeHead(206, {
          'content-length': end - start,
          'content-range': `bytes ${start}-${end - 1}/${blob.length}`,
        });
        res.end(req.method === 'HEAD' ? undefined : blob.subarray(start, end));
      }, options.rangeDelayMs ?? 0);
      return;
    }
    if (req.method === 'HEAD') {
      const size = headSizes.get(blobMatch?.[2] ?? '') ?? blob.length;
      res.writeHead(200, { 'content-length': size, 'docker-content-digest': blobMatch?.[2] }).end();
      return;
    }
    res.writeHead(200, { 'content-length': blob.length, 'docker-content-digest': blobMatch?.[2] });
    res.end(blob);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    blobs,
    headSizes,
    requests,
    peakRanges: () => peakRanges,
    addBlob(data) {
      const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
      blobs.set(digest, data);
      return digest;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export const randomBlob = (size: number) => randomBytes(size);
