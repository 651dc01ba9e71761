/**
 * Single-machine throughput of the agent's data path on loopback: one large layer fetched directly from
 * the registry, through a cold agent (registry → agent, chunked and verified), through a second agent
 * from the first (peer → agent), and again from the second agent's cache. Prints MiB/s, and the agents'
 * CPU seconds and peak RSS, so a change to the chunk path shows up as a number.
 *
 *   npm run bench:pull -- [--size-mib 256] [--runs 3]
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { buildAndPushImage, makeTempDir, removeTempDir, startNats, startRegistry } from '../kit/index.js';
import {
  type ShoalService,
  startAgent,
  startControlPlane,
  waitForHolders,
  waitForNodes,
} from '../support/shoal.js';

const MiB = 1024 * 1024;
const arg = (name: string, def: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? def : Number(process.argv[i + 1]);
};
const sizeMiB = arg('size-mib', 256);
const runs = arg('runs', 3);

async function fetchAll(url: string): Promise<{ ms: number; bytes: number; digest: string }> {
  const began = performance.now();
  const res = await fetch(url);
  if (res.status !== 200 || !res.body) throw new Error(`${url} answered ${res.status}`);
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const piece of res.body as AsyncIterable<Uint8Array>) {
    hash.update(piece);
    bytes += piece.length;
  }
  return { ms: performance.now() - began, bytes, digest: `sha256:${hash.digest('hex')}` };
}

/** CPU seconds and peak RSS of a process, from /proc. */
async function usage(pid: number): Promise<{ cpuS: number; peakRssMiB: number }> {
  const stat = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? [];
  const ticks = Number(stat[11]) + Number(stat[12]);
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const hwm = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return { cpuS: ticks / 100, peakRssMiB: hwm / 1024 };
}

const dir = await makeTempDir('bench-pull');
const [nats, registry] = await Promise.all([startNats(), startRegistry()]);
const agents: ShoalService[] = [];
try {
  const control = await startControlPlane(nats.url, dir);
  const rows: [string, number[]][] = [
    ['registry directly', []],
    ['agent, cold (from registry)', []],
    ['agent, from a peer', []],
    ['agent, from its cache', []],
  ];
  for (let run = 0; run < runs; run++) {
    const image = await buildAndPushImage({
      registry,
      repo: 'bench/pull',
      tag: `r${run}`,
      layers: 1,
      layerSize: sizeMiB * MiB,
    });
    const layer = image.layers[0]!;
    const [a, b] = await Promise.all(
      ['a', 'b'].map((id) =>
        startAgent({ id: `${id}${run}`, natsUrl: nats.url, registries: [registry.url], dir }),
      ),
    );
    agents.push(a!, b!);
    await waitForNodes(nats.url, [`a${run}`, `b${run}`]);
    const path = `/v2/${image.repo}/blobs/${layer.digest}`;
    const results = [
      await fetchAll(`${registry.url}${path}`),
      await fetchAll(`${a!.url}${path}`),
      await waitForHolders(nats.url, `a${run}`, [layer.digest]).then(() => fetchAll(`${b!.url}${path}`)),
      await fetchAll(`${b!.url}${path}`),
    ];
    results.forEach((r, i) => {
      if (r.digest !== layer.digest) throw new Error(`${rows[i]![0]}: wrong digest`);
      rows[i]![1].push(r.bytes / MiB / (r.ms / 1000));
    });
    if (run === runs - 1) {
      const [ua, ub] = await Promise.all([usage(a!.process.pid), usage(b!.process.pid)]);
      process.stdout.write(
        `agent a (registry → a): ${ua.cpuS.toFixed(2)} CPU s, peak RSS ${ua.peakRssMiB.toFixed(0)} MiB\n` +
          `agent b (a → b, cache): ${ub.cpuS.toFixed(2)} CPU s, peak RSS ${ub.peakRssMiB.toFixed(0)} MiB\n`,
      );
    }
    await Promise.all([a!.stop(), b!.stop()]);
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] ?? 0;
  process.stdout.write(`\none ${sizeMiB} MiB layer on loopback, median of ${runs} runs:\n`);
  for (const [name, values] of rows) {
    process.stdout.write(`  ${name.padEnd(30)} ${median(values).toFixed(0).padStart(6)} MiB/s\n`);
  }
  await control.stop();
} finally {
  await Promise.allSettled(agents.map((a) => a.stop()));
  await Promise.allSettled([registry.stop(), nats.stop()]);
  await removeTempDir(dir);
}
