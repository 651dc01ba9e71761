#!/usr/bin/env node
// Entry point of the scheduler alone; `shoal scheduler` runs the same command.
import { runService } from '@shoal/mesh';
import { schedulerCommand } from './command.js';

await runService(schedulerCommand, process.argv.slice(2), process.env);
