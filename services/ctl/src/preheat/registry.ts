/**
 * Reading an image from its registry the way a runtime does: the manifest by tag or digest (picking one
 * platform from an index), with the registry's own authentication — Basic, or the Bearer token flow
 * (a 401 naming a token realm, asked with the user's credentials for `repository:<repo>:pull`). The
 * Authorization it ends up with is what the agents are given, so they authorise and fetch as this user.
 */
import { createHash } from 'node:crypto';
import { isDigest, ShoalError } from '@shoal/mesh';
import type { RegistryCredentials } from './docker-config.js';

export interface Challenge {
  /** Lowercase: basic, bearer. */
  scheme: string;
  /** Parameter names lowercase, values unquoted. */
  params: Record<string, string>;
}

const tokenPattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/;

/** The challenges of a WWW-Authenticate header (RFC 9110 §11.6.1), in order. */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const challenges: Challenge[] = [];
  let i = 0;
  const skip = (pattern: RegExp) => {
    while (i < header.length && pattern.test(header.charAt(i))) i++;
  };
  const token = (): string | undefined => {
    const match = tokenPattern.exec(header.slice(i));
    if (!match) return undefined;
    i += match[0].length;
    return match[0];
  };
  while (i < header.length) {
    skip(/[\s,]/);
    const scheme = token();
    if (scheme === undefined) {
      // Not a token: skip the character and look for the next challenge.
      i++;
      continue;
    }
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    challenges.push(challenge);
    for (;;) {
      skip(/[\s,]/);
      const start = i;
      const name = token();
      if (name === undefined) break;
      skip(/\s/);
      if (header.charAt(i) !== '=') {
        // A token not followed by "=" starts the next challenge.
        i = start;
        break;
      }
      i++;
      skip(/\s/);
      let value = '';
      if (header.charAt(i) === '"') {
        i++;
        while (i < header.length && header.charAt(i) !== '"') {
          if (header.charAt(i) === '\\' && i + 1 < header.length) i++;
          value += header.charAt(i);
          i++;
        }
        i++;
      } else {
        const match = /^[^\s,]*/.exec(header.slice(i));
        value = match?.[0] ?? '';
        i += value.length;
      }
      challenge.params[name.toLowerCase()] = value;
    }
  }
  return challenges;
}

export function basicAuthorization(credentials: RegistryCredentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}

export interface RegistryAccess {
  /** The registry's name, for messages. */
  registry: string;
  baseUrl: string;
  repository: string;
  credentials: RegistryCredentials | undefined;
  timeoutMs: number;
  signal?: AbortSignal;
}

function describeCause(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err));
}

/** Requests to one repository of one registry, authenticated as the registry asks. */
export class RegistryClient {
  private authorization: string | undefined;
  /** Set once credentials (or a token) have been presented: another 401 then means they were refused. */
  private authenticated = false;

  constructor(private readonly access: RegistryAccess) {}

  /** The Authorization the registry accepted (a Bearer token or Basic credentials); none for anonymous. */
  get credential(): string | undefined {
    return this.authorization;
  }

  private refused(status: number): ShoalError {
    const { registry, repository, credentials } = this.access;
    if (!credentials) {
      return new ShoalError(
        'SHOAL_ERR_UNAUTHORIZED',
        `registry ${registry} needs credentials for ${repository} (${status}): pass --username with SHOAL_PASSWORD, or run docker login ${registry}`,
      );
    }
    return new ShoalError(
      'SHOAL_ERR_UNAUTHORIZED',
      `registry ${registry} refused the credentials of ${credentials.username} for ${repository} (${status}): check --username and SHOAL_PASSWORD, or the Docker config's entry for ${registry}`,
    );
  }

