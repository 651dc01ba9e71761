/**
 * Image references as a person types them (`registry/repo:tag`, `registry/repo@sha256:…`), and the
 * registry's base URL. The registry is the first path component when it looks like a host (a dot, a
 * port, or `localhost`), as containerd and Docker read it; otherwise it is Docker Hub.
 */
import { assertReference, assertRepositoryName, isDigest, isShoalError, ShoalError } from '@shoal/mesh';

export interface ImageReference {
  /** The registry as containerd names it: host[:port], or docker.io. */
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
  /** What to ask the registry for: the digest when there is one, else the tag. */
  reference: string;
}

const DOCKER_HUB = 'docker.io';

export function parseImageReference(text: string): ImageReference {
  const bad = (why: string) =>
    new ShoalError(
      'SHOAL_ERR_CONFIG',
      `"${text.slice(0, 200)}" is not an image reference (${why}): write registry/repository:tag or registry/repository@sha256:<64 hex>`,
    );
  let rest = text.trim();
  if (rest === '') throw bad('it is empty');
  let digest: string | undefined;
  const at = rest.lastIndexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) throw bad(`"${digest.slice(0, 80)}" is not a sha256 digest`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const slash = rest.indexOf('/');
  const first = slash === -1 ? '' : rest.slice(0, slash);
  const hasHost = first !== '' && (first.includes('.') || first.includes(':') || first === 'localhost');
  let registry = hasHost ? first.toLowerCase() : DOCKER_HUB;
  let repository = hasHost ? rest.slice(slash + 1) : rest;
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;
  try {
    assertRepositoryName(repository);
    if (tag !== undefined) assertReference(tag);
  } catch (err) {
    throw bad(isShoalError(err) ? err.message : String(err));
  }
  if (tag === undefined && digest === undefined) tag = 'latest';
  return {
    registry,
    repository,
    ...(tag === undefined ? {} : { tag }),
    ...(digest === undefined ? {} : { digest }),
    reference: digest ?? tag ?? 'latest',
  };
}

/** The image as a person reads it back: registry/repository:tag@digest. */
export function formatImageReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag === undefined ? '' : `:${ref.tag}`}${ref.digest === undefined ? '' : `@${ref.digest}`}`;
}

function isLoopback(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '');
  return host === 'localhost' || host === '[::1]' || /^127(\.\d{1,3}){3}$/.test(host);
}

/** Where the registry's API is: HTTPS unless told otherwise or on this machine's loopback. */
export function registryBaseUrl(registry: string, insecure: boolean): string {
  if (registry === DOCKER_HUB) return 'https://registry-1.docker.io';
  return `${insecure || isLoopback(registry) ? 'http' : 'https'}://${registry}`;
}
