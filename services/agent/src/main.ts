#!/usr/bin/env node
// Entry point of the agent alone; `shoal agent` runs the same command.
import { runService } from '@shoal/mesh';
import { agentCommand } from './command.js';

await runService(agentCommand, process.argv.slice(2), process.env);
