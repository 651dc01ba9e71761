/**
 * Wrapping blobs already in a registry into a tagged image: a config blob and an OCI image manifest
 * pushed with the distribution API. For benchmarks whose layers are too large (or too odd) to build
 * with umoci and copy with skopeo, but which still want containerd's own client to pull them.
 */
import { createHash } from 'node:crypto';
import { pushBlob } from './blobs.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
/**
 * Uncompressed layers, so that a layer's digest is also its diff ID and the config does not lie.
 * `ctr content fetch` only downloads and verifies digests, so the bytes need not be a real tar.
 */
export const OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

export interface PushedImage {
  manifestDigest: string;
  manifestBytes: Buffer;
  config: Descriptor;
  layers: Descriptor[];
}

/**
 * Pushes a config blob for this machine's platform and an OCI manifest naming it and `layers` (blobs
 * already pushed to `repository`, taken as uncompressed layers), and tags the manifest `tag`.
 */
export async function pushImageManifest(
  registryUrl: string,
  repository: string,
  tag: string,
  layers: readonly { digest: string; size: number }[],
): Promise<PushedImage> {
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: process.arch === 'x64' ? 'amd64' : process.arch,
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
    }),
  );
  const config: Descriptor = {
    mediaType: OCI_CONFIG,
    digest: await pushBlob(registryUrl, repository, configBytes),
    size: configBytes.length,
  };
  const descriptors = layers.map((l) => ({ mediaType: OCI_LAYER_TAR, digest: l.digest, size: l.size }));
  const manifestBytes = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config, layers: descriptors }),
  );
  const url = `${registryUrl}/v2/${repository}/manifests/${tag}`;
  const res = await fetch(url, {
    method: 'PUT',
    headers: { 'content-type': OCI_MANIFEST },
    body: manifestBytes,
    signal: AbortSignal.timeout(10_000),
  });
  const answer = await res.text();
  if (res.status !== 201) throw new Error(`PUT ${url}: HTTP ${res.status}: ${answer.slice(0, 500)}`);
  const manifestDigest = `sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`;
  const said = res.headers.get('docker-content-digest');
  if (said !== null && said !== manifestDigest)
    throw new Error(`PUT ${url}: the registry named the manifest ${said}, not ${manifestDigest}`);
  return { manifestDigest, manifestBytes, config, layers: descriptors };
}
