import { createCipheriv, createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';
import { runChecked } from './process.js';
import { makeTempDir, removeTempDir } from './tmp.js';

/** Where to push: a kit registry, or any plain-HTTP registry given by host and optional credentials. */
export interface PushTarget {
  /** host:port used in the returned image reference (the counting proxy for a kit registry). */
  host: string;
  /** Base URL the image is pushed to and the manifest read from; http://<host> unless given. */
  backendUrl?: string;
  credentials?: { username: string; password: string } | undefined;
}

export interface BuildImageOptions {
  registry: PushTarget;
  repo: string;
  tag: string;
  /** Number of layers; each holds one file. */
  layers: number;
  /** Size in bytes of the file in each layer; compressed layers come out about 0.05% larger. */
  layerSize: number;
  /**
   * Makes the layer contents (and so their digests) reproducible: the same seed, index and size
   * give the same layer in every image, which lets tests build images that share layers. A random
   * seed is used unless given, so unrelated images never share blobs by accident.
   */
  seed?: string;
  /**
   * Push through the counting proxy instead of straight to the registry. Off by default so the
   * push does not show up in the request log that tests assert on.
   */
  pushThroughProxy?: boolean;
}

export interface ImageLayer {
  digest: string;
  size: number;
  mediaType: string;
}

export interface BuiltImage {
  /** host/repo:tag, where host is the counting proxy of a kit registry. */
  ref: string;
  /** host/repo@sha256:… */
  digestRef: string;
  host: string;
  repo: string;
  tag: string;
  seed: string;
  manifestDigest: string;
  manifestMediaType: string;
  /** The manifest exactly as the registry serves it. */
  manifestBytes: Buffer;
  config: { digest: string; size: number; mediaType: string };
  layers: ImageLayer[];
  /** Sum of the compressed layer sizes. */
  layersSize: number;
}

export const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
].join(', ');

/**
 * Builds a linux/amd64 OCI image whose every layer is one file of incompressible pseudo-random
 * bytes, pushes it with skopeo, and reads back what the registry serves. Nothing is fetched from
 * the network: umoci builds the image from scratch in a temp dir.
 */
export async function buildAndPushImage(options: BuildImageOptions): Promise<BuiltImage> {
  const { registry, repo, tag } = options;
  if (!Number.isInteger(options.layers) || options.layers < 1)
    throw new Error('buildAndPushImage: layers must be >= 1');
  if (!Number.isInteger(options.layerSize) || options.layerSize < 0) {
    throw new Error('buildAndPushImage: layerSize must be a non-negative integer');
  }
  const seed = options.seed ?? randomUUID();
  const dir = await makeTempDir('image');
  try {
    const layout = join(dir, 'oci');
    const image = `${layout}:build`;
    await runChecked('umoci', ['init', '--layout', layout]);
    await runChecked('umoci', ['new', '--image', image]);
    await runChecked('umoci', [
      'config',
      '--image',
      image,
      '--config.cmd',
      '/bin/true',
      '--architecture',
      'amd64',
      '--os',
      'linux',
    ]);
    for (let i = 0; i < options.layers; i++) {
      const file = join(dir, `layer-${i}.bin`);
      await writeSeededFile(file, `${seed}:${i}`, options.layerSize);
      // The tar header carries the mtime; pinning it keeps layer digests a function of the seed.
      await utimes(file, 0, 0);
      await runChecked('umoci', ['insert', '--image', image, file, `/layer-${i}.bin`]);
    }
    await runChecked('umoci', ['tag', '--image', image, tag]);

    const backendUrl = options.registry.backendUrl ?? `http://${registry.host}`;
    const pushHost = options.pushThroughProxy === true ? registry.host : new URL(backendUrl).host;
    const creds =
      registry.credentials === undefined
        ? []
        : ['--dest-creds', `${registry.credentials.username}:${registry.credentials.password}`];
    await runChecked('skopeo', [
      // The policy file of the machine is irrelevant for pushing a locally built image.
      '--insecure-policy',
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      ...creds,
      `oci:${layout}:${tag}`,
      `docker://${pushHost}/${repo}:${tag}`,
    ]);

    const manifest = await fetchManifest(backendUrl, repo, tag, registry.credentials);
    const parsed = JSON.parse(manifest.bytes.toString('utf8')) as {
      config: { digest: string; size: number; mediaType: string };
      layers: ImageLayer[];
    };
    const layers = parsed.layers.map((l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType }));
    return {
      ref: `${registry.host}/${repo}:${tag}`,
      digestRef: `${registry.host}/${repo}@${manifest.digest}`,
      host: registry.host,
      repo,
      tag,
      seed,
      manifestDigest: manifest.digest,
      manifestMediaType: manifest.mediaType,
      manifestBytes: manifest.bytes,
      config: { digest: parsed.config.digest, size: parsed.config.size, mediaType: parsed.config.mediaType },
      layers,
      layersSize: layers.reduce((sum, l) => sum + l.size, 0),
    };
  } finally {
    await removeTempDir(dir);
  }
}

export interface FetchedManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

/** GETs a manifest by tag or digest, with basic auth when credentials are given. */
export async function fetchManifest(
  baseUrl: string,
  repo: string,
  reference: string,
  credentials?: { username: string; password: string },
): Promise<FetchedManifest> {
  const headers: Record<string, string> = { accept: MANIFEST_ACCEPT };
  if (credentials !== undefined)
    headers['authorization'] = basicAuth(credentials.username, credentials.password);
  const url = `${baseUrl}/v2/${repo}/manifests/${reference}`;
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(10_000) });
  const bytes = Buffer.from(await response.arrayBuffer());
  if (!response.ok)
    throw new Error(`GET ${url}: HTTP ${response.status}: ${bytes.toString('utf8').slice(0, 500)}`);
  const digest =
    response.headers.get('docker-content-digest') ??
    `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const mediaType = (response.headers.get('content-type') ?? '').split(';')[0]?.trim() ?? '';
  return { digest, mediaType, bytes };
}

export function basicAuth(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

/**
 * Writes `size` bytes of AES-CTR keystream keyed by the seed: fast, reproducible and incompressible,
 * so the gzip layer umoci makes is about as large as the file.
 */
export async function writeSeededFile(path: string, seed: string, size: number): Promise<void> {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const chunk = Buffer.alloc(1 << 20);
  const out = createWriteStream(path);
  try {
    for (let written = 0; written < size;) {
      const n = Math.min(chunk.length, size - written);
      const data = cipher.update(n === chunk.length ? chunk : chunk.subarray(0, n));
      written += n;
      if (!out.write(data)) await once(out, 'drain');
    }
    out.end();
    await once(out, 'finish');
  } finally {
    out.destroy();
  }
}

/** Returns the same bytes writeSeededFile writes, in memory, for tests that compare contents. */
export function seededBytes(seed: string, size: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}
