/**
 * What node-setup changed on the node, and how to undo it. Every change is recorded in a manifest
 * (<stateDir>/manifest.json) before it is made: the files Shoal wrote with their sha256, the originals
 * it moved aside (kept under <stateDir>/backup/<their path on the node>) with theirs, the blocks it
 * added to shared files, and the directories it created. Uninstall puts originals back byte for byte,
 * removes only what still is exactly what Shoal wrote, and never overwrites a file someone changed since.
 */
import { posix } from 'node:path';
import { ShoalError } from '@shoal/mesh';
import type { Runtime } from './config.js';
import { type HostFs, sha256 } from './host-fs.js';

/** The first line of every file Shoal writes whole; a file starting with it is Shoal's. */
export const OWN_HEADER = '# Written by Shoal';
export const BLOCK_BEGIN = '# BEGIN shoal';
export const BLOCK_END = '# END shoal';

/** A whole file Shoal wrote, and the original it replaced, if any. */
export interface FileEntry {
  kind: 'file';
  path: string;
  sha256: string;
  backup?: { path: string; sha256: string };
}

/** A block between BLOCK_BEGIN and BLOCK_END that Shoal added to a file it shares with others. */
export interface BlockEntry {
  kind: 'block';
  path: string;
  /** sha256 of the block, markers and final newline included. */
  sha256: string;
  /** The file did not exist before; it is removed again if nothing but the block is left. */
  createdFile: boolean;
  /** The file did not end with a newline, so one was added before the block (and is removed with it). */
  addedNewline: boolean;
  /** A copy of the file as it was before, for reference; absent when the file did not exist. */
  original?: { path: string; sha256: string };
}

export type Entry = FileEntry | BlockEntry;

export interface Manifest {
  version: 1;
  runtime?: Runtime;
  entries: Entry[];
  /** Directories node-setup created, removed on uninstall when they are empty again. */
  createdDirs: string[];
}

/** Something written to a file: the whole file, or a marked block in it. */
export type Desired =
  { kind: 'file'; path: string; content: string } | { kind: 'block'; path: string; content: string };

export type Verb = 'written' | 'backed up' | 'restored' | 'removed' | 'skipped' | 'kept';

export interface Reporter {
  action(verb: Verb, path: string, detail?: string): void;
  warn(text: string): void;
}

export function isOwnFile(data: Buffer): boolean {
  return data.subarray(0, OWN_HEADER.length).toString('latin1') === OWN_HEADER;
}

/** Where a marked block sits in a file's text: from the start of its first line to the end of its last. */
export function findBlock(text: string): { start: number; end: number } | undefined {
  const begin = new RegExp(`^${BLOCK_BEGIN}[ \\t]*\\r?$`, 'm').exec(text);
  if (!begin) return undefined;
  const endRe = new RegExp(`^${BLOCK_END}[ \\t]*(\\r?\\n|$)`, 'm');
  const after = text.slice(begin.index);
  const end = endRe.exec(after);
  if (!end) return undefined;
  return { start: begin.index, end: begin.index + end.index + end[0].length };
}

export class NodeState {
  private constructor(
    private readonly fs: HostFs,
    private readonly stateDir: string,
    readonly manifest: Manifest,
    /** Whether a manifest was found on disk. */
    readonly recorded: boolean,
    private readonly report: Reporter,
  ) {}

  static async load(fs: HostFs, stateDir: string, report: Reporter): Promise<NodeState> {
    const path = posix.join(stateDir, 'manifest.json');
    const data = await fs.read(path);
    if (data === undefined) {
      return new NodeState(fs, stateDir, { version: 1, entries: [], createdDirs: [] }, false, report);
    }
    let manifest: Manifest;
    try {
      manifest = JSON.parse(data.toString('utf8')) as Manifest;
      if (manifest.version !== 1 || !Array.isArray(manifest.entries) || !Array.isArray(manifest.createdDirs))
        throw new Error('not a node-setup manifest of version 1');
    } catch (cause) {
      throw new ShoalError(
        'SHOAL_ERR_INTERNAL',
        `cannot read ${path}: ${(cause as Error).message}; move it away to start over (the backups it lists stay in ${stateDir}/backup)`,
        { cause },
      );
    }
    return new NodeState(fs, stateDir, manifest, true, report);
  }

  private get manifestPath(): string {
    return posix.join(this.stateDir, 'manifest.json');
  }

  backupPath(path: string): string {
    return posix.join(this.stateDir, 'backup', path);
  }

  entry(path: string): Entry | undefined {
    return this.manifest.entries.find((e) => e.path === path);
  }

  private drop(entry: Entry): void {
    const index = this.manifest.entries.indexOf(entry);
    if (index !== -1) this.manifest.entries.splice(index, 1);
  }

