/**
 * `npm run bench:agent`: the agent's own costs on loopback, each beside the figure it should reach.
 *
 * 1. **Serving a cached blob** to 1 and to N concurrent clients, against `docker-registry` serving the
 *    same blob from its filesystem store (straight to its port, not through the kit's counting proxy,
 *    which would slow it down). Target: agent / registry ≥ 1.0.
 * 2. **Chunk hashing** through the agent's worker pool, against one thread's sha256 rate times the
 *    cores. Target: pool / (one thread × cores) ≥ 0.8.
 * 3. **Peer to peer**: agent B pulls the blob that agent A holds, every chunk verified; the registry must
 *    not send the blob a second time.
 *
 * The timed clients are one curl process per measurement (a connection per client, bodies discarded):
 * a child process, so reading does not share an event loop with the code that starts servers and counts
 * registry requests, and a C client, because Node's own HTTP client is slower than docker-registry on
 * loopback and would measure itself. The cores are shared either way; curl's CPU time is part of every
 * figure, the same for both servers. Copies are checked by digest afterwards, untimed.
 *
 *   npm run bench:agent -- [--blob-mib 512] [--clients 16] [--runs 5] [--hash-mib 2048]
 *                          [--hash-workers <cores>] [--out results/agent]
 */
import { createHash, randomFillSync } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { createHashPool } from '@shoal/agent';
import { chooseChunkSize, chunkCount } from '@shoal/mesh';
import {
  buildAndPushImage,
  findCommand,
  makeTempDir,
  removeTempDir,
  runCommand,
  startNats,
  startRegistry,
} from '../kit/index.js';
import {
  bytesServed,
  metric,
  metricSum,
  type ShoalService,
  startAgent,
  startControlPlane,
  waitForHolders,
  waitForNodes,
} from '../support/shoal.js';
import { table } from './report.js';
import { machineTicks, processUsage } from './usage.js';

const MiB = 1024 * 1024;
/** Throughput is reported in decimal megabytes per second, as network rates are. */
const MB = 1e6;

interface Flags {
  blobMiB: number;
  clients: number;
  runs: number;
  hashMiB: number;
  hashWorkers: number;
  out: string;
}

/** Each flag with its default and bounds; all are integers except --out. */
const NUMERIC_FLAGS = {
  'blob-mib': { def: 512, min: 1, max: 16_384 },
  clients: { def: 16, min: 2, max: 256 },
  runs: { def: 5, min: 1, max: 50 },
  'hash-mib': { def: 2048, min: 16, max: 1_048_576 },
  'hash-workers': { def: availableParallelism(), min: 1, max: 64 },
} as const;
type NumericFlag = keyof typeof NUMERIC_FLAGS;

function usageError(message: string): never {
  process.stderr.write(`bench:agent: ${message}\n`);
  process.exit(2);
}

