import { mkdtempSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Setting SHOAL_TEST_KEEP_TMP=1 keeps every temp dir (logs, stores, configs) after a run so a failed
 * test can be examined by hand; by default they are removed when the server using them stops.
 */
export function keepTempDirs(): boolean {
  const value = process.env['SHOAL_TEST_KEEP_TMP'];
  return value !== undefined && value !== '' && value !== '0';
}

/** Creates a fresh directory under the OS temp dir whose name starts with `shoal-<prefix>-`. */
export async function makeTempDir(prefix: string): Promise<string> {
  return await mkdtemp(join(tmpdir(), `shoal-${sanitize(prefix)}-`));
}

/** Synchronous variant of makeTempDir for places that cannot await, such as constructors. */
export function makeTempDirSync(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `shoal-${sanitize(prefix)}-`));
}

/**
 * Removes a directory tree. Retries cover files that a just-stopped server was still closing; a
 * missing directory is not an error, so calling this twice is safe.
 */
export async function removeTempDir(dir: string): Promise<void> {
  if (keepTempDirs()) return;
  await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}

/** Synchronous variant of removeTempDir for exit handlers, where nothing asynchronous runs. */
export function removeTempDirSync(dir: string): void {
  if (keepTempDirs()) return;
  rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
}

function sanitize(prefix: string): string {
  // Names end up in unix socket paths, which are limited to about 108 bytes, so keep them short.
  return prefix.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 24);
}
