import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';

/** How many output lines each process keeps in memory for error messages. */
const RING_SIZE = 200;

export interface StartProcessOptions {
  /** Short label used in error messages. */
  name: string;
  cmd: string;
  args?: readonly string[];
  /** Variables added on top of the current environment; a value of undefined removes a variable. */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** File that receives stdout and stderr (appended); parent directories are created. */
  logFile?: string;
}

export interface ProcessExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string | undefined;
  /** Settles when the process has exited, with its code or the signal that ended it. */
  readonly exited: Promise<ProcessExit>;
  /** The exit once it happened, undefined while running. */
  exit(): ProcessExit | undefined;
  running(): boolean;
  paused(): boolean;
  /** The last output lines (stdout and stderr interleaved), oldest first. */
  lines(): string[];
  /** The last `count` lines joined for error messages. */
  tail(count?: number): string;
  /** Resolves with the first line (already seen or future) matching `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Sends `signal` to the PID, escalates to SIGKILL after `timeoutMs`, and resolves once it exited. */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<ProcessExit>;
  /** Freezes the process with SIGSTOP: its sockets stay open but nothing is answered. */
  pause(): void;
  /** Continues a paused process with SIGCONT. */
  resume(): void;
}

/** Debian puts some servers (nats-server) in sbin directories that a non-login PATH may not list. */
const EXTRA_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];
const resolved = new Map<string, string>();

/**
 * Returns the absolute path of a command found on PATH or in the sbin directories, or undefined.
 * Commands containing a slash are returned unchanged.
 */
export function findCommand(cmd: string): string | undefined {
  if (cmd.includes('/')) return cmd;
  const cached = resolved.get(cmd);
  if (cached !== undefined) return cached;
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter).filter((d) => d !== ''), ...EXTRA_DIRS];
  for (const dir of dirs) {
    const candidate = join(dir, cmd);
    if (isExecutable(candidate)) {
      resolved.set(cmd, candidate);
      return candidate;
    }
  }
  return undefined;
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Wraps a command line so the kernel sends SIGKILL to the child when the thread that started it
 * dies. Test runners end their workers without running exit handlers, so this is what actually
 * stops servers from outliving a test file that forgot to stop them. setpriv (util-linux, present
 * on every Debian system) execs the command, so the PID stays the one of the real program.
 */
function withParentDeath(cmd: string, args: readonly string[]): [string, string[]] {
  const setpriv = process.platform === 'linux' ? findCommand('setpriv') : undefined;
  const resolvedCmd = findCommand(cmd) ?? cmd;
  if (setpriv === undefined) return [resolvedCmd, [...args]];
  // Behind setpriv a missing program would only show as exit code 127, so check it up front.
  if (!isExecutable(resolvedCmd)) {
    const err: NodeJS.ErrnoException = new Error(`spawn ${cmd} ENOENT`);
    err.code = 'ENOENT';
    throw err;
  }
  return [setpriv, ['--pdeathsig', 'SIGKILL', '--', resolvedCmd, ...args]];
}

function spawnError(name: string, cmd: string, err: Error): Error {
  const hint =
    (err as NodeJS.ErrnoException).code === 'ENOENT' ? ' (is it installed? see scripts/install-deps.sh)' : '';
  return new Error(`${name}: cannot start ${cmd}: ${err.message}${hint}`, { cause: err });
}

/**
 * Every child still alive. The exit hook below kills them when this process exits normally without
 * having stopped them; when it is killed instead, the parent-death signal set by withParentDeath
 * does the same job.
 */
const live = new Set<ManagedProcess>();
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of liveChildren) {
      if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) continue;
      try {
        // SIGKILL also ends stopped processes, and nothing else can run once the parent is exiting.
        process.kill(child.pid, 'SIGKILL');
      } catch {
        // The process disappeared between the check and the kill, which is what we wanted.
      }
    }
  });
}

/** Processes started through this module that have not exited yet. */
export function liveProcesses(): ManagedProcess[] {
  return [...live];
}

/** Stops every live process (in parallel); meant for afterAll hooks as a safety net. */
export async function stopAllProcesses(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop()));
}

/**
 * Spawns a child process that is not detached (it stays in this process group) and records its
 * output. Resolves once the OS created the process, and rejects when the command cannot be started,
 * for example because the binary is missing.
 */
