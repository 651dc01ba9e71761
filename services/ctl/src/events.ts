/** Reading events back from the SHOAL_EVENTS stream, from a point in time, filtered. */
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { type ShoalEvent, streams, subjects } from '@shoal/mesh';

export interface EventFilter {
  sinceMs: number;
  node?: string;
  blob?: string;
  type?: string;
}

function nodeOf(event: ShoalEvent): string {
  return 'node' in event ? event.node : (event as { origin: string }).origin;
}

export function matches(event: ShoalEvent, filter: EventFilter): boolean {
  if (filter.type && event.type !== filter.type) return false;
  if (filter.node && nodeOf(event) !== filter.node) return false;
  if (filter.blob && (!('blob' in event) || event.blob !== filter.blob)) return false;
  return true;
}

/**
 * Yields stored events since the given time, then (with follow) live ones. Without follow it stops at
 * the end of the stream as it was when reading began.
 */
export async function* readEvents(
  nc: NatsConnection,
  filter: EventFilter,
  follow: boolean,
  signal?: AbortSignal,
): AsyncGenerator<ShoalEvent> {
  const js = jetstream(nc);
  const consumer = await js.consumers.get(streams.events, {
    filter_subjects: filter.type ? subjects.eventsOfType(filter.type) : subjects.eventsAll,
    deliver_policy: DeliverPolicy.StartTime,
    opt_start_time: new Date(Date.now() - filter.sinceMs).toISOString(),
  });
  const info = await consumer.info(true);
  let remaining = info.num_pending;
  if (!follow && remaining === 0) return;
  const messages = await consumer.consume();
  // Following ends when the caller is stopped (Ctrl-C): the iterator below then finishes.
  const stop = () => void messages.close();
  signal?.addEventListener('abort', stop, { once: true });
  try {
    for await (const message of messages) {
      remaining = message.info.pending;
      let event: ShoalEvent | undefined;
      try {
        event = message.json<ShoalEvent>();
      } catch {
        event = undefined;
      }
      if (event && matches(event, filter)) yield event;
      if (!follow && remaining === 0) break;
    }
  } finally {
    signal?.removeEventListener('abort', stop);
    await messages.close();
  }
}
