/** Process lifecycle shared by every service entry point: config errors, signals, graceful stop. */
import { hostname } from 'node:os';
import { type ConfigOf, type ConfigSpec, loadConfig, renderHelp } from './config.js';
import { isShoalError } from './errors.js';

export interface Stoppable {
  stop(): Promise<void>;
}

export interface CommandDefinition<S extends ConfigSpec> {
  command: string;
  summary: string;
  spec: S;
  start(config: ConfigOf<S>, args: string[]): Promise<Stoppable>;
}

/**
 * Loads config and starts a long-running service. A bad option prints one line naming it and exits 2;
 * SIGINT/SIGTERM stop the service gracefully (a second signal, or 10 s, forces the exit).
 */
export async function runService<S extends ConfigSpec>(
  def: CommandDefinition<S>,
  argv: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
): Promise<void> {
  let loaded;
  try {
    loaded = loadConfig(def.spec, { argv, env, command: def.command });
  } catch (err) {
    exitWithError(err);
  }
  if (loaded.help) {
    process.stdout.write(`${renderHelp(def.command, def.summary, def.spec)}\n`);
    return;
  }
  let service: Stoppable;
  try {
    service = await def.start(loaded.config, loaded.args);
  } catch (err) {
    exitWithError(err);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    const timer = setTimeout(() => process.exit(1), 10_000);
    timer.unref();
    service.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`${def.command}: error while stopping on ${signal}: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

export function exitWithError(err: unknown): never {
  const message = isShoalError(err) || err instanceof Error ? err.message : String(err);
  process.stderr.write(`error: ${message}\n`);
  process.exit(isShoalError(err, 'SHOAL_ERR_CONFIG') ? 2 : 1);
}

export function defaultInstanceName(prefix: string): string {
  const host = hostname()
    .replace(/[^A-Za-z0-9_-]/g, '-')
    .slice(0, 40);
  return `${prefix}-${host}-${process.pid}`;
}
