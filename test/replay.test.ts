/**
 * Seeing a rollout after the fact, on real processes: one layer pulled through agent A (from the
 * registry), then B and C (from the mesh), and the real shoalctl rebuilding it from the event stream:
 * `replay` accounts for every chunk as the agents' own metrics do, `explain` re-ranks every recorded
 * decision to the same parent, and `trace` writes a trace with a track per node and a slice per fetch.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { subjects, type ShoalEvent } from '@shoal/mesh';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildAndPushImage,
  type BuiltImage,
  makeTempDir,
  type NatsServer,
  type Registry,
  removeTempDir,
  runCommand,
  startNats,
  startProcess,
  startRegistry,
  waitFor,
} from './kit/index.js';
import {
  type ControlPlane,
  metric,
  type ShoalService,
  shoalctlMain,
  startControlPlane,
  startPatientAgents,
  waitForHolders,
  pullBlob,
} from './support/shoal.js';

const MiB = 1024 * 1024;

/** GETs a blob through an agent's mirror API and returns its sha256 and length. */

interface Tally {
  chunks: number;
  bytes: number;
}
interface Step {
  type: 'step';
  kind: string;
  node: string;
  index?: number;
  source?: string;
  peer?: string;
  bytes?: number;
}
interface Summary {
  type: 'summary';
  node: string;
  status: string;
  ok?: boolean;
  size: number;
  chunkSize: number;
  chunks: number;
  fetched: { peer: Tally; origin: Tally };
  fallbacks: number;
  fetchedTwice: number[];
  assignedNotFetched: number[];
  missing: number[];
}
interface TraceEvent {
  name: string;
  ph: string;
  cat?: string;
  pid: number;
  tid: number;
  ts?: number;
  dur?: number;
  args?: Record<string, unknown>;
}

const lines = (stdout: string) =>
  stdout
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as Step | Summary);

