/**
 * Rollouts: the layers nodes have started pulling lately, folded from the event stream into how many
 * nodes started, finished and failed, what was fetched so far and from where, and which node has been
 * waiting longest.
 */
import type { ShoalEvent } from '@shoal/mesh';

export interface Rollout {
  blob: string;
  /** Registry and repository of the first pull seen, as images name them. */
  registry: string;
  repository: string;
  size: number;
  /** When the first pull of the window started, and when anything last happened to the layer. */
  startedAt: number;
  lastEventAt: number;
  /**
   * Nodes that started pulling the layer, by where they are now: `running` still serve a client, the
   * others are counted by the outcome of their last pull (a pull passed through to the registry counts
   * as finished: the client got its bytes).
   */
  nodes: { started: number; finished: number; failed: number; running: number };
  /** Chunks fetched so far, over all nodes; `peers` is how many distinct nodes served them. */
  fetched: { chunks: number; bytes: number; peerBytes: number; originBytes: number; peers: number };
  /** The node whose unfinished pull started first, and when. */
  oldestRunning?: { node: string; since: number };
}

interface NodePull {
  /** Start times of pulls not yet finished, oldest first. */
  open: number[];
  last?: 'ok' | 'failed';
}

interface Building {
  rollout: Rollout;
  nodes: Map<string, NodePull>;
  peers: Set<string>;
}

/**
 * Folds events, in stream order, into one rollout per layer with a `pull_started` among them. Finishes
 * whose start fell before the window are ignored, so a layer is listed only for pulls the window saw
 * begin. Rollouts with nodes still pulling come first (longest waiting first), then the rest, most
 * recent first.
 */
export function summariseRollouts(events: Iterable<ShoalEvent>): Rollout[] {
  const byBlob = new Map<string, Building>();
  const close = (pull: NodePull | undefined, outcome: 'ok' | 'failed') => {
    if (!pull || pull.open.length === 0) return;
    pull.open.shift();
    pull.last = outcome;
  };
  for (const event of events) {
    if (event.type === 'pull_started') {
      let entry = byBlob.get(event.blob);
      if (!entry) {
        entry = {
          rollout: {
            blob: event.blob,
            registry: event.registry,
            repository: event.repository,
            size: event.size,
            startedAt: event.at,
            lastEventAt: event.at,
            nodes: { started: 0, finished: 0, failed: 0, running: 0 },
            fetched: { chunks: 0, bytes: 0, peerBytes: 0, originBytes: 0, peers: 0 },
          },
          nodes: new Map(),
          peers: new Set(),
        };
        byBlob.set(event.blob, entry);
      }
      const pull = entry.nodes.get(event.node) ?? { open: [] };
      pull.open.push(event.at);
      entry.nodes.set(event.node, pull);
      entry.rollout.lastEventAt = Math.max(entry.rollout.lastEventAt, event.at);
      continue;
    }
    if (event.type !== 'pull_finished' && event.type !== 'chunk_fetched' && event.type !== 'fallback')
      continue;
    const entry = event.blob === undefined ? undefined : byBlob.get(event.blob);
    if (!entry) continue;
    entry.rollout.lastEventAt = Math.max(entry.rollout.lastEventAt, event.at);
    if (event.type === 'pull_finished') {
      close(entry.nodes.get(event.node), event.ok ? 'ok' : 'failed');
    } else if (event.type === 'fallback') {
      // A pull passed through to the registry ends with this event instead of a pull_finished; other
      // fallbacks are a download going to the registry for chunks, which its pull_finished will end.
      if (event.reason.startsWith('passed through')) close(entry.nodes.get(event.node), 'ok');
    } else {
      const fetched = entry.rollout.fetched;
      fetched.chunks += 1;
      fetched.bytes += event.bytes;
      if (event.source === 'peer') {
        fetched.peerBytes += event.bytes;
        if (event.peer) entry.peers.add(event.peer);
      } else {
        fetched.originBytes += event.bytes;
      }
    }
  }

  const rollouts: Rollout[] = [];
  for (const { rollout, nodes, peers } of byBlob.values()) {
    rollout.nodes.started = nodes.size;
    rollout.fetched.peers = peers.size;
    for (const [node, pull] of nodes) {
      const since = pull.open[0];
      if (since !== undefined) {
        rollout.nodes.running++;
        if (!rollout.oldestRunning || since < rollout.oldestRunning.since)
          rollout.oldestRunning = { node, since };
      } else if (pull.last === 'failed') {
        rollout.nodes.failed++;
      } else {
        rollout.nodes.finished++;
      }
    }
    rollouts.push(rollout);
  }
  return rollouts.sort(
    (a, b) =>
      (a.oldestRunning ? 0 : 1) - (b.oldestRunning ? 0 : 1) ||
      (a.oldestRunning?.since ?? 0) - (b.oldestRunning?.since ?? 0) ||
      b.lastEventAt - a.lastEventAt ||
      a.blob.localeCompare(b.blob),
  );
}
