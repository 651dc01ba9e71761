/**
 * Faults of the mesh itself during a rollout: agents killed, the control services killed and restarted,
 * one of two replicas of each control service killed, NATS stopped and restarted, and NATS never reachable. Every
 * node the fault leaves standing must complete its pull.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { freePort, writeHostsToml } from '../kit/index.js';
import { metricSum, type ShoalService, startAgent } from '../support/shoal.js';
import {
  measureBaseline,
  type ChaosNode,
  type Harness,
  type PullTarget,
  report,
  type RolloutResult,
  startHarness,
  targetsOf,
  writeReport,
} from './harness.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('chaos: faults of the mesh during a rollout', () => {
  let h: Harness;
  let baseline: RolloutResult;

  beforeAll(async () => {
    h = await startHarness({ name: 'mesh' });
    baseline = await measureBaseline(h, 'baseline-mesh', 'No fault: the reference for the mesh faults.');
  });

  afterEach(async () => {
    await h?.heal();
  });

  afterAll(async () => {
    await h?.stop();
  });

  it('a quarter of the agents killed: the others complete; a restarted one resumes from its cache', async () => {
    const image = await h.pushImage('agents-killed');
    const victims: ChaosNode[] = [];
    const count = Math.ceil(h.nodes.length / 4);
    const result = await h.rollout(image, {
      fault: {
        atFraction: 1 / 3,
        inject: async () => {
          // Those holding part of the image, the most first, so the one restarted below has something to
          // resume from and something left to fetch.
          const held = await Promise.all(
            h.nodes.map(async (n) => ({ node: n, bytes: await h.cachedBytes(n, image) })),
          );
          const whole = image.layersSize + image.config.size;
          const partial = (bytes: number) => (bytes > 0 && bytes < whole ? 0 : 1);
          held.sort(
            (x, y) =>
              partial(x.bytes) - partial(y.bytes) || y.bytes - x.bytes || x.node.id.localeCompare(y.node.id),
          );
          victims.push(...held.slice(0, count).map((x) => x.node));
          await Promise.all(victims.map(async (n) => await h.killAgent(n)));
        },
      },
    });
    const killed = victims.map((n) => n.id);
    // Nodes the scheduler stopped counting on because the others could not connect to them.
    const suspicions = metricSum(
      await h.control.scheduler[0]!.metrics(),
      'shoal_scheduler_node_suspicions_total',
    );
    const survivors = h.nodes.filter((n) => !killed.includes(n.id));
    const verify = await h.verifyAgents(result.image, targetsOf(survivors));

    // The first victim comes back with the same cache dir and pulls again: it fetches only what it lacks.
    const back = victims[0]!;
    const cachedAtStart = await h.cachedBytes(back, image);
    const agent = await h.restartAgent(back);
    const again = await back.containerd.pull({
      ref: image.ref,
      hostsDir: back.hostsDir,
      namespace: back.containerd.newNamespace('again'),
    });
    const refetched = metricSum(await agent.metrics(), 'shoal_agent_fetch_bytes_total');
    const resume = await h.verifyAgents(image, targetsOf([back]));

    const r = report(
      'agents-killed',
      `${count} of ${h.nodes.length} agents killed (SIGKILL) once a third of the bytes had moved; then one restarted with its cache and pulled again.`,
      result,
      baseline,
      verify,
      {
        killed,
        extra: {
          killed,
          suspicions,
          restarted: back.id,
          restartedCachedBytes: cachedAtStart,
          restartedFetchedBytes: refetched,
          imageBytes: result.imageBytes,
          restartedPullOk: again.ok,
          restartedPullMs: again.ms,
        },
      },
    );
    await writeReport(r);
    expect(result.injectedAtMs).toBeDefined();

    expect(victims).toHaveLength(count);
    for (const pull of result.pulls.filter((p) => !killed.includes(p.node))) {
      expect(pull, pull.error).toMatchObject({ ok: true });
    }
    expect(verify.corruptBytes).toBe(0);
    expect(r.pullsLost).toBe(0);
    expect(again.ok, again.stderr).toBe(true);
    expect(resume.corruptBytes).toBe(0);
    expect(cachedAtStart).toBeGreaterThan(0);
    expect(refetched).toBeLessThan(result.imageBytes);
    // What it had is not fetched again.
    expect(refetched).toBeLessThanOrEqual(result.imageBytes - cachedAtStart);
  });

  it('every control service killed and restarted: pulls complete', async () => {
    const image = await h.pushImage('control-killed');
    const result = await h.rollout(image, {
      fault: {
        atFraction: 1 / 3,
        inject: async () => {
          await h.killControl();
          // Down long enough for agents to notice (no responders, then the 3 s mesh back-off).
          await sleep(1_000);
          await h.restartControl();
        },
      },
    });
    const verify = await h.verifyAgents(image);
    const r = report(
      'control-plane-killed',
      'Scheduler, announcer and discovery killed (SIGKILL) together once a third of the bytes had moved, restarted 1 s later.',
      result,
      baseline,
      verify,
    );
    await writeReport(r);
    expect(result.injectedAtMs).toBeDefined();
    for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
    expect(verify.corruptBytes).toBe(0);
  });

  it('one of two replicas of each control service killed: the others carry on, pulls go through the mesh', async () => {
    const kinds = ['discovery', 'announcer', 'scheduler'] as const;
    const counters: Record<(typeof kinds)[number], string> = {
      discovery: 'shoal_discovery_heartbeats_total',
      announcer: 'shoal_announcer_announcements_applied_total',
      scheduler: 'shoal_scheduler_requests_total',
    };
    const survivors = await Promise.all(kinds.map(async (kind) => await h.startReplica(kind, `${kind}-2`)));
    const image = await h.pushImage('replica-killed');
    const atKill: number[] = [];
    const result = await h.rollout(image, {
      fault: {
        atFraction: 1 / 3,
        inject: async () => {
          await Promise.all(kinds.map(async (kind) => await h.control[kind][0]!.stop('SIGKILL')));
          for (const [i, kind] of kinds.entries())
            atKill.push(metricSum(await survivors[i]!.metrics(), counters[kind]));
        },
      },
    });
    const verify = await h.verifyAgents(image);
    // What each survivor did after the kill: heartbeats taken, announcements applied, plans made.
    const afterKill = Object.fromEntries(
      await Promise.all(
        kinds.map(async (kind, i) => [
          kind,
          metricSum(await survivors[i]!.metrics(), counters[kind]) - atKill[i]!,
        ]),
      ),
    ) as Record<(typeof kinds)[number], number>;
    const r = report(
      'control-replica-killed',
      'Two replicas each of discovery, announcer and scheduler; the first of each killed (SIGKILL) once a third of the bytes had moved, not restarted.',
      result,
      baseline,
      verify,
      { extra: { survivorsAfterKill: afterKill } },
    );
    await writeReport(r);
    expect(result.injectedAtMs).toBeDefined();
    for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
    expect(verify.corruptBytes).toBe(0);
    for (const kind of kinds) expect(afterKill[kind], `${kind}-2 after the kill`).toBeGreaterThan(0);
    // The surviving replicas keep the mesh working, so it still carries most of the rollout: requests
    // that were in flight to the killed scheduler time out (scheduler.timeout), and their downloads ask
    // the survivor again, taking at most a chunk from the registry meanwhile: far from an image per node.
    expect(r.registryEgressImages).toBeLessThan(r.nodes / 2);
  });

  it('NATS stopped mid-rollout and restarted: pulls complete', async () => {
    const image = await h.pushImage('nats-stopped');
    const result = await h.rollout(image, {
      fault: {
        atFraction: 1 / 3,
        inject: async () => {
          await h.nats.process().stop();
          await sleep(2_000);
          await h.nats.restart();
        },
      },
    });
    const verify = await h.verifyAgents(image);
    const r = report(
      'nats-stopped',
      'nats-server stopped once a third of the bytes had moved, started again 2 s later on the same store.',
      result,
      baseline,
      verify,
    );
    await writeReport(r);
    expect(result.injectedAtMs).toBeDefined();
    for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
    expect(verify.corruptBytes).toBe(0);
  });

  it('NATS never reachable: pulls complete from the registry', async () => {
    // A second set of agents, one per node, pointed at a port where nothing listens.
    const closed = await freePort();
    const isolated: ShoalService[] = [];
    try {
      isolated.push(
        ...(await Promise.all(
          h.nodes.map(
            async (n) =>
              await startAgent({
                id: `${n.id}-alone`,
                natsUrl: `nats://127.0.0.1:${closed}`,
                registries: [h.registry.url],
                dir: h.dir,
                zone: n.zone,
                vswitch: n.vswitch,
              }),
          ),
        )),
      );
      const targets: PullTarget[] = await Promise.all(
        h.nodes.map(async (n, i) => {
          const agent = isolated[i]!;
          const hostsDir = join(h.dir, 'hosts-alone', n.id);
          await writeHostsToml(hostsDir, h.registry.host, agent.url);
          return { id: n.id, containerd: n.containerd, hostsDir, agent };
        }),
      );
      const image = await h.pushImage('nats-unreachable');
      const result = await h.rollout(image, { targets });
      const verify = await h.verifyAgents(image, targets);
      const r = report(
        'nats-unreachable',
        'Every agent pointed at a NATS port where nothing listens, from its start.',
        result,
        baseline,
        verify,
      );
      await writeReport(r);
      for (const pull of result.pulls) expect(pull, pull.error).toMatchObject({ ok: true });
      expect(verify.corruptBytes).toBe(0);
      expect(result.counters['shoal_agent_fallbacks_total{reason="nats_unavailable"}']).toBeGreaterThan(0);
    } finally {
      await Promise.allSettled(isolated.map(async (a) => await a.stop()));
    }
  });
});
