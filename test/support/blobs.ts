/**
 * Pushing a bare blob to a registry with the distribution API's monolithic upload (POST, then PUT with
 * the digest), for tests and benchmarks that need a blob of a given size or content and no image around it.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import type { Readable } from 'node:stream';

/** Pushes `data` to `repository` at `registryUrl` (http://host:port); returns its digest. */
export async function pushBlob(registryUrl: string, repository: string, data: Buffer): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  await upload(registryUrl, repository, digest, data.length, (write) => write(data));
  return digest;
}

/**
 * Pushes the file at `path` (sparse or not) as a blob, streaming it; `digest` is computed by reading the
 * file first unless given.
 */
export async function pushBlobFile(
  registryUrl: string,
  repository: string,
  path: string,
  digest?: string,
): Promise<string> {
  const size = (await stat(path)).size;
  const known = digest ?? (await fileDigest(path));
  await upload(registryUrl, repository, known, size, (_write, stream) => stream(createReadStream(path)));
  return known;
}

export async function fileDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const piece of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 }))
    hash.update(piece as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

async function upload(
  registryUrl: string,
  repository: string,
  digest: string,
  size: number,
  body: (write: (data: Buffer) => void, stream: (source: Readable) => void) => void,
): Promise<void> {
  const start = await fetch(`${registryUrl}/v2/${repository}/blobs/uploads/`, { method: 'POST' });
  await start.body?.cancel();
  const location = start.headers.get('location');
  if (start.status !== 202 || !location) throw new Error(`upload of ${digest} refused: ${start.status}`);
  const url = new URL(location, registryUrl);
  url.searchParams.set('digest', digest);
  await new Promise<void>((resolve, reject) => {
    const req = httpRequest(
      url,
      {
        method: 'PUT',
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      },
      (res) => {
        res.resume();
        res.once('end', () =>
          res.statusCode === 201
            ? resolve()
            : reject(new Error(`upload of ${digest} failed: ${res.statusCode}`)),
        );
      },
    );
    req.once('error', reject);
    body(
      (data) => req.end(data),
      (source) => {
        source.once('error', reject);
        source.pipe(req);
      },
    );
  });
}