  private async send(url: string, headers: Record<string, string>): Promise<Response> {
    const signals = [AbortSignal.timeout(this.access.timeoutMs)];
    if (this.access.signal) signals.push(this.access.signal);
    try {
      return await fetch(url, { headers, signal: AbortSignal.any(signals) });
    } catch (err) {
      if (this.access.signal?.aborted) {
        throw new ShoalError('SHOAL_ERR_UPSTREAM', 'stopped while reading the image from its registry');
      }
      const https = url.startsWith('https:');
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `cannot reach registry ${this.access.registry} at ${new URL(url).origin} (${describeCause(err)}): check the image's registry${https ? ', or pass --insecure-registry if it speaks plain HTTP' : ''}`,
        { cause: err },
      );
    }
  }

  /** GETs a path of the registry API, answering its authentication challenge once. */
  async get(path: string, headers: Record<string, string> = {}): Promise<Response> {
    const url = `${this.access.baseUrl}${path}`;
    for (;;) {
      const res = await this.send(url, {
        ...headers,
        ...(this.authorization ? { authorization: this.authorization } : {}),
      });
      if (res.status === 403) {
        await res.body?.cancel();
        throw this.refused(403);
      }
      if (res.status !== 401) return res;
      await res.body?.cancel();
      if (this.authenticated) throw this.refused(401);
      await this.authenticate(res.headers.get('www-authenticate') ?? '');
    }
  }

  private async authenticate(header: string): Promise<void> {
    this.authenticated = true;
    const challenges = parseWwwAuthenticate(header);
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer) {
      this.authorization = `Bearer ${await this.fetchToken(bearer)}`;
      return;
    }
    if (challenges.some((c) => c.scheme === 'basic') && this.access.credentials) {
      this.authorization = basicAuthorization(this.access.credentials);
      return;
    }
    throw this.refused(401);
  }

  /** The Bearer token flow: the realm issues a token for pulling this repository. */
  private async fetchToken(challenge: Challenge): Promise<string> {
    const { realm, service } = challenge.params;
    let url: URL;
    try {
      url = new URL(realm ?? '');
      if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('not http(s)');
    } catch {
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `registry ${this.access.registry} asks for a token from "${(realm ?? '').slice(0, 100)}", which is not an http(s) URL`,
      );
    }
    if (service) url.searchParams.set('service', service);
    url.searchParams.set('scope', `repository:${this.access.repository}:pull`);
    const headers: Record<string, string> = {};
    if (this.access.credentials) headers.authorization = basicAuthorization(this.access.credentials);
    const res = await this.send(url.toString(), headers);
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw this.refused(res.status);
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `the token service of registry ${this.access.registry} (${url.origin}) answered ${res.status}; try again later`,
      );
    }
    const body = (await res.json().catch(() => ({}))) as { token?: unknown; access_token?: unknown };
    const token = typeof body.token === 'string' ? body.token : body.access_token;
    if (typeof token !== 'string' || token === '') {
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `the token service of registry ${this.access.registry} (${url.origin}) gave no token`,
      );
    }
    return token;
  }
}

export const MediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;

const manifestAccept = Object.values(MediaTypes).join(', ');

export interface ImageBlob {
  digest: string;
  size: number;
  kind: 'config' | 'layer';
}

export interface ResolvedImage {
  /** The digest of the image manifest preheated (the platform's, for an index). */
  manifestDigest: string;
  blobs: ImageBlob[];
}