/** Parses `--name value` and `--name=value`; anything unknown or out of range ends the run with one line. */
function parseFlags(argv: string[]): Flags {
  const seen = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) usageError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg.slice(2) : arg.slice(2, eq);
    if (!(name in NUMERIC_FLAGS) && name !== 'out') {
      usageError(`unknown flag --${name} (known: --${[...Object.keys(NUMERIC_FLAGS), 'out'].join(', --')})`);
    }
    const value = eq === -1 ? argv[++i] : arg.slice(eq + 1);
    if (value === undefined || value === '') usageError(`--${name} needs a value`);
    seen.set(name, value);
  }
  const num = (name: NumericFlag): number => {
    const { def, min, max } = NUMERIC_FLAGS[name];
    const raw = seen.get(name);
    if (raw === undefined) return def;
    const value = Number(raw);
    if (!/^\d+$/.test(raw) || value < min || value > max) {
      usageError(`--${name}: expected an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
    }
    return value;
  };
  return {
    blobMiB: num('blob-mib'),
    clients: num('clients'),
    runs: num('runs'),
    hashMiB: num('hash-mib'),
    hashWorkers: num('hash-workers'),
    out: seen.get('out') ?? join('results', 'agent'),
  };
}

// ---------------------------------------------------------------------------------------------------
// Clients: curl in a child process for the timed transfers, and an untimed in-process digest check.

interface Transfer {
  /** From the requests to the last body byte, as curl timed it (the slowest transfer when concurrent). */
  ms: number;
  bytes: number[];
  /** Per client, from its request to its last byte, to show how evenly the server shared itself. */
  clientMs: number[];
}

/**
 * GETs every URL at once with one curl process (`--parallel --parallel-immediate`: a connection per
 * URL, all opened together) and discards the bodies. curl, not a Node client: on this machine Node's
 * http client reads docker-registry at a fifth of the rate curl does, so it would measure itself.
 */
async function curlPull(urls: string[], expectedBytes: number): Promise<Transfer> {
  const args = ['--silent', '--show-error', '--fail', '--parallel', '--parallel-immediate'];
  args.push('--parallel-max', String(urls.length));
  args.push('--write-out', '%{http_code} %{size_download} %{time_total}\n');
  for (const url of urls) args.push('--output', '/dev/null', url);
  // At 20 MB/s per client, far below anything seen on loopback, it would still finish in time.
  const timeoutMs = 60_000 + ((urls.length * expectedBytes) / (20 * MB)) * 1000;
  const result = await runCommand('curl', args, { timeoutMs });
  if (!result.ok) throw new Error(`curl failed (exit ${result.code}): ${result.stderr.trim()}`);
  const lines = result.stdout.trim().split('\n');
  if (lines.length !== urls.length)
    throw new Error(`curl reported ${lines.length} of ${urls.length} transfers`);
  const transfers = lines.map((line) => {
    const [status, bytes, seconds] = line.split(' ').map(Number);
    if (status !== 200 || bytes !== expectedBytes) {
      throw new Error(`curl: HTTP ${status}, ${bytes} bytes, expected 200 and ${expectedBytes}`);
    }
    return { bytes, ms: (seconds ?? Number.NaN) * 1000 };
  });
  const clientMs = transfers.map((t) => t.ms);
  return { ms: Math.max(...clientMs), bytes: transfers.map((t) => t.bytes), clientMs };
}

/** The sha256 digest of what a URL serves, read in this process; used untimed, to check a copy. */
async function digestOf(url: string): Promise<string> {
  const res = await fetch(url);
  if (res.status !== 200 || !res.body) throw new Error(`${url} answered ${res.status}`);
  const hash = createHash('sha256');
  for await (const piece of res.body as AsyncIterable<Uint8Array>) hash.update(piece);
  return `sha256:${hash.digest('hex')}`;
}

// ---------------------------------------------------------------------------------------------------
/** CPU seconds (user + system, every thread) of a process. */
async function cpuSeconds(pid: number): Promise<number> {
  const usage = await processUsage(pid);
  if (!usage) throw new Error(`process ${pid} is gone`);
  return usage.cpuSeconds;
}

interface Measured {
  mbps: number;
  /** CPU seconds the server spent per GB it sent. */
  serverCpuPerGB: number;
  /** Share of the machine's CPU time that was busy (every process, this benchmark's included). */
  machineBusy: number;
  /** Slowest client's time over the fastest's: 1 when the server shared itself evenly. */
  spread: number;
}

/** Pulls the URLs once, concurrently, and relates the bytes to the time and the server's CPU. */
async function measure(urls: string[], size: number, serverPid: number): Promise<Measured> {
  const [cpu0, m0] = await Promise.all([cpuSeconds(serverPid), machineTicks()]);
  const r = await curlPull(urls, size);
  const [cpu1, m1] = await Promise.all([cpuSeconds(serverPid), machineTicks()]);
  const bytes = r.bytes.reduce((a, b) => a + b, 0);
  return {
    mbps: bytes / MB / (r.ms / 1000),
    serverCpuPerGB: (cpu1 - cpu0) / (bytes / 1e9),
    machineBusy: (m1.busy - m0.busy) / Math.max(1, m1.total - m0.total),
    spread: Math.max(...r.clientMs) / Math.min(...r.clientMs),
  };
}

// ---------------------------------------------------------------------------------------------------
// Hashing: the agent's pool against one thread times the cores.

interface HashFigures {
  chunkBytes: number;
  totalBytes: number;
  workers: number;
  cores: number;
  singleThreadMBps: number;
  poolMBps: number;
  /** What the pool reaches over one thread times the cores. */
  ratio: number;
}

async function hashFigures(chunkBytes: number, totalBytes: number, workers: number): Promise<HashFigures> {
  const cores = availableParallelism();
  // Two chunks per worker keep every worker busy while results travel back; the single thread cycles
  // through as many buffers, so both read the same amount of memory.
  const lanes = workers * 2;
  const fresh = () => randomFillSync(Buffer.allocUnsafeSlow(chunkBytes));
  const buffers: Buffer[] = Array.from({ length: lanes }, fresh);

  const timeSingle = () => {
    const began = performance.now();
    for (let done = 0, i = 0; done < totalBytes; done += chunkBytes, i++)
      createHash('sha256')
        .update(buffers[i % lanes]!)
        .digest('hex');
    return performance.now() - began;
  };
  timeSingle(); // The first pass warms caches and the JIT; the second is the figure.
  const singleMs = timeSingle();

  const pool = createHashPool(workers);
  try {
    const timePool = async () => {
      let issued = 0;
      const began = performance.now();
      await Promise.all(
        buffers.map(async (start, lane) => {
          let chunk = start;
          while (issued < totalBytes) {
            issued += chunkBytes;
            // The buffer travels to a worker and back (Piscina.move), so each lane reuses its own.
            ({ chunk } = await pool.hashChunk(chunk));
          }
          buffers[lane] = chunk;
        }),
      );
      return performance.now() - began;
    };
    await timePool();
    const poolMs = await timePool();
    const singleThreadMBps = totalBytes / MB / (singleMs / 1000);
    const poolMBps = totalBytes / MB / (poolMs / 1000);
    return {
      chunkBytes,
      totalBytes,
      workers,
      cores,
      singleThreadMBps,
      poolMBps,
      ratio: poolMBps / (singleThreadMBps * cores),
    };
  } finally {
    await pool.close();
  }
}

// ---------------------------------------------------------------------------------------------------

/** Teardown steps, run last-in first-out exactly once: at the end, on error, or on interrupt. */
function teardown() {
  const steps: { what: string; run: () => Promise<unknown> }[] = [];
  let running: Promise<void> | undefined;
  return {
    add(what: string, run: () => Promise<unknown>) {
      steps.push({ what, run });
    },
    run(): Promise<void> {
      running ??= (async () => {
        for (const step of steps.reverse()) {
          await step.run().catch((err: unknown) => {
            process.stderr.write(`bench:agent: stopping ${step.what} failed: ${String(err)}\n`);
          });
        }
      })();
      return running;
    },
  };
}

const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)] ?? Number.NaN;
const fmt = (x: number, digits = 0) => (Number.isFinite(x) ? x.toFixed(digits) : '–');

async function main(): Promise<void> {
  const flags = parseFlags(process.argv.slice(2));
  if (findCommand('curl') === undefined)
    usageError('curl is the HTTP client of this benchmark and is not on PATH');
  const stops = teardown();
  const interrupted = (signal: NodeJS.Signals) => {
    process.stderr.write(`bench:agent: ${signal}, stopping what was started\n`);
    void stops.run().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);

  try {
    // Other work on the machine lowers every figure here, the hashing ratio most; say so up front.
    const idle0 = await machineTicks();
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const idle1 = await machineTicks();
    const busyBefore = (idle1.busy - idle0.busy) / Math.max(1, idle1.total - idle0.total);
    if (busyBefore > 0.1) {
      process.stderr.write(
        `bench:agent: the machine was ${fmt(busyBefore * 100)}% busy before the benchmark started; ` +
          'figures will be lower than on an idle machine\n',
      );
    }
    const dir = await makeTempDir('bench-agent');
    stops.add('temp dir', () => removeTempDir(dir));
    // One at a time, so that whatever started is stopped even if the next one fails to start.
    const nats = await startNats();
    stops.add('nats', () => nats.stop());
    const registry = await startRegistry();
    stops.add('registry', () => registry.stop());
    const control = await startControlPlane(nats.url, dir);
    stops.add('control plane', () => control.stop());
    const agents: Record<'a' | 'b', ShoalService> = {} as Record<'a' | 'b', ShoalService>;
    for (const id of ['a', 'b'] as const) {
      // A slow scheduler reply on a busy machine would send B to the registry, which is not what
      // the peer figure is about; the integration tests give it 10 s for the same reason.
      const agent = await startAgent({
        id,
        natsUrl: nats.url,
        registries: [registry.url],
        dir,
        extraArgs: ['--scheduler-timeout=10s'],
      });
      stops.add(`agent ${id}`, () => agent.stop());
      agents[id] = agent;
    }
    await waitForNodes(nats.url, ['a', 'b']);

    process.stdout.write(`building and pushing a ${flags.blobMiB} MiB layer…\n`);
    const image = await buildAndPushImage({
      registry,
      repo: 'bench/agent',
      tag: 'v1',
      layers: 1,
      layerSize: flags.blobMiB * MiB,
    });
    const layer = image.layers[0]!;
    const path = `/v2/${image.repo}/blobs/${layer.digest}`;
    // The agent derives its chunk size from the blob's size, which gzip makes a little larger than the
    // file in the layer: 512 MiB of data make 129 chunks of 4 MiB, not 256 of 2 MiB.
    const chunkBytes = chooseChunkSize(layer.size);

    // Hashing goes first, while the servers are idle, so the single-thread baseline has a core to itself.
    process.stdout.write(
      `hashing ${flags.hashMiB} MiB in ${chunkBytes / MiB} MiB chunks (${flags.hashWorkers} workers, ` +
        `${availableParallelism()} cores)…\n`,
    );
    const hashing = await hashFigures(chunkBytes, flags.hashMiB * MiB, flags.hashWorkers);
    /**
     * One timed pull through an agent, then the checks that it was a whole, verified copy: the agent
     * announces the blob complete only after its whole digest matched, and what it serves hashes right.
     */
    const pullThrough = async (id: 'a' | 'b') => {
      const pids = [agents.a.process.pid, agents.b.process.pid];
      const before = await Promise.all(pids.map(cpuSeconds));
      const r = await curlPull([`${agents[id].url}${path}`], layer.size);
      const after = await Promise.all(pids.map(cpuSeconds));
      await waitForHolders(nats.url, id, [layer.digest], 60_000);
      const digest = await digestOf(`${agents[id].url}${path}`);
      if (digest !== layer.digest) throw new Error(`agent ${id} serves ${digest}, not ${layer.digest}`);
      return {
        mbps: layer.size / MB / (r.ms / 1000),
        cpuSecondsA: after[0]! - before[0]!,
        cpuSecondsB: after[1]! - before[1]!,
      };
    };

    // A pulls the blob once from the registry, so that it is cached and announced.
    const cold = await pullThrough('a');
    const egressAfterA = bytesServed(registry, layer.digest);
    const blobGetsAfterA = registry.blobGets(layer.digest).length;
    if (blobGetsAfterA !== chunkCount(layer.size, chunkBytes)) {
      process.stderr.write(
        `bench:agent: A fetched the blob in ${blobGetsAfterA} range GETs, not in the ` +
          `${chunkCount(layer.size, chunkBytes)} chunks of ${chunkBytes / MiB} MiB the hashing figure assumes\n`,
      );
    }

    process.stdout.write(
      `serving ${(layer.size / MiB).toFixed(1)} MiB to 1 and ${flags.clients} clients, ${flags.runs} runs…\n`,
    );
    type Server = 'agent' | 'registry';
    const servers: Record<Server, { url: string; pid: number }> = {
      agent: { url: `${agents.a.url}${path}`, pid: agents.a.process.pid },
      // docker-registry itself, not the kit's proxy in front of it: the proxy is a Node stream pipe
      // that would make the registry look slower than it is.
      registry: { url: `${registry.backendUrl}${path}`, pid: registry.process().pid },
    };
    const serving: Record<Server, Record<'one' | 'many', Measured[]>> = {
      agent: { one: [], many: [] },
      registry: { one: [], many: [] },
    };
    for (let run = 0; run < flags.runs; run++) {
      // Alternating who goes first keeps a drift in the machine's load from favouring one server.
      const order: Server[] = run % 2 === 0 ? ['registry', 'agent'] : ['agent', 'registry'];
      for (const server of order) {
        const { url, pid } = servers[server];
        serving[server].one.push(await measure([url], layer.size, pid));
        serving[server].many.push(await measure(Array<string>(flags.clients).fill(url), layer.size, pid));
      }
    }
    const agentServingBlobBytes = bytesServed(registry, layer.digest) - egressAfterA;

    // B pulls through the mesh: the scheduler names A as the parent of every chunk.
    process.stdout.write('agent B pulls from agent A…\n');
    const metricsBefore = await agents.b.metrics();
    const pulled = await pullThrough('b');
    const mb = await agents.b.metrics();
    const delta = (name: string, labels: Record<string, string>) =>
      metric(mb, name, labels) - metric(metricsBefore, name, labels);
    const p2p = {
      ...pulled,
      peerBytes: delta('shoal_agent_fetch_bytes_total', { source: 'peer' }),
      originBytes: delta('shoal_agent_fetch_bytes_total', { source: 'origin' }),
      fallbacks:
        metricSum(mb, 'shoal_agent_fallbacks_total') -
        metricSum(metricsBefore, 'shoal_agent_fallbacks_total'),
      registryBlobBytes: bytesServed(registry, layer.digest) - egressAfterA - agentServingBlobBytes,
      registryBlobGets: registry.blobGets(layer.digest).length - blobGetsAfterA,
    };
    const egressOk = p2p.registryBlobBytes === 0 && p2p.originBytes === 0 && p2p.peerBytes === layer.size;

    const figure = (which: 'one' | 'many') => {
      const agent = median(serving.agent[which].map((m) => m.mbps));
      const reg = median(serving.registry[which].map((m) => m.mbps));
      return { agent, registry: reg, ratio: agent / reg };
    };
    const one = figure('one');
    const many = figure('many');
    const met = (ok: boolean) => (ok ? 'yes' : 'no');
    const rows = [
      {
        figure: 'cached blob to 1 client, MB/s',
        Shoal: fmt(one.agent),
        baseline: `${fmt(one.registry)} (docker-registry)`,
        ratio: fmt(one.ratio, 2),
        target: '≥ 1.0',
        met: met(one.ratio >= 1),
      },
      {
        figure: `cached blob to ${flags.clients} clients, MB/s`,
        Shoal: fmt(many.agent),
        baseline: `${fmt(many.registry)} (docker-registry)`,
        ratio: fmt(many.ratio, 2),
        target: '≥ 1.0',
        met: met(many.ratio >= 1),
      },
      {
        figure: `chunk hashing, ${hashing.workers} workers, MB/s`,
        Shoal: fmt(hashing.poolMBps),
        baseline: `${fmt(hashing.singleThreadMBps * hashing.cores)} (1 thread × ${hashing.cores})`,
        ratio: fmt(hashing.ratio, 2),
        target: '≥ 0.8',
        met: met(hashing.ratio >= 0.8),
      },
      {
        figure: 'peer to peer A → B, verified, MB/s',
        Shoal: fmt(p2p.mbps),
        baseline: '–',
        ratio: '–',
        target: 'registry sends nothing',
        met: met(egressOk),
      },
    ];
    const cost = (server: Server, which: 'one' | 'many') => {
      const ms = serving[server][which];
      return (
        `${server} ${which === 'one' ? '1 client' : `${flags.clients} clients`}: ` +
        `${ms.map((m) => fmt(m.mbps)).join(' / ')} MB/s over the runs, ` +
        `${fmt(median(ms.map((m) => m.serverCpuPerGB)), 2)} CPU s per GB sent, ` +
        `machine ${fmt(median(ms.map((m) => m.machineBusy)) * 100)}% busy, ` +
        `slowest/fastest client ${fmt(median(ms.map((m) => m.spread)), 2)}`
      );
    };
    process.stdout.write(
      [
        '',
        `${(layer.size / MiB).toFixed(1)} MiB blob (${chunkBytes / MiB} MiB chunks) on loopback, ` +
          `${availableParallelism()} cores (${fmt(busyBefore * 100)}% busy before the start); serving ` +
          `figures are medians of ${flags.runs} runs`,
        '',
        table(rows),
        '',
        cost('agent', 'one'),
        cost('registry', 'one'),
        cost('agent', 'many'),
        cost('registry', 'many'),
        `hashing: one thread ${fmt(hashing.singleThreadMBps)} MB/s; pool ${fmt(hashing.poolMBps)} MB/s`,
        `cold pull through A (registry → A, verified): ${fmt(cold.mbps)} MB/s; registry sent the blob ` +
          `${(egressAfterA / layer.size).toFixed(2)} times in ${blobGetsAfterA} range GETs`,
        `while A served from its cache the registry sent ${agentServingBlobBytes} blob bytes`,
        `peer to peer: B fetched ${(p2p.peerBytes / MiB).toFixed(1)} MiB from peers and ` +
          `${(p2p.originBytes / MiB).toFixed(1)} MiB from the registry, ${p2p.fallbacks} fallbacks; registry ` +
          `sent ${p2p.registryBlobBytes} blob bytes in ${p2p.registryBlobGets} GETs; CPU s: A ` +
          `${fmt(p2p.cpuSecondsA, 1)}, B ${fmt(p2p.cpuSecondsB, 1)}`,
        '',
      ].join('\n'),
    );

    await mkdir(flags.out, { recursive: true });
    const file = join(flags.out, `agent-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    await writeFile(
      file,
      JSON.stringify(
        {
          flags,
          machine: {
            cores: availableParallelism(),
            busyBeforeStart: busyBefore,
            cpu: cpus()[0]?.model ?? 'unknown',
            node: process.version,
            registry: (await runCommand('docker-registry', ['--version'])).stdout.trim(),
          },
          blob: { digest: layer.digest, bytes: layer.size, chunkBytes },
          units: 'MB/s = 10^6 bytes per second',
          serving,
          figures: { one, many },
          hashing,
          coldPull: { ...cold, registryBlobBytes: egressAfterA, registryBlobGets: blobGetsAfterA },
          agentServingRegistryBlobBytes: agentServingBlobBytes,
          peerToPeer: { ...p2p, egressOk },
        },
        null,
        2,
      ),
    );
    process.stdout.write(`written: ${file}\n`);
    if (!egressOk) {
      process.stderr.write('bench:agent: the registry sent blob bytes during the peer-to-peer pull\n');
      process.exitCode = 1;
    }
  } finally {
    await stops.run();
  }
}

await main();
