/** The stretch of the event stream a timeline command reads: --since … --until, and its filters. */
import type { NatsConnection } from '@nats-io/transport-node';
import { opt, parseDurationMs, ShoalError, type ShoalEvent } from '@shoal/mesh';
import { readEvents, type EventFilter } from '../events.js';

export const untilOption = opt.string(
  'until',
  '',
  'Only events before this: a duration ago (e.g. 10m) or an ISO time (e.g. 2025-01-31T12:00:00Z); empty for now.',
  {
    pattern:
      /^(|\d+(\.\d+)?\s*(ms|s|m|h|d)?|\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?)$/i,
    hint: 'duration ago or ISO time',
  },
);

/** The end of the window in milliseconds since the epoch, or undefined for "up to now". */
export function parseUntil(text: string, now: number): number | undefined {
  if (text === '') return undefined;
  const ago = parseDurationMs(text);
  if (ago !== undefined) return now - ago;
  const at = Date.parse(text);
  if (Number.isNaN(at)) throw new ShoalError('SHOAL_ERR_CONFIG', `--until: "${text}" is not a time`);
  return at;
}

/** The filter for the shared --since, --node and --blob options. */
export function filterOf(config: { since: number; node: string; blob: string }): EventFilter {
  return {
    sinceMs: config.since,
    ...(config.node ? { node: config.node } : {}),
    ...(config.blob ? { blob: config.blob } : {}),
  };
}

/**
 * How far past the end of the window reading goes on: events are stored in the order they arrived, each
 * stamped by its publisher's clock, so an event of the window may follow one stamped a little later.
 */
const CLOCK_SLACK_MS = 60_000;

/** Every stored event of the window, up to `untilMs` if given. */
export async function readWindow(
  nc: NatsConnection,
  filter: EventFilter,
  untilMs: number | undefined,
): Promise<ShoalEvent[]> {
  const events: ShoalEvent[] = [];
  for await (const event of readEvents(nc, filter, false)) {
    if (untilMs === undefined || event.at <= untilMs) events.push(event);
    else if (event.at > untilMs + CLOCK_SLACK_MS) break;
  }
  return events;
}