  private async mkdirp(dir: string): Promise<void> {
    for (const created of await this.fs.mkdirp(dir)) {
      if (!this.manifest.createdDirs.includes(created)) this.manifest.createdDirs.push(created);
    }
  }

  async save(): Promise<void> {
    await this.mkdirp(this.stateDir);
    await this.fs.write(this.manifestPath, `${JSON.stringify(this.manifest, null, 2)}\n`);
  }

  /** Writes a whole file, moving a file that is not Shoal's aside first. */
  async installFile(desired: Desired & { kind: 'file' }): Promise<void> {
    const { path, content } = desired;
    const want = sha256(content);
    const current = await this.fs.read(path);
    let entry = this.entry(path);
    if (entry !== undefined && entry.kind !== 'file') {
      this.drop(entry);
      entry = undefined;
    }
    let updated = false;
    if (current !== undefined) {
      const have = sha256(current);
      if (have === want) {
        if (!entry) this.manifest.entries.push({ kind: 'file', path, sha256: want });
        this.report.action('skipped', path, 'already as Shoal would write it');
        return;
      }
      updated = entry?.sha256 === have || isOwnFile(current);
      if (!updated) {
        if (entry?.backup && (await this.fs.exists(entry.backup.path))) {
          this.report.warn(
            `${path} was changed after Shoal wrote it, and the original it replaced is still kept at ${entry.backup.path}; left as it is, without the Shoal mirror. Remove it (or put the original back) and run install again to pull through the agent.`,
          );
          this.report.action('kept', path, 'changed by someone else since install');
          return;
        }
        const backup = { path: this.backupPath(path), sha256: have };
        entry ??= { kind: 'file', path, sha256: want };
        entry.backup = backup;
        if (!this.manifest.entries.includes(entry)) this.manifest.entries.push(entry);
        // Recorded before the move, so an interruption in between still leaves the backup findable.
        await this.save();
        await this.mkdirp(posix.dirname(backup.path));
        await this.fs.move(path, backup.path);
        this.report.action('backed up', path, `to ${backup.path}, sha256 ${have.slice(0, 12)}…`);
      }
    }
    await this.mkdirp(posix.dirname(path));
    entry ??= { kind: 'file', path, sha256: want };
    entry.sha256 = want;
    if (!this.manifest.entries.includes(entry)) this.manifest.entries.push(entry);
    await this.save();
    await this.fs.write(path, content);
    this.report.action('written', path, updated ? "updated Shoal's earlier version" : undefined);
  }

  /** Adds (or updates) Shoal's marked block in a file others write too, leaving the rest as it is. */
  async installBlock(desired: Desired & { kind: 'block' }): Promise<void> {
    const { path, content } = desired;
    const current = await this.fs.read(path);
    const text = current?.toString('latin1') ?? '';
    const block = findBlock(text);
    let entry = this.entry(path);
    if (entry !== undefined && entry.kind !== 'block') {
      this.drop(entry);
      entry = undefined;
    }
    if (block !== undefined) {
      const existing = text.slice(block.start, block.end);
      const addedNewline = entry?.addedNewline ?? false;
      const createdFile = entry?.createdFile ?? false;
      const next: BlockEntry = {
        ...entry,
        kind: 'block',
        path,
        sha256: sha256(content),
        addedNewline,
        createdFile,
      };
      if (entry) this.drop(entry);
      this.manifest.entries.push(next);
      if (existing === content) {
        this.report.action('skipped', path, 'Shoal entries already in place');
        await this.save();
        return;
      }
      await this.save();
      await this.fs.write(
        path,
        Buffer.from(text.slice(0, block.start) + content + text.slice(block.end), 'latin1'),
      );
      this.report.action('written', path, 'updated the Shoal entries');
      return;
    }
    if (entry?.original) await this.fs.remove(entry.original.path);
    if (entry) this.drop(entry);
    const addedNewline = text.length > 0 && !text.endsWith('\n');
    const next: BlockEntry = {
      kind: 'block',
      path,
      sha256: sha256(content),
      createdFile: current === undefined,
      addedNewline,
    };
    if (current !== undefined) {
      next.original = { path: this.backupPath(path), sha256: sha256(current) };
      await this.mkdirp(posix.dirname(next.original.path));
      await this.fs.copy(path, next.original.path);
      this.report.action('backed up', path, `copy of the original at ${next.original.path}`);
    } else {
      await this.mkdirp(posix.dirname(path));
    }
    this.manifest.entries.push(next);
    await this.save();
    await this.fs.write(path, Buffer.from(`${text}${addedNewline ? '\n' : ''}${content}`, 'latin1'));
    this.report.action('written', path, 'added the Shoal entries between the shoal markers');
  }

