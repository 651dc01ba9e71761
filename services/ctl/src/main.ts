#!/usr/bin/env node
/**
 * shoalctl: looks at and steers the mesh through NATS, the same way the services talk to each other.
 * Each command is in commands/; `shoalctl --help` lists them, `shoalctl <command> --help` their options.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  exitWithError,
  loadConfig,
  natsAuth,
  natsConnectOptions,
  renderHelp,
  renderReference,
  ShoalError,
} from '@shoal/mesh';
import { ctlCommands } from './commands/index.js';
import { commonSpec } from './config.js';

function usage(): string {
  const width = Math.max(...ctlCommands.map((c) => c.name.length)) + 2;
  const list = ctlCommands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`).join('\n');
  return `Usage: shoalctl <command> [options]\n\nCommands:\n${list}\n\nRun "shoalctl <command> --help" for options.\n`;
}

async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (name === 'config-reference') {
    process.stdout.write(
      renderReference(
        ctlCommands.map((c) => ({
          command: `shoalctl ${c.name}`,
          summary: c.summary,
          spec: { ...commonSpec, ...c.spec },
        })),
        { header: false },
      ),
    );
    return;
  }
  if (name === undefined || name === '--help' || name === '-h') {
    process.stdout.write(usage());
    process.exit(name === undefined ? 2 : 0);
  }
  const command = ctlCommands.find((c) => c.name === name);
  if (!command) {
    throw new ShoalError('SHOAL_ERR_CONFIG', `unknown command "${name}"; run "shoalctl --help" for the list`);
  }
  const spec = { ...commonSpec, ...command.spec };
  const { config, args, help } = loadConfig(spec, {
    argv: rest,
    env: process.env,
    command: `shoalctl ${name}`,
  });
  if (help) {
    process.stdout.write(`${renderHelp(`shoalctl ${name}`, command.summary, spec)}\n`);
    return;
  }
  let connection: Promise<NatsConnection> | undefined;
  const nats = () =>
    (connection ??= connect({
      servers: config.natsServers,
      timeout: config.timeoutMs,
      ...natsConnectOptions(natsAuth(config)),
    }).catch((cause: unknown) => {
      throw new ShoalError(
        'SHOAL_ERR_MESH_UNAVAILABLE',
        `cannot reach NATS at ${config.natsServers.join(',')}: check --nats-servers`,
        { cause },
      );
    }));
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    await command.run({
      config,
      args,
      nats,
      print: (text) => process.stdout.write(`${text}\n`),
      signal: stop.signal,
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (connection) await (await connection.catch(() => undefined))?.close();
  }
}

main(process.argv.slice(2)).catch(exitWithError);
