#!/usr/bin/env node
/**
 * `shoal <service> [options]`: one entry point for every service, so one image and one binary run the
 * whole mesh. Each service reads its options from flags, SHOAL_* environment variables or a YAML file.
 */
import { renderReference, runService } from '@shoal/mesh';
import { allCommands, commands } from './commands.js';

const usage = async () => `Usage: shoal <command> [options]

Commands:
${(await allCommands()).map(([name, def]) => `  ${name.padEnd(12)} ${def.summary}`).join('\n')}
  config-reference  Print the configuration reference of every service (Markdown).

Run "shoal <command> --help" for the options of a command.`;

const [name, ...rest] = process.argv.slice(2);
if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
  process.stdout.write(`${await usage()}\n`);
  process.exit(name === undefined ? 2 : 0);
}
if (name === 'config-reference') {
  const sections = (await allCommands()).map(([, { command, summary, spec }]) => ({
    command,
    summary,
    spec,
  }));
  process.stdout.write(renderReference(sections));
  process.exit(0);
}
const load = Object.hasOwn(commands, name) ? commands[name] : undefined;
if (!load) {
  process.stderr.write(`error: unknown command "${name}"; run "shoal --help" for the list\n`);
  process.exit(2);
}
await runService(await load(), rest, process.env);
