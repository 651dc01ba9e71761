/** `shoalctl explain`: why each chunk of a node's pull came from where it did, and a determinism check. */
import { ShoalError } from '@shoal/mesh';
import { defineCommand } from '../command.js';
import { eventFilterSpec } from '../config.js';
import { explainPull, formatExplanation, verdict } from '../timeline/explain.js';
import { filterOf, parseUntil, readWindow, untilOption } from '../timeline/window.js';

export const explainCommand = defineCommand({
  name: 'explain',
  summary:
    "Explain a node's pull of a layer (--node and --blob): for each chunk, the scheduler's decision and why in words, re-ranking each peer decision's recorded candidates to check it; exits 1 if any differs.",
  spec: { ...eventFilterSpec, until: untilOption },
  async run({ config, nats, print }) {
    if (!config.node || !config.blob) {
      throw new ShoalError('SHOAL_ERR_CONFIG', 'explain needs --node and --blob: whose pull of which layer');
    }
    const untilMs = parseUntil(config.until, Date.now());
    const events = await readWindow(await nats(), filterOf(config), untilMs);
    const explanation = explainPull(events, config.node, config.blob);
    if (config.output === 'json') {
      for (const story of explanation.stories) {
        print(
          JSON.stringify({
            type: 'chunk',
            node: explanation.node,
            blob: explanation.blob,
            ...story,
            decisions: story.decisions.map((d) => ({ ...d, t: d.at - explanation.firstAt })),
          }),
        );
      }
      print(
        JSON.stringify({
          type: 'verdict',
          node: explanation.node,
          blob: explanation.blob,
          ...(explanation.chunks !== undefined ? { chunks: explanation.chunks } : {}),
          decisions: explanation.decisions,
          checked: explanation.checked,
          differing: explanation.differing.length,
          text: verdict(explanation),
        }),
      );
    } else {
      print(formatExplanation(explanation));
    }
    // A decision the ranking does not reproduce fails the check, as a failing test would: the output above
    // says which, and the exit status lets a script notice.
    if (explanation.differing.length > 0) process.exitCode = 1;
  },
});
