/** `shoalctl pulls`: per node and layer, where a pull's chunks came from and how long it took. */
import type { ShoalEvent } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { eventFilterSpec } from '../config.js';
import { readEvents } from '../events.js';
import { formatPulls, summarisePulls } from '../report.js';

export const pullsCommand = defineCommand({
  name: 'pulls',
  summary: 'Summarise pulls: for each node and layer, its size, time, and where its chunks came from.',
  spec: eventFilterSpec,
  async run({ config, nats, print }) {
    const filter = {
      sinceMs: config.since,
      ...(config.node ? { node: config.node } : {}),
      ...(config.blob ? { blob: config.blob } : {}),
    };
    const events: ShoalEvent[] = [];
    for await (const event of readEvents(await nats(), filter, false)) events.push(event);
    const pulls = summarisePulls(events);
    if (config.output === 'json') for (const pull of pulls) print(JSON.stringify(pull));
    else print(formatPulls(pulls));
  },
});
