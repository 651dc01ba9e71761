/** `shoalctl trace`: pulls as a Chrome/Perfetto trace file. */
import { writeFile } from 'node:fs/promises';
import { opt, ShoalError } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { eventFilterSpec } from '../config.js';
import { buildTrace } from '../timeline/trace.js';
import { filterOf, parseUntil, readWindow, untilOption } from '../timeline/window.js';

export const traceCommand = defineCommand({
  name: 'trace',
  summary:
    'Write pulls as a trace for ui.perfetto.dev or chrome://tracing: a track per node, a slice per pull and per chunk fetch (by source), instants for fallbacks and dropped parents.',
  spec: {
    ...eventFilterSpec,
    until: untilOption,
    out: opt.string('out', '', 'The file to write the trace to (Chrome trace JSON).'),
  },
  async run({ config, nats, print }) {
    if (!config.out)
      throw new ShoalError('SHOAL_ERR_CONFIG', '--out: the file to write the trace to is required');
    const untilMs = parseUntil(config.until, Date.now());
    const trace = buildTrace(await readWindow(await nats(), filterOf(config), untilMs));
    await writeFile(config.out, JSON.stringify(trace));
    const { nodes, fetches } = trace.otherData;
    if (config.output === 'json') print(JSON.stringify({ out: config.out, nodes, fetches }));
    else
      print(
        `wrote ${config.out}: ${nodes} nodes, ${fetches} chunk fetches; open it in https://ui.perfetto.dev`,
      );
  },
});
