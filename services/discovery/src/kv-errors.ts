/** Recognises the error JetStream returns when a compare-and-set write loses a race. */
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';

export function isCasConflict(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence ||
      err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}