  /** Undoes one recorded change. An entry that cannot be undone safely is kept, with a warning. */
  async undo(entry: Entry): Promise<void> {
    if (entry.kind === 'file') await this.undoFile(entry);
    else await this.undoBlock(entry);
  }

  private async undoFile(entry: FileEntry): Promise<void> {
    const current = await this.fs.read(entry.path);
    const backup = entry.backup;
    const haveBackup = backup !== undefined && (await this.fs.exists(backup.path));
    if (current !== undefined) {
      if (sha256(current) !== entry.sha256) {
        if (haveBackup) {
          this.report.warn(
            `${entry.path} was changed after Shoal wrote it, so the original was not put back over it; both are kept: the current file in place, the original at ${backup.path}.`,
          );
          this.report.action('kept', entry.path, `changed since install; original still at ${backup.path}`);
          return;
        }
        this.report.action('kept', entry.path, 'changed since Shoal wrote it; left in place');
        this.drop(entry);
        return;
      }
      await this.fs.remove(entry.path);
      this.report.action('removed', entry.path);
    }
    if (backup !== undefined) {
      if (haveBackup) {
        await this.mkdirp(posix.dirname(entry.path));
        await this.fs.move(backup.path, entry.path);
        const restored = await this.fs.read(entry.path);
        if (restored !== undefined && sha256(restored) === backup.sha256) {
          this.report.action(
            'restored',
            entry.path,
            `the original, byte for byte, sha256 ${backup.sha256.slice(0, 12)}…`,
          );
        } else {
          this.report.action('restored', entry.path, 'from the backup');
          this.report.warn(
            `the backup of ${entry.path} was changed while it was kept in ${this.stateDir}: restored it as it was found, not as it was saved.`,
          );
        }
      } else {
        this.report.warn(`the backup of ${entry.path} (${backup.path}) is missing: nothing to restore.`);
      }
    } else if (current === undefined) {
      this.report.action('skipped', entry.path, 'already gone');
    }
    this.drop(entry);
  }

  private async undoBlock(entry: BlockEntry): Promise<void> {
    const current = await this.fs.read(entry.path);
    const dropOriginal = async () => {
      if (entry.original) await this.fs.remove(entry.original.path);
      this.drop(entry);
    };
    if (current === undefined) {
      this.report.action('skipped', entry.path, 'the file is gone');
      return dropOriginal();
    }
    const text = current.toString('latin1');
    const block = findBlock(text);
    if (!block) {
      this.report.action('skipped', entry.path, 'no Shoal entries in it');
      return dropOriginal();
    }
    let next = text.slice(0, block.start) + text.slice(block.end);
    if (entry.addedNewline && block.end === text.length && next.endsWith('\n')) next = next.slice(0, -1);
    if (entry.createdFile && next === '') {
      await this.fs.remove(entry.path);
      this.report.action('removed', entry.path, 'Shoal had created it');
      return dropOriginal();
    }
    const restored = Buffer.from(next, 'latin1');
    await this.fs.write(entry.path, restored);
    if (entry.original && sha256(restored) === entry.original.sha256) {
      this.report.action(
        'restored',
        entry.path,
        'Shoal entries removed; the file is the original, byte for byte',
      );
    } else {
      this.report.action(
        'restored',
        entry.path,
        'Shoal entries removed; changes made to the rest of it since are kept',
      );
    }
    return dropOriginal();
  }

  /**
   * Removes Shoal's own files and blocks that the manifest does not list (a lost or moved state dir):
   * only files that start with Shoal's header and blocks between Shoal's markers.
   */
  async sweep(candidates: readonly string[]): Promise<void> {
    for (const path of candidates) {
      if (this.entry(path)) continue;
      const data = await this.fs.read(path);
      if (data === undefined) continue;
      if (isOwnFile(data)) {
        await this.fs.remove(path);
        this.report.action('removed', path, 'written by Shoal, though not in the record');
        continue;
      }
      const text = data.toString('latin1');
      const block = findBlock(text);
      if (block) {
        await this.fs.write(path, Buffer.from(text.slice(0, block.start) + text.slice(block.end), 'latin1'));
        this.report.action('restored', path, 'Shoal entries removed (they were not in the record)');
      }
    }
  }

  /**
   * Removes the directories node-setup created that are empty again, innermost first, and the manifest
   * itself once nothing is left to undo.
   */
  async finishUninstall(): Promise<void> {
    if (this.manifest.entries.length === 0) await this.fs.remove(this.manifestPath);
    else await this.save();
    const dirs = [...this.manifest.createdDirs].sort((a, b) => b.split('/').length - a.split('/').length);
    for (const dir of dirs) {
      if (await this.fs.removeEmptyDir(dir))
        this.manifest.createdDirs = this.manifest.createdDirs.filter((d) => d !== dir);
    }
    if (this.manifest.entries.length > 0) await this.save();
  }
}
