/** `shoalctl replay`: the timeline of a pull, a node or a blob, rebuilt from the event stream. */
import { opt, ShoalError } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { eventFilterSpec } from '../config.js';
import { readEvents } from '../events.js';
import { entryJson, formatEntryLine, formatPull, formatSummary, summaryJson } from '../timeline/format.js';
import { buildTimeline, createTimeline, type PullReplay, type TimelineEntry } from '../timeline/timeline.js';
import { filterOf, parseUntil, readWindow, untilOption } from '../timeline/window.js';

export const replayCommand = defineCommand({
  name: 'replay',
  summary:
    "Replay pulls from the event stream: per node and layer, when the pull started and finished, each chunk's assignment, fetch or failure, dropped parents and fallbacks, and whether every chunk was fetched exactly once.",
  spec: {
    ...eventFilterSpec,
    until: untilOption,
    follow: opt.bool('follow', false, 'Keep printing steps as they arrive, until Ctrl-C.'),
  },
  async run({ config, nats, print, signal }) {
    const json = config.output === 'json';
    const untilMs = parseUntil(config.until, Date.now());
    if (config.follow && untilMs !== undefined) {
      throw new ShoalError(
        'SHOAL_ERR_CONFIG',
        '--until: cannot be combined with --follow, which reads on from now',
      );
    }
    const filter = filterOf(config);
    const nc = await nats();
    const summary = (pull: PullReplay) => print(json ? summaryJson(pull) : formatSummary(pull));

    if (!config.follow) {
      const { entries, pulls } = buildTimeline(await readWindow(nc, filter, untilMs));
      if (pulls.length === 0) {
        if (!json) print('no pulls found');
        return;
      }
      const steps = new Map<string, TimelineEntry[]>();
      for (const entry of entries) {
        const key = `${entry.node}\n${entry.blob}`;
        steps.set(key, [...(steps.get(key) ?? []), entry]);
      }
      pulls.forEach((pull, i) => {
        const mine = steps.get(`${pull.node}\n${pull.blob}`) ?? [];
        if (json) {
          for (const entry of mine) print(entryJson(entry));
          summary(pull);
        } else {
          print(`${i > 0 ? '\n' : ''}${formatPull(pull, mine)}`);
        }
      });
      return;
    }

    // Followed, steps are printed as they arrive, and a pull's summary each time one of its requests
    // finishes; when stopped, the pulls still going are summarised as they stand.
    const timeline = createTimeline();
    const finished = new Set<string>();
    for await (const event of readEvents(nc, filter, true, signal)) {
      for (const entry of timeline.add(event)) {
        print(json ? entryJson(entry) : formatEntryLine(entry));
        if (entry.kind !== 'finished') continue;
        const pull = timeline.pull(entry.node, entry.blob);
        if (pull) summary(pull);
        finished.add(`${entry.node}\n${entry.blob}`);
      }
    }
    for (const pull of timeline.pulls()) if (!finished.has(`${pull.node}\n${pull.blob}`)) summary(pull);
  },
});