export async function startProcess(options: StartProcessOptions): Promise<ManagedProcess> {
  installExitHook();
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [key, value] of Object.entries(options.env ?? {})) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }

  let log: WriteStream | undefined;
  if (options.logFile !== undefined) {
    mkdirSync(dirname(options.logFile), { recursive: true });
    log = createWriteStream(options.logFile, { flags: 'a' });
    // A failing log file must not crash the test run; the in-memory ring still has the output.
    log.on('error', () => undefined);
  }

  let file: string;
  let argv: string[];
  try {
    [file, argv] = withParentDeath(options.cmd, options.args ?? []);
  } catch (err) {
    log?.end();
    throw spawnError(options.name, options.cmd, err as Error);
  }
  const child = spawn(file, argv, {
    cwd: options.cwd,
    env,
    detached: false,
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => {
      child.off('spawn', onSpawn);
      log?.end();
      reject(spawnError(options.name, options.cmd, err));
    };
    const onSpawn = (): void => {
      child.off('error', onError);
      resolve();
    };
    child.once('error', onError);
    child.once('spawn', onSpawn);
  });

  const pid = child.pid;
  if (pid === undefined) throw new Error(`${options.name}: spawned without a PID`);
  return new ProcessHandle(options.name, pid, child, log, options.logFile);
}

interface LineWaiter {
  pattern: RegExp;
  resolve: (line: string) => void;
}

class ProcessHandle implements ManagedProcess {
  readonly exited: Promise<ProcessExit>;
  private readonly ring: string[] = [];
  private readonly waiters = new Set<LineWaiter>();
  private exitInfo: ProcessExit | undefined;
  private isPaused = false;
  private readonly partial = { stdout: '', stderr: '' };

  constructor(
    readonly name: string,
    readonly pid: number,
    private readonly child: ChildProcess,
    private readonly log: WriteStream | undefined,
    readonly logFile: string | undefined,
  ) {
    live.add(this);
    liveChildren.add(child);
    child.stdout?.on('data', (chunk: Buffer) => this.onData('stdout', chunk));
    child.stderr?.on('data', (chunk: Buffer) => this.onData('stderr', chunk));
    // Errors after spawn (for example a failed kill) are reported through stop(); an unhandled
    // 'error' event would otherwise crash the test worker.
    child.on('error', () => undefined);
    this.exited = new Promise<ProcessExit>((resolve) => {
      let exitSeen: ProcessExit | undefined;
      let graceTimer: NodeJS.Timeout | undefined;
      const finish = (): void => {
        if (this.exitInfo !== undefined || exitSeen === undefined) return;
        clearTimeout(graceTimer);
        this.flushPartial('stdout');
        this.flushPartial('stderr');
        this.exitInfo = exitSeen;
        live.delete(this);
        liveChildren.delete(child);
        this.log?.end();
        resolve(exitSeen);
      };
      child.once('exit', (code, signal) => {
        exitSeen = { code, signal };
        // 'close' follows once both pipes drained, so the ring holds the last words of the process;
        // a grandchild that inherited the pipes could delay it forever, hence the grace period.
        graceTimer = setTimeout(finish, 1_000);
      });
      child.once('close', finish);
    });
  }

  exit(): ProcessExit | undefined {
    return this.exitInfo;
  }

  running(): boolean {
    return this.exitInfo === undefined;
  }

  paused(): boolean {
    return this.isPaused;
  }

  lines(): string[] {
    return [...this.ring];
  }

  tail(count = 40): string {
    return this.ring.slice(-count).join('\n');
  }

