/**
 * Runs one preheat over many agents: starts a job on each, polls them all until every node has settled
 * every blob (or the user stops it, which cancels the job on every agent), and folds what they report
 * into one progress record per layer.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentError, type PreheatAgent, type PreheatJobView, type PreheatRequest } from './agents.js';
import type { ImageBlob } from './registry.js';

type CopyState = 'queued' | 'fetching' | 'done' | 'failed';

interface Copy {
  state: CopyState;
  bytes: number;
  error?: string;
}

export interface LayerProgress extends ImageBlob {
  nodes: number;
  /** Bytes held over all selected nodes; complete at size × nodes. */
  bytes: number;
  done: number;
  failed: number;
  /** Milliseconds from the start until the last node settled the layer; absent while some have not. */
  ms?: number;
  failures: { node: string; error: string }[];
}

export interface PreheatReport {
  layers: LayerProgress[];
  /** Nodes that failed as a whole (unreachable, refused the request), with the reason. */
  nodeFailures: Map<string, string>;
  cancelled: boolean;
  ms: number;
}

export interface PreheatRun {
  agents: PreheatAgent[];
  request: PreheatRequest;
  authorization: string | undefined;
  blobs: ImageBlob[];
  pollMs: number;
  /** How long an agent may stay unreachable while polled before its copies count as failed. */
  unreachableAfterMs: number;
  signal: AbortSignal;
  /** Called after every round of polls. */
  onProgress?: (layers: LayerProgress[]) => void;
  /** Called once per layer, when every node has settled it. */
  onLayerSettled?: (layer: LayerProgress) => void;
}

const settled = (copy: Copy) => copy.state === 'done' || copy.state === 'failed';

export async function runPreheat(run: PreheatRun): Promise<PreheatReport> {
  const began = performance.now();
  const copies = new Map<string, Map<string, Copy>>();
  for (const agent of run.agents) {
    copies.set(agent.node.id, new Map(run.blobs.map((b) => [b.digest, { state: 'queued', bytes: 0 }])));
  }
  const nodeFailures = new Map<string, string>();
  const settledAt = new Map<string, number>();
  const reported = new Set<string>();

  const failNode = (node: string, reason: string) => {
    if (!nodeFailures.has(node)) nodeFailures.set(node, reason);
    for (const copy of copies.get(node)?.values() ?? []) {
      if (settled(copy)) continue;
      copy.state = 'failed';
      copy.error = reason;
    }
  };

  const layers = (): LayerProgress[] =>
    run.blobs.map((blob) => {
      let bytes = 0;
      let done = 0;
      let failed = 0;
      const failures: LayerProgress['failures'] = [];
      for (const [node, byDigest] of copies) {
        const copy = byDigest.get(blob.digest);
        if (!copy) continue;
        bytes += copy.state === 'done' ? blob.size : Math.min(copy.bytes, blob.size);
        if (copy.state === 'done') done++;
        if (copy.state === 'failed') {
          failed++;
          failures.push({ node, error: copy.error ?? 'failed' });
        }
      }
      const ms = settledAt.get(blob.digest);
      return {
        ...blob,
        nodes: copies.size,
        bytes,
        done,
        failed,
        ...(ms === undefined ? {} : { ms }),
        failures,
      };
    });

  /** Notes the time layers became settled everywhere and tells the caller, once each. */
  const publish = () => {
    const now = Math.round(performance.now() - began);
    const current = layers();
    for (const layer of current) {
      if (layer.done + layer.failed < layer.nodes || settledAt.has(layer.digest)) continue;
      settledAt.set(layer.digest, now);
      layer.ms = now;
    }
    run.onProgress?.(current);
    for (const layer of current) {
      if (layer.ms === undefined || reported.has(layer.digest)) continue;
      reported.add(layer.digest);
      run.onLayerSettled?.(layer);
    }
  };

  const apply = (node: string, view: PreheatJobView) => {
    const byDigest = copies.get(node);
    if (!byDigest) return;
    for (const blob of view.blobs) {
      const copy = byDigest.get(blob.digest);
      if (!copy || settled(copy)) continue;
      copy.state = blob.state;
      copy.bytes = blob.bytes;
      if (blob.error !== undefined) copy.error = blob.error;
    }
  };

  // Every agent starts its job at once: the mesh spreads the chunks among them as they go.
  const jobs = new Map<PreheatAgent, string>();
  await Promise.all(
    run.agents.map(async (agent) => {
      try {
        jobs.set(agent, await agent.start(run.request, run.authorization));
      } catch (err) {
        failNode(agent.node.id, err instanceof Error ? err.message : String(err));
      }
    }),
  );
  publish();

  const unreachableSince = new Map<string, number>();
  const unsettled = () =>
    [...copies.values()].some((byDigest) => [...byDigest.values()].some((c) => !settled(c)));
  while (unsettled() && !run.signal.aborted) {
    try {
      await sleep(run.pollMs, undefined, { signal: run.signal });
    } catch {
      break;
    }
    await Promise.all(
      [...jobs].map(async ([agent, id]) => {
        const node = agent.node.id;
        if (nodeFailures.has(node)) return;
        try {
          apply(node, await agent.status(id));
          unreachableSince.delete(node);
        } catch (err) {
          const reason = err instanceof Error ? err.message : String(err);
          if (err instanceof AgentError && err.kind === 'unreachable') {
            // A missed poll or two is not a failure: the agent may be busy or the network briefly down.
            const since = unreachableSince.get(node) ?? performance.now();
            unreachableSince.set(node, since);
            if (performance.now() - since < run.unreachableAfterMs) return;
          }
          failNode(node, reason);
        }
      }),
    );
    if (!run.signal.aborted) publish();
  }

  const cancelled = run.signal.aborted && unsettled();
  if (cancelled) {
    await Promise.allSettled([...jobs].map(([agent, id]) => agent.cancel(id)));
    for (const byDigest of copies.values()) {
      for (const copy of byDigest.values()) {
        if (settled(copy)) continue;
        copy.state = 'failed';
        copy.error = 'cancelled';
      }
    }
    publish();
  }
  return { layers: layers(), nodeFailures, cancelled, ms: Math.round(performance.now() - began) };
}