interface Descriptor {
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

function descriptor(value: unknown, what: string): Descriptor {
  const d = value as Partial<Descriptor> | null;
  if (
    typeof d !== 'object' ||
    d === null ||
    typeof d.digest !== 'string' ||
    !isDigest(d.digest) ||
    typeof d.size !== 'number' ||
    !Number.isSafeInteger(d.size) ||
    d.size < 0
  ) {
    throw new ShoalError('SHOAL_ERR_UPSTREAM', `the image's ${what} is not a valid sha256 descriptor`);
  }
  return d as Descriptor;
}

function platformName(p: Descriptor['platform']): string {
  return [p?.os ?? '?', p?.architecture ?? '?', ...(p?.variant ? [p.variant] : [])].join('/');
}

/** Picks the manifest for a platform (os/arch[/variant]) from an index's entries. */
export function pickPlatform(manifests: Descriptor[], platform: string): Descriptor | undefined {
  const [os, architecture, variant] = platform.split('/');
  return manifests.find(
    (m) =>
      m.platform?.os === os &&
      m.platform?.architecture === architecture &&
      (variant === undefined || m.platform?.variant === variant),
  );
}

interface FetchedManifest {
  digest: string;
  mediaType: string;
  doc: Record<string, unknown>;
}

/** The image's manifest (for an index, the one for `platform`) and the blobs it names: config first. */
export async function resolveImage(
  client: RegistryClient,
  image: { display: string; registry: string; repository: string; reference: string },
  platform: string,
): Promise<ResolvedImage> {
  const fetchManifest = async (reference: string): Promise<FetchedManifest> => {
    const res = await client.get(`/v2/${image.repository}/manifests/${reference}`, {
      accept: manifestAccept,
    });
    if (res.status === 404) {
      await res.body?.cancel();
      throw new ShoalError(
        'SHOAL_ERR_MANIFEST_UNKNOWN',
        `image ${image.display} not found: registry ${image.registry} has no manifest ${image.repository}:${reference}; check the repository and tag`,
      );
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new ShoalError(
        'SHOAL_ERR_UPSTREAM',
        `registry ${image.registry} answered ${res.status} for the manifest of ${image.display}; try again later`,
      );
    }
    const bytes = Buffer.from(await res.arrayBuffer());
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    if (isDigest(reference) && digest !== reference) {
      throw new ShoalError(
        'SHOAL_ERR_CHUNK_CORRUPT',
        `registry ${image.registry} sent a manifest for ${reference} whose content hashes to ${digest}`,
      );
    }
    let doc: unknown;
    try {
      doc = JSON.parse(bytes.toString('utf8'));
    } catch {
      doc = undefined;
    }
    if (typeof doc !== 'object' || doc === null) {
      throw new ShoalError('SHOAL_ERR_UPSTREAM', `the manifest of ${image.display} is not JSON`);
    }
    const header = (res.headers.get('content-type') ?? '').split(';')[0]?.trim() ?? '';
    const own = (doc as { mediaType?: unknown }).mediaType;
    return {
      digest,
      mediaType: typeof own === 'string' && own !== '' ? own : header,
      doc: doc as Record<string, unknown>,
    };
  };

  let manifest = await fetchManifest(image.reference);
  if (Array.isArray(manifest.doc.manifests)) {
    const entries = manifest.doc.manifests.map((m, i) => descriptor(m, `index entry ${i}`));
    const chosen = pickPlatform(entries, platform);
    if (!chosen) {
      const available = [...new Set(entries.map((e) => platformName(e.platform)))].join(', ');
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        `image ${image.display} has no ${platform} variant (it has ${available || 'none'}): pass --platform`,
      );
    }
    manifest = await fetchManifest(chosen.digest);
  }
  const { config, layers } = manifest.doc as { config?: unknown; layers?: unknown };
  if (!Array.isArray(layers) || config === undefined) {
    throw new ShoalError(
      'SHOAL_ERR_UPSTREAM',
      `the manifest of ${image.display} (${manifest.mediaType || 'no media type'}) is not an OCI or Docker v2 image manifest`,
    );
  }
  const blobs: ImageBlob[] = [{ ...pick(descriptor(config, 'config')), kind: 'config' }];
  layers.forEach((layer, i) => blobs.push({ ...pick(descriptor(layer, `layer ${i}`)), kind: 'layer' }));
  const seen = new Set<string>();
  return {
    manifestDigest: manifest.digest,
    blobs: blobs.filter((b) => !seen.has(b.digest) && seen.add(b.digest)),
  };
}

function pick(d: Descriptor): { digest: string; size: number } {
  return { digest: d.digest, size: d.size };
}
