#!/usr/bin/env node
// Entry point of the discovery alone; `shoal discovery` runs the same command.
import { runService } from '@shoal/mesh';
import { discoveryCommand } from './command.js';

await runService(discoveryCommand, process.argv.slice(2), process.env);
