import { ShoalError } from './errors.js';

/** A content digest as the OCI image specification defines it, limited to the algorithms Shoal verifies. */
export interface Digest {
  algorithm: 'sha256';
  hex: string;
}

const digestPattern = /^sha256:([a-f0-9]{64})$/;

export function parseDigest(text: string): Digest {
  const match = digestPattern.exec(text);
  if (!match?.[1]) {
    throw new ShoalError(
      'SHOAL_ERR_DIGEST_INVALID',
      `invalid digest "${text.slice(0, 80)}": want sha256:<64 hex>`,
    );
  }
  return { algorithm: 'sha256', hex: match[1] };
}

export function isDigest(text: string): boolean {
  return digestPattern.test(text);
}

export function formatDigest(d: Digest): string {
  return `${d.algorithm}:${d.hex}`;
}

/** Repository names per the distribution spec: path components of lowercase alphanumerics and separators. */
const repositoryPattern =
  /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;

export function assertRepositoryName(name: string): void {
  if (name.length === 0 || name.length > 255 || !repositoryPattern.test(name)) {
    throw new ShoalError('SHOAL_ERR_NAME_INVALID', `invalid repository name "${name.slice(0, 80)}"`);
  }
}

/** A tag or a digest, as it may appear in a manifest URL. */
const tagPattern = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

export function assertReference(reference: string): void {
  if (!tagPattern.test(reference) && !isDigest(reference)) {
    throw new ShoalError('SHOAL_ERR_NAME_INVALID', `invalid manifest reference "${reference.slice(0, 80)}"`);
  }
}