  async waitForLine(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    const seen = this.ring.find((line) => matches(pattern, line));
    if (seen !== undefined) return seen;
    if (this.exitInfo !== undefined) throw this.exitedError(`before printing ${String(pattern)}`);
    return await new Promise<string>((resolve, reject) => {
      const waiter: LineWaiter = {
        pattern,
        resolve: (line) => {
          cleanup();
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new Error(
            `${this.name} (pid ${this.pid}) printed no line matching ${String(pattern)} within ${timeoutMs} ms; last output:\n${this.tail()}`,
          ),
        );
      }, timeoutMs);
      let waiting = true;
      const cleanup = (): void => {
        waiting = false;
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      this.waiters.add(waiter);
      void this.exited.then(() => {
        if (!waiting) return;
        cleanup();
        reject(this.exitedError(`before printing ${String(pattern)}`));
      });
    });
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 5_000): Promise<ProcessExit> {
    if (this.exitInfo !== undefined) return this.exitInfo;
    this.signal(signal);
    // A stopped process only acts on SIGTERM after it is continued.
    if (this.isPaused) this.resume();
    const timer = setTimeout(() => this.signal('SIGKILL'), timeoutMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  pause(): void {
    if (this.exitInfo !== undefined) throw this.exitedError('so it cannot be paused');
    this.signal('SIGSTOP');
    this.isPaused = true;
  }

  resume(): void {
    if (this.exitInfo !== undefined) return;
    this.signal('SIGCONT');
    this.isPaused = false;
  }

  private signal(signal: NodeJS.Signals): void {
    if (this.exitInfo !== undefined) return;
    try {
      // Signals go to this exact PID; processes are never looked up by name.
      process.kill(this.pid, signal);
    } catch (err) {
      // ESRCH means it already exited and 'close' is about to fire; anything else is a real problem.
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  private exitedError(context: string): Error {
    const info = this.exitInfo;
    const how =
      info === undefined
        ? 'exited'
        : info.signal !== null
          ? `was killed by ${info.signal}`
          : `exited with code ${info.code}`;
    return new Error(`${this.name} (pid ${this.pid}) ${how} ${context}; last output:\n${this.tail()}`);
  }

  private onData(stream: 'stdout' | 'stderr', chunk: Buffer): void {
    this.log?.write(chunk);
    const text = this.partial[stream] + chunk.toString('utf8');
    const parts = text.split('\n');
    this.partial[stream] = parts.pop() ?? '';
    for (const line of parts) this.pushLine(line.replace(/\r$/, ''));
  }

  private flushPartial(stream: 'stdout' | 'stderr'): void {
    if (this.partial[stream] !== '') this.pushLine(this.partial[stream]);
    this.partial[stream] = '';
  }

  private pushLine(line: string): void {
    this.ring.push(line);
    if (this.ring.length > RING_SIZE) this.ring.shift();
    for (const waiter of [...this.waiters]) {
      if (matches(waiter.pattern, line)) waiter.resolve(line);
    }
  }
}

function matches(pattern: RegExp, line: string): boolean {
  // Global and sticky regexes keep state between test() calls; resetting makes every check independent.
  pattern.lastIndex = 0;
  return pattern.test(line);
}

export interface RunResult {
  ok: boolean;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface RunOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Kills the command (by PID) after this long; 120 s unless given. */
  timeoutMs?: number;
  input?: string | Buffer;
}

/**
 * Runs a short-lived command to completion and collects its output. It never rejects for a non-zero
 * exit, so callers can assert on failures; it rejects only when the command cannot be started.
 */
export async function runCommand(
  cmd: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [key, value] of Object.entries(options.env ?? {})) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  const started = performance.now();
  let file: string;
  let argv: string[];
  try {
    [file, argv] = withParentDeath(cmd, args);
  } catch (err) {
    throw spawnError(cmd, cmd, err as Error);
  }
  const child = spawn(file, argv, {
    cwd: options.cwd,
    env,
    detached: false,
    stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
  if (options.input !== undefined) child.stdin?.end(options.input);
  installExitHook();
  liveChildren.add(child);
  const timeoutMs = options.timeoutMs ?? 120_000;
  return await new Promise<RunResult>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    child.once('error', (err) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      reject(spawnError(cmd, cmd, err));
    });
    child.once('spawn', () => {
      timer = setTimeout(() => {
        try {
          if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
        } catch {
          // It exited on its own in the meantime.
        }
      }, timeoutMs);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      resolve({
        ok: code === 0,
        code,
        signal,
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
        ms: Math.round(performance.now() - started),
      });
    });
  });
}

/** Like runCommand, but rejects with the command line and its output when it does not exit 0. */
export async function runChecked(
  cmd: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<RunResult> {
  const result = await runCommand(cmd, args, options);
  if (!result.ok) {
    const how = result.signal !== null ? `killed by ${result.signal}` : `exit code ${result.code}`;
    throw new Error(
      `${cmd} ${args.join(' ')} failed (${how}) after ${result.ms} ms\nstdout:\n${result.stdout.trim()}\nstderr:\n${result.stderr.trim()}`,
    );
  }
  return result;
}

/**
 * Resolves with `work` unless `proc` exits first, in which case it rejects with the exit and the
 * last output. Startup probes use it so a server that dies at once fails fast with its own error
 * message instead of a generic timeout.
 */
export async function unlessExited<T>(proc: ManagedProcess, work: Promise<T>, what: string): Promise<T> {
  return await new Promise<T>((resolve, reject) => {
    let settled = false;
    void proc.exited.then((exit) => {
      if (settled) return;
      settled = true;
      const how = exit.signal !== null ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
      reject(new Error(`${proc.name} (pid ${proc.pid}) ${how} while ${what}; last output:\n${proc.tail()}`));
    });
    void work.then(
      (value) => {
        if (settled) return;
        settled = true;
        resolve(value);
      },
      (err: unknown) => {
        if (settled) return;
        settled = true;
        const message = err instanceof Error ? err.message : String(err);
        reject(new Error(`${message}\n${proc.name} last output:\n${proc.tail()}`, { cause: err }));
      },
    );
  });
}
