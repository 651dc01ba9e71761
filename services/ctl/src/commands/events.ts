/** `shoalctl events`: the event stream as a timeline. */
import { opt } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { eventFilterSpec } from '../config.js';
import { readEvents } from '../events.js';
import { formatEvent } from '../report.js';

export const eventsCommand = defineCommand({
  name: 'events',
  summary: 'Print events from the event stream: the timeline of pulls, chunks, fallbacks and nodes.',
  spec: {
    ...eventFilterSpec,
    type: opt.string('type', '', 'Only events of this type (e.g. chunk_fetched).'),
    follow: opt.bool('follow', false, 'Keep printing new events as they arrive.'),
  },
  async run({ config, nats, print, signal }) {
    const filter = {
      sinceMs: config.since,
      ...(config.node ? { node: config.node } : {}),
      ...(config.blob ? { blob: config.blob } : {}),
      ...(config.type ? { type: config.type } : {}),
    };
    for await (const event of readEvents(await nats(), filter, config.follow, signal)) {
      print(config.output === 'json' ? JSON.stringify(event) : formatEvent(event));
    }
  },
});
