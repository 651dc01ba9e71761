/**
 * Deadlines judged after the reads they are about.
 *
 * A timer that fires after this process was held up (descheduled on a busy node, a long garbage
 * collection) runs before the event loop reads whatever arrived meanwhile: timers come first in each turn
 * of the loop. A deadline judged at once would blame a peer, or the scheduler, whose answer is already
 * here. In the 24-node swarm on two cores agents were held up for one to four seconds at a time.
 */

/** Runs `verdict` once this turn of the event loop has read its sockets. */
export function afterPendingReads(verdict: () => void): void {
  setImmediate(verdict);
}
