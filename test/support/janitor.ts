/**
 * A janitor for temp dirs too large to leave behind (a benchmark's gigabytes of registry, cache and
 * containerd copies), for the case where this process dies without running its own teardown. tsx,
 * which runs the benchmarks, kills its child with SIGKILL when the child does not acknowledge an
 * interrupt within 30 ms, and a loaded machine easily misses that; the kit's servers then die with
 * their parent (see withParentDeath in kit/process.ts), but their directories would stay.
 *
 * A detached shell, in a session of its own so a Ctrl-C does not reach it, waits until this process is
 * gone and removes every directory listed to it; those the teardown already removed are skipped.
 */
import { spawn } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { keepTempDirs, makeTempDir } from '../kit/index.js';

export interface Janitor {
  /** Lists a kit temp dir (under the OS temp dir, named shoal-…) for removal once this process is gone. */
  watch(dir: string): void;
}

const SCRIPT = [
  'while kill -0 "$1" 2>/dev/null; do sleep 1; done',
  'while IFS= read -r dir; do rm -rf -- "$dir"; done < "$2/dirs"',
  'rm -rf -- "$2"',
].join('\n');

export async function startJanitor(): Promise<Janitor> {
  // Dirs kept on purpose for examination are not the janitor's to remove.
  if (keepTempDirs()) return { watch: () => undefined };
  const own = await makeTempDir('janitor');
  const list = join(own, 'dirs');
  appendFileSync(list, '');
  const child = spawn('sh', ['-c', SCRIPT, 'shoal-janitor', String(process.pid), own], {
    detached: true,
    stdio: 'ignore',
  });
  child.unref();
  return {
    watch(dir) {
      const inside = relative(tmpdir(), dir);
      if (inside.startsWith('..') || inside.includes('/') || !inside.startsWith('shoal-'))
        throw new Error(`janitor: ${dir} is not a kit temp dir`);
      appendFileSync(list, `${dir}\n`);
    },
  };
}
