/**
 * File operations on the node's filesystem as mounted at `root`. Every path callers pass is a path on
 * the node (e.g. /etc/hosts), which is also what they print, so the output means something to whoever
 * reads it on the node.
 */
import { createHash } from 'node:crypto';
import {
  copyFile,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rmdir,
  stat,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

export class HostFs {
  constructor(readonly root: string) {}

  /** The path in this process's view of the filesystem. */
  abs(path: string): string {
    return join(this.root, posix.normalize(path));
  }

  async read(path: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.abs(path));
    } catch (err) {
      if (code(err) === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Whether anything (a file, a directory, a socket, even a dangling link) is at the path. */
  async exists(path: string): Promise<boolean> {
    try {
      await lstat(this.abs(path));
      return true;
    } catch (err) {
      if (code(err) === 'ENOENT' || code(err) === 'ENOTDIR') return false;
      throw err;
    }
  }

  /** Names in a directory, sorted; none when it does not exist. */
  async list(path: string): Promise<string[]> {
    try {
      return (await readdir(this.abs(path))).sort();
    } catch (err) {
      if (code(err) === 'ENOENT' || code(err) === 'ENOTDIR') return [];
      throw err;
    }
  }

  /**
   * Creates a directory and its missing parents; returns the ones it created, outermost first, so they
   * can be removed again on uninstall (and only those).
   */
  async mkdirp(path: string): Promise<string[]> {
    const missing: string[] = [];
    let dir = posix.normalize(path);
    while (dir !== '/' && !(await this.exists(dir))) {
      missing.unshift(dir);
      dir = posix.dirname(dir);
    }
    for (const each of missing) await mkdir(this.abs(each), { mode: 0o755 });
    return missing;
  }

  /**
   * Replaces a file's content all at once (a temporary file renamed into place), so the runtime never
   * reads half a file. Keeps the mode of the file it replaces.
   */
  async write(path: string, data: Buffer | string, defaultMode = 0o644): Promise<void> {
    const target = this.abs(path);
    let mode = defaultMode;
    try {
      mode = (await stat(target)).mode & 0o7777;
    } catch (err) {
      if (code(err) !== 'ENOENT') throw err;
    }
    const temp = join(dirname(target), `.${posix.basename(path)}.shoal-${process.pid}.tmp`);
    await writeFile(temp, data, { mode });
    try {
      await rename(temp, target);
    } catch (err) {
      await unlink(temp).catch(() => undefined);
      // A file that is itself a mount point (as /etc/hosts is in some containers) cannot be replaced.
      if (code(err) !== 'EBUSY') throw err;
      await writeFile(target, data);
    }
  }

  /** Moves a file, also across filesystems (/etc and /var may be separate mounts). */
  async move(from: string, to: string): Promise<void> {
    try {
      await rename(this.abs(from), this.abs(to));
    } catch (err) {
      if (code(err) !== 'EXDEV') throw err;
      await copyFile(this.abs(from), this.abs(to));
      await unlink(this.abs(from));
    }
  }

  async copy(from: string, to: string): Promise<void> {
    await copyFile(this.abs(from), this.abs(to));
  }

  /** Removes a file; a file already gone is not an error. */
  async remove(path: string): Promise<void> {
    try {
      await unlink(this.abs(path));
    } catch (err) {
      if (code(err) !== 'ENOENT') throw err;
    }
  }

  /** Removes a directory if it is empty; returns whether it is gone. */
  async removeEmptyDir(path: string): Promise<boolean> {
    try {
      await rmdir(this.abs(path));
      return true;
    } catch (err) {
      if (code(err) === 'ENOENT') return true;
      if (code(err) === 'ENOTEMPTY' || code(err) === 'EEXIST' || code(err) === 'ENOTDIR') return false;
      throw err;
    }
  }
}