describe('replaying, explaining and tracing a pull', () => {
  let dir: string;
  let nats: NatsServer;
  let registry: Registry;
  let control: ControlPlane;
  let image: BuiltImage;
  const agents: ShoalService[] = [];

  const shoalctl = (...args: string[]) =>
    runCommand(process.execPath, [shoalctlMain, ...args, `--nats-servers=${nats.url}`, '--since=10m'], {
      timeoutMs: 30_000,
    });

  beforeAll(async () => {
    dir = await makeTempDir('replay');
    [nats, registry] = await Promise.all([startNats(), startRegistry()]);
    image = await buildAndPushImage({
      registry,
      repo: 'team/replay',
      tag: 'v1',
      layers: 1,
      layerSize: 12 * MiB,
    });
    control = await startControlPlane(nats.url, dir);
    agents.push(...(await startPatientAgents(nats.url, registry.url, dir, ['a', 'b', 'c'])));
  });

  afterAll(async () => {
    await Promise.allSettled(agents.map((a) => a.stop()));
    await control?.stop();
    await Promise.allSettled([registry?.stop(), nats?.stop()]);
    await removeTempDir(dir);
  });

  it('accounts for every chunk as the agents do, reproduces every decision, and traces every fetch', async () => {
    const layer = image.layers[0]!;
    const blob = layer.digest;
    // One after the other, each once the previous one is listed as a holder: B can take the layer only
    // from A, and C from A or B. C's pull is also followed live, as it happens.
    const pull = async (i: number) => {
      expect(await pullBlob(agents[i]!, image.repo, blob)).toEqual({ sha256: blob, bytes: layer.size });
      await waitForHolders(nats.url, ['a', 'b', 'c'][i]!, [blob]);
    };
    await pull(0);
    await pull(1);
    const followLog = join(dir, 'follow.log');
    const follower = await startProcess({
      name: 'replay-follow',
      cmd: process.execPath,
      args: [shoalctlMain, 'replay', '--follow', '--node=c', `--blob=${blob}`, '--output=json'].concat(
        `--nats-servers=${nats.url}`,
        '--since=30s',
      ),
      logFile: followLog,
    });
    await pull(2);
    await follower.waitForLine(/"type":"summary"/, 20_000);
    expect(await follower.stop('SIGINT')).toEqual({ code: 0, signal: null });
    const followed = lines(await readFile(followLog, 'utf8'));
    const followedSummary = followed.find((l): l is Summary => l.type === 'summary');
    expect(followedSummary).toMatchObject({ node: 'c', status: 'consistent', ok: true });
    expect(followed.filter((l) => l.type === 'step' && l.kind === 'fetched')).toHaveLength(
      followedSummary!.chunks,
    );

    // Events reach the stream a moment after they are published: wait for all three pulls to finish there.
    const all = await waitFor(
      async () => {
        const run = await shoalctl('replay', `--blob=${blob}`, '--output=json');
        if (run.code !== 0) throw new Error(run.stderr);
        const summaries = lines(run.stdout).filter((l): l is Summary => l.type === 'summary');
        return summaries.length === 3 && summaries.every((s) => s.ok === true)
          ? lines(run.stdout)
          : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 250, what: 'three finished pulls in the event stream' },
    );
    const summaries = all.filter((l): l is Summary => l.type === 'summary');
    expect(summaries.map((s) => [s.node, s.status])).toEqual([
      ['a', 'consistent'],
      ['b', 'consistent'],
      ['c', 'consistent'],
    ]);

    // B on its own: every chunk of the layer fetched exactly once, from the sources B's metrics count.
    const replayB = await shoalctl('replay', '--node=b', `--blob=${blob}`, '--output=json');
    expect(replayB.code, replayB.stderr).toBe(0);
    const stepsB = lines(replayB.stdout).filter((l): l is Step => l.type === 'step');
    const summaryB = lines(replayB.stdout).find((l): l is Summary => l.type === 'summary')!;
    expect(summaryB).toMatchObject({
      node: 'b',
      status: 'consistent',
      ok: true,
      size: layer.size,
      fallbacks: 0,
      fetchedTwice: [],
      assignedNotFetched: [],
      missing: [],
    });
    expect(summaryB.chunks).toBe(Math.ceil(layer.size / summaryB.chunkSize));
    const fetchedB = stepsB.filter((s) => s.kind === 'fetched');
    expect(fetchedB.map((s) => s.index).sort((x, y) => x! - y!)).toEqual(
      Array.from({ length: summaryB.chunks }, (_, i) => i),
    );
    // No fallback: each chunk was fetched as the scheduler assigned it.
    for (const fetch of fetchedB) {
      expect(
        stepsB.some((s) => s.kind === 'assigned' && s.index === fetch.index && s.source !== 'wait'),
        `chunk ${fetch.index} assigned`,
      ).toBe(true);
    }
    const metricsB = await agents[1]!.metrics();
    const fetchBytes = (source: string) => metric(metricsB, 'shoal_agent_fetch_bytes_total', { source });
    expect(summaryB.fetched.peer.bytes).toBe(fetchBytes('peer'));
    expect(summaryB.fetched.origin.bytes).toBe(fetchBytes('origin'));
    expect(summaryB.fetched.peer.bytes + summaryB.fetched.origin.bytes).toBe(layer.size);
    expect(summaryB.fetched.peer.chunks).toBeGreaterThan(0);

    const table = await shoalctl('replay', '--node=b', `--blob=${blob}`);
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/^TIME\s+EVENT\s+CHUNK\s+SOURCE\s+DETAIL$/m);
    expect(table.stdout).toMatch(/^\+\d+\.\d{3}s\s+fetched\s+0\s+(peer a|origin)\s/m);
    expect(table.stdout).toContain('every chunk fetched exactly once');

    // Every recorded peer decision re-ranks to the same parent by the same rule.
    for (const node of ['b', 'c']) {
      const explained = await shoalctl('explain', `--node=${node}`, `--blob=${blob}`);
      expect(explained.code, `${explained.stdout}\n${explained.stderr}`).toBe(0);
      expect(explained.stdout).toMatch(/peer decisions? re-rank(s)? to the same parent by the same rule$/m);
      expect(explained.stdout).not.toMatch(/\bdiffers\b/);
      expect(explained.stdout).toMatch(/^0\s+\+\d+\.\d{3}s\s+(peer [abc]: same vSwitch|origin: |wait: )/m);
    }
    // A decision its own candidates contradict (as if the ranking had changed under it) fails the check.
    const nc = await connect({ servers: nats.url });
    const tampered: ShoalEvent = {
      type: 'chunks_assigned',
      at: Date.now(),
      origin: 'scheduler',
      scheduler: 'scheduler',
      node: 'z',
      blob,
      size: layer.size,
      chunkSize: summaryB.chunkSize,
      assignments: [
        {
          index: 0,
          source: 'peer',
          peer: 'a',
          candidates: [
            { node: 'a', tier: 0, load: 2, tie: 0 },
            { node: 'b', tier: 0, load: 1, tie: 1 },
          ],
          reason: 'load',
        },
      ],
    };
    await jetstream(nc).publish(subjects.event(tampered.type, tampered.origin), JSON.stringify(tampered));
    await nc.close();
    const differs = await shoalctl('explain', '--node=z', `--blob=${blob}`);
    expect(differs.code, differs.stderr).toBe(1);
    expect(differs.stdout).toMatch(/^0\s+\+0\.000s\s+peer a: same vSwitch, .*\s+differs$/m);
    expect(differs.stdout).toMatch(
      /chunk 0 at \+0\.000s: recorded a \(load\), the ranking chooses b \(load\)/,
    );

    const missingBlob = await shoalctl('explain', '--node=b');
    expect(missingBlob.code).toBe(2);
    expect(missingBlob.stderr).toMatch(/explain needs --node and --blob/);

    // A trace of the three pulls: a named track per node, a slice per fetched chunk.
    const out = join(dir, 'trace.json');
    const traced = await shoalctl('trace', `--out=${out}`, `--blob=${blob}`);
    expect(traced.code, traced.stderr).toBe(0);
    const trace = JSON.parse(await readFile(out, 'utf8')) as { traceEvents: TraceEvent[] };
    const tracks = trace.traceEvents.filter((e) => e.ph === 'M' && e.name === 'process_name');
    expect(tracks.map((e) => e.args?.name).sort()).toEqual(['a', 'b', 'c']);
    const fetches = trace.traceEvents.filter((e) => e.ph === 'X' && e.cat?.startsWith('fetch'));
    for (const summary of summaries) {
      const pid = tracks.find((e) => e.args?.name === summary.node)!.pid;
      const mine = fetches.filter((e) => e.pid === pid);
      expect(mine).toHaveLength(summary.chunks);
      expect(new Set(mine.map((e) => e.args?.index)).size).toBe(summary.chunks);
      for (const slice of mine) {
        expect(slice.dur).toBeGreaterThan(0);
        expect(slice.ts).toBeGreaterThanOrEqual(0);
      }
      expect(trace.traceEvents.filter((e) => e.ph === 'X' && e.cat === 'pull' && e.pid === pid)).toHaveLength(
        1,
      );
    }
    expect(fetches.filter((e) => e.cat === 'fetch,peer').reduce((n, e) => n + Number(e.args?.bytes), 0)).toBe(
      summaries.reduce((n, s) => n + s.fetched.peer.bytes, 0),
    );
  });
});
