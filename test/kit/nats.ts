import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { onFreePorts } from './ports.js';
import { startProcess, unlessExited, type ManagedProcess } from './process.js';
import { makeTempDir, removeTempDir } from './tmp.js';
import { waitForHttp, waitForTcp } from './wait.js';

export interface StartNatsOptions {
  /** Directory for the config, log and JetStream store; a fresh temp dir unless given (and then kept on stop). */
  dir?: string;
  /** Label for logs and errors; "nats" unless given. */
  name?: string;
  /** How long to wait for the server to become ready; 15 s unless given. */
  readyTimeoutMs?: number;
  /** Further lines for nats.conf, e.g. a tls block. */
  extraConfig?: string[];
}

export interface NatsServer {
  /** nats://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** Port of the HTTP monitoring endpoint (/varz, /healthz, /jsz). */
  readonly monitorPort: number;
  readonly monitorUrl: string;
  readonly dir: string;
  readonly storeDir: string;
  readonly logFile: string;
  /** The current server process; replaced by restart(). */
  process(): ManagedProcess;
  /** Stops the server and removes the directory if the kit created it. Safe to call twice. */
  stop(): Promise<void>;
  /**
   * Stops the server and starts it again on the same ports with the same JetStream store. With
   * `{ kill: true }` it is ended by SIGKILL, like a crash, instead of a clean SIGTERM shutdown.
   */
  restart(options?: { kill?: boolean }): Promise<void>;
}

/** Starts nats-server with JetStream on free loopback ports and resolves once it accepts clients. */
export async function startNats(options: StartNatsOptions = {}): Promise<NatsServer> {
  const ownsDir = options.dir === undefined;
  const dir = options.dir ?? (await makeTempDir('nats'));
  const name = options.name ?? 'nats';
  const readyTimeoutMs = options.readyTimeoutMs ?? 15_000;
  const storeDir = join(dir, 'jetstream');
  const configFile = join(dir, 'nats.conf');
  const logFile = join(dir, 'nats.log');
  await mkdir(storeDir, { recursive: true });
  // Chosen by the first start (see onFreePorts); a restart keeps them.
  let port = 0;
  let monitorPort = 0;
  const writeConfig = () =>
    // The default max_payload of 1 MiB rejects a 1 MiB message once headers are added, so allow 8 MB.
    writeFile(
      configFile,
      [
        `listen: 127.0.0.1:${port}`,
        `http: 127.0.0.1:${monitorPort}`,
        'max_payload: 8MB',
        `jetstream {`,
        `  store_dir: ${JSON.stringify(storeDir)}`,
        `}`,
        ...(options.extraConfig ?? []),
        '',
      ].join('\n'),
    );

  const launch = async (): Promise<ManagedProcess> => {
    const proc = await startProcess({ name, cmd: 'nats-server', args: ['-c', configFile], logFile });
    try {
      await unlessExited(
        proc,
        (async () => {
          await waitForTcp(port, readyTimeoutMs);
          // The health check with js-enabled-only answers 200 only once JetStream is up.
          await waitForHttp(`http://127.0.0.1:${monitorPort}/healthz?js-enabled-only=true`, readyTimeoutMs, {
            accept: (status) => status === 200,
          });
        })(),
        'starting',
      );
    } catch (err) {
      await proc.stop('SIGKILL');
      throw err;
    }
    return proc;
  };

  let current: ManagedProcess;
  try {
    current = await onFreePorts(2, async ([chosen = 0, monitor = 0]) => {
      [port, monitorPort] = [chosen, monitor];
      await writeConfig();
      return launch();
    });
  } catch (err) {
    if (ownsDir) await removeTempDir(dir);
    throw err;
  }
  let stopped = false;

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    monitorPort,
    monitorUrl: `http://127.0.0.1:${monitorPort}`,
    dir,
    storeDir,
    logFile,
    process: () => current,
    async stop() {
      if (stopped) return;
      stopped = true;
      await current.stop();
      if (ownsDir) await removeTempDir(dir);
    },
    async restart(restartOptions = {}) {
      if (stopped) throw new Error(`${name}: restart() after stop()`);
      await current.stop(restartOptions.kill === true ? 'SIGKILL' : 'SIGTERM');
      current = await launch();
    },
  };
}
