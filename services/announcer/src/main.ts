#!/usr/bin/env node
// Entry point of the announcer alone; `shoal announcer` runs the same command.
import { runService } from '@shoal/mesh';
import { announcerCommand } from './command.js';

await runService(announcerCommand, process.argv.slice(2), process.env);
