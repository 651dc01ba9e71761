/**
 * A node of the mesh that lies about what it holds and serves it badly: corrupt bytes, a stall after the
 * headers, or a trickle. Every pull must complete with the right bytes, no agent may keep or pass on a
 * corrupt chunk, and each node that gave up on the liar must drop it for that blob.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { subjects } from '@shoal/mesh';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../kit/index.js';
import { type BadPeer, type BadPeerMode, startBadPeer, waitForManifests } from './bad-peer.js';
import {
  measureBaseline,
  type Harness,
  MiB,
  report,
  type RolloutResult,
  startHarness,
  writeReport,
} from './harness.js';

/** The agents' peer.timeout (the default), and how far from it a node may find a silence. */
const PEER_TIMEOUT_MS = 3_000;
const SILENCE_SLACK_MS = 1_000;

interface Dropped {
  node: string;
  blob: string;
  peer: string;
  why: string;
  /** When the node published the drop (milliseconds since the epoch). */
  at: number;
}

describe('chaos: a bad peer during a rollout', () => {
  let h: Harness;
  let baseline: RolloutResult;
  let nc: NatsConnection;
  const dropped: Dropped[] = [];

  beforeAll(async () => {
    // Layers of 8 chunks: enough transfers from other parents within one download for a slow parent to be
    // compared with them (the agent needs three), as with real layers.
    h = await startHarness({ name: 'peers', layers: 2, layerSize: 8 * MiB });
    nc = await connect({ servers: h.nats.url });
    nc.subscribe(subjects.eventsOfType('parent_dropped'), {
      callback: (_err, msg) => {
        dropped.push(msg.json<Dropped>());
      },
    });
    await nc.flush();
    baseline = await measureBaseline(h, 'baseline-peers', 'No fault: the reference for the bad peers.');
  });

  afterEach(async () => {
    await h?.heal();
  });

  afterAll(async () => {
    await nc?.close();
    await h?.stop();
  });

  /**
   * Runs a rollout with a liar in the first node's vSwitch (the best tier for that node and its
   * neighbour) that claims every chunk of every layer. `announce` says when it does: once the real
   * agents have put every chunk's hash in the mesh (the nodes of its vSwitch then join the rollout), or
   * before the rollout begins.
   */
  async function withBadPeer(
    fault: string,
    mode: BadPeerMode,
    announce: 'once-hashes-known' | 'before-rollout',
    description: string,
  ) {
    const image = await h.pushImage(fault);
    const digests = image.layers.map((l) => l.digest);
    // The liar serves (or mangles) the real bytes, read straight from the registry so they are not counted.
    const blobs = await Promise.all(
      image.layers.map(async (l) => {
        const res = await fetch(`${h.registry.backendUrl}/v2/${image.repo}/blobs/${l.digest}`);
        return { digest: l.digest, bytes: Buffer.from(await res.arrayBuffer()) };
      }),
    );
    const first = h.nodes[0]!;
    const liar: BadPeer = await startBadPeer({
      natsUrl: h.nats.url,
      id: `liar-${mode}-${announce === 'before-rollout' ? 'early' : 'late'}`,
      zone: first.zone,
      vswitch: first.vswitch,
      mode,
      blobs,
    });
    const droppedBefore = dropped.length;
    let result: RolloutResult;
    let announcedAtMs: number | undefined;
    try {
      if (announce === 'before-rollout') await liar.announce();
      const began = Date.now();
      result = await h.rollout(image, {
        ...(announce === 'once-hashes-known'
          ? {
              fault: {
                atFraction: 0,
                inject: async () => {
                  await waitForManifests(h.nats.url, digests);
                  await liar.announce();
                  announcedAtMs = Date.now() - began;
                },
              },
              // The liar's vSwitch neighbours join the rollout once it has announced, so it is their best
              // holder of every chunk. Were they pulling from the start, on a slow machine they could have
              // every chunk from others before the hashes were all known and the liar spoke up.
              startAfterFault: h.nodes.filter((n) => n.vswitch === first.vswitch).map((n) => n.id),
            }
          : {}),
      });
    } finally {
      await liar.stop();
    }
    const verify = await h.verifyAgents(image);

    // Requests to the liar by asking node and blob; a corrupt answer, or one the node gave up on, must
    // have made the node drop the liar for that blob. A silent liar (it stalls) is let off once, as a
    // parent held up by its own node would be: only a request sent after the node found its first
    // silence (peer.timeout after its first unanswered request, give or take) must have dropped it.
    const pairs = new Map<string, { requests: number; mustDrop: boolean; firstUnserved?: number }>();
    for (const r of [...liar.requests].sort((a, b) => a.at - b.at)) {
      const key = `${r.from} ${r.blob}`;
      const pair = pairs.get(key) ?? { requests: 0, mustDrop: false };
      pair.requests++;
      if (mode === 'stall' && !r.served) {
        pair.firstUnserved ??= r.at;
        pair.mustDrop ||= r.at > pair.firstUnserved + PEER_TIMEOUT_MS + SILENCE_SLACK_MS;
      } else {
        pair.mustDrop ||= mode === 'corrupt' || !r.served;
      }
      pairs.set(key, pair);
    }
    const mustDrop = [...pairs].filter(([, p]) => p.mustDrop).map(([key]) => key);
    const droppedLiar = () => dropped.slice(droppedBefore).filter((d) => d.peer === liar.id);
    const wasDropped = (key: string) => droppedLiar().some((d) => `${d.node} ${d.blob}` === key);
    const droppedAt = (key: string) =>
      droppedLiar()
        .filter((d) => `${d.node} ${d.blob}` === key)
        .map((d) => d.at);
    // Events travel through NATS; give the last ones a moment.
    await waitFor(() => mustDrop.every(wasDropped), {
      timeoutMs: 5_000,
      what: 'parent_dropped events',
    }).catch(() => undefined);
    const whys: Record<string, number> = {};
    for (const d of droppedLiar()) whys[d.why] = (whys[d.why] ?? 0) + 1;

    const r = report(fault, description, result, baseline, verify, {
      extra: {
        announced: announce,
        announcedAtMs,
        liarRequests: liar.requests.length,
        liarRequestsServedInFull: liar.requests.filter((x) => x.served).length,
        liarPairs: pairs.size,
        mostRequestsPerPair: Math.max(0, ...[...pairs.values()].map((p) => p.requests)),
        parentDropped: whys,
        verifyFailures: result.counters['shoal_agent_chunk_verify_failures_total{source="peer"}'] ?? 0,
        peerChunkFailures: Object.fromEntries(
          Object.entries(result.counters).filter(([k]) => k.startsWith('shoal_agent_chunk_failures_total')),
        ),
        peerWaitTimeouts: result.counters['shoal_agent_fallbacks_total{reason="peer_wait_timeout"}'] ?? 0,
      },
    });
    await writeReport(r);

    for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
    expect(verify.corruptBytes).toBe(0);
    return { result, liar, whys, pairs, mustDrop, wasDropped, droppedAt };
  }

  /** What every bad-peer rollout must show about the liar once it was offered. */
  function expectAvoided(outcome: Awaited<ReturnType<typeof withBadPeer>>): void {
    // The scheduler did offer the liar, or the rollout would prove nothing.
    expect(outcome.liar.requests.length).toBeGreaterThan(0);
    for (const key of outcome.mustDrop)
      expect(outcome.wasDropped(key), `parent_dropped for ${key}`).toBe(true);
    // Once dropped, never asked again for that blob. Requests already on their way when the drop was
    // published may still arrive (a slow transfer that finished frees a slot just before the drop), so
    // only requests sent a second after it count.
    for (const key of outcome.pairs.keys()) {
      const dropAt = Math.min(...outcome.droppedAt(key));
      if (!Number.isFinite(dropAt)) continue;
      const late = outcome.liar.requests.filter(
        (r) => `${r.from} ${r.blob}` === key && r.at > dropAt + 1_000,
      );
      expect(late, `requests from ${key} after it dropped the peer`).toEqual([]);
    }
  }

  it('serves corrupted chunks: detected, never stored or served onward, and the peer dropped', async () => {
    const outcome = await withBadPeer(
      'peer-corrupt',
      'corrupt',
      'once-hashes-known',
      'A fake node claims every chunk of each layer (once real agents have put their hashes in the mesh) and serves them with a byte in every 64 KiB flipped.',
    );
    expectAvoided(outcome);
    const detected = outcome.result.counters['shoal_agent_chunk_verify_failures_total{source="peer"}'] ?? 0;
    expect(detected).toBeGreaterThan(0);
    expect(detected).toBeLessThanOrEqual(outcome.liar.requests.length);
    expect(outcome.whys['corrupt']).toBeGreaterThan(0);
  });

  it('stalls after the headers: pulls complete and the peer is dropped', async () => {
    const outcome = await withBadPeer(
      'peer-stall',
      'stall',
      'once-hashes-known',
      'A fake node claims every chunk of each layer (once real agents have put their hashes in the mesh), answers 200 with headers and then sends nothing.',
    );
    expectAvoided(outcome);
    expect(outcome.liar.requests.every((r) => !r.served)).toBe(true);
  });

  it('is very slow: pulls complete, and a node that gives up on it drops it', async () => {
    const outcome = await withBadPeer(
      'peer-slow',
      'slow',
      'once-hashes-known',
      'A fake node claims every chunk of each layer (once real agents have put their hashes in the mesh) and serves the right bytes at 64 KiB/s.',
    );
    expectAvoided(outcome);
    // Whether a trickle is cut depends on what the download can compare it with: with three transfers
    // from other parents it is dropped as slow within about a second; a download that has none (its other
    // chunks came from the registry) only has the absolute floor, peer.minRate (256 KiB/s for all its
    // peer fetches together), which four transfers at 64 KiB/s meet, so those complete, with the right
    // bytes, in 16 s each. Either way each request to it ended one of those two ways.
    for (const r of outcome.liar.requests) {
      expect(r.served || outcome.wasDropped(`${r.from} ${r.blob}`), `${r.from} chunk ${r.index}`).toBe(true);
    }
  });

  // A claim without hashes, before anyone has fetched a chunk: nothing can verify the liar's chunks, so
  // the scheduler sends them to the registry (one origin lease at a time) instead of waiting for a hash
  // that only a registry fetch would bring.
  it('claims every chunk before anyone has fetched one: no node waits out origin.waitTimeout', async () => {
    const outcome = await withBadPeer(
      'peer-announced-first',
      'corrupt',
      'before-rollout',
      'A fake node claims every chunk of each layer, without hashes, before the rollout begins, and serves them corrupted.',
    );
    expect(outcome.result.counters['shoal_agent_fallbacks_total{reason="peer_wait_timeout"}'] ?? 0).toBe(0);
    // Each chunk still left the registry about once: origin leases, not waiting, kept the nodes apart.
    expect(outcome.result.registryEgressBytes / outcome.result.imageBytes).toBeLessThan(1.3);
    expectAvoided(outcome);
  });
});
