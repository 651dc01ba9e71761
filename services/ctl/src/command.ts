/**
 * What a shoalctl command is: its name, a summary for --help, its own options (on top of the ones every
 * command shares) and what it does. Each command lives in commands/<name>.ts and is listed once in
 * commands/index.ts.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { ConfigOf, ConfigSpec } from '@shoal/mesh';
import type { commonSpec } from './config.js';

export interface CtlContext<S extends ConfigSpec> {
  config: ConfigOf<typeof commonSpec & S>;
  /** Arguments left after the options, in order (the image of `preheat IMAGE`). */
  args: readonly string[];
  /** Connects to NATS on first use (a command that never needs it never connects); closed after run. */
  nats: () => Promise<NatsConnection>;
  /** Writes one line (or several) to stdout. */
  print: (text: string) => void;
  /** Aborted on SIGINT/SIGTERM, for commands that run until stopped (--follow, preheat). */
  signal: AbortSignal;
}

export interface CtlCommand<S extends ConfigSpec = ConfigSpec> {
  name: string;
  summary: string;
  /** Options of this command only; commonSpec's are added to them. */
  spec: S;
  run(context: CtlContext<S>): Promise<void>;
}

/** Declares a command with its option types inferred. */
export function defineCommand<S extends ConfigSpec>(command: CtlCommand<S>): CtlCommand<S> {
  return command;
}
