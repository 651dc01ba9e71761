/** Writing a file so that a crash or a full disk leaves either the old file or the whole new one. */
import { open, rename, rm } from 'node:fs/promises';

/**
 * Writes `data` to `temp`, syncs it to disk and renames it over `path`. Whatever fails, `temp` is
 * removed and the error thrown; `path` is then as it was. The caller syncs the directory if the rename
 * itself must survive a crash.
 */
export async function replaceFile(
  path: string,
  temp: string,
  data: string | Uint8Array,
  mode?: number,
): Promise<void> {
  try {
    const handle = await open(temp, 'w', mode);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true }).catch(() => undefined);
    throw err;
  }
}
